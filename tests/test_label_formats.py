"Label formats: round trips per format with odd image sizes, one clear DataError per malformed file, format detection."
import csv, io, json, os, random
from pathlib import Path
import pandas as pd
import pytest
from PIL import Image
from neuronb.core import DataError
from neuronb.label import formats as F
from neuronb.label.formats import FORMATS, read_labels, write_labels, detect_format, image_sizes

os.environ.setdefault('WANDB_MODE', 'disabled')

SIZES = {'odd.png': (37, 23), 'thin.png': (1, 500), 'sub/wide.jpg': (500, 1), 'one.png': (1, 1)}

def box(x, y, w, h, label): return {'x': x, 'y': y, 'width': w, 'height': h, 'label': label}

BOXES = {'odd.png': [box(0, 0, 37, 23, 'cat'), box(1.3, 0.7, 2.9, 13.1, 'dog'), box(36.5, 22.25, 0.5, 0.75, 'cat')],
         'thin.png': [box(0, 499, 1, 1, 'dog'), box(0.25, 123.4567, 0.5, 10.01, 'cat')],
         'sub/wide.jpg': [box(499, 0, 1, 1, 'bird')],
         'one.png': None}

def canon(df, cols):
    "Rows of `df` restricted to `cols`, floats rounded to 9 places, sorted: equal up to float rounding."
    rows = []
    for r in df.to_dict('records'):
        row = {}
        for c in cols:
            v = r[c]
            if isinstance(v, float) and v != v: v = None
            if c == 'boxes' and v is not None:
                v = [{k: (b[k] if k == 'label' else round(float(b[k]), 9)) for k in F.BOX_KEYS} for b in v]
            elif c == 'seconds' and v is not None: v = round(float(v), 9)
            row[c] = v
        rows.append(row)
    return sorted(rows, key=repr)

def detection_table(labels=True):
    "One row per image with boxes, sizes and (optionally) image-level labels: what CVAT/COCO/YOLO/VOC hold."
    lab = {'odd.png': 'cat', 'thin.png': ['cat', 'dog'], 'sub/wide.jpg': None, 'one.png': 'bird'}
    return F._frame([{'name': n, 'label': lab[n] if labels else None, 'boxes': BOXES[n], 'width': w, 'height': h}
                     for n, (w, h) in SIZES.items()])

def crowd_table():
    "Several annotators per image, labels single and multi, seconds with and without."
    rows = [('odd.png', 'w1', 'cat', 4.5), ('odd.png', 'w2', 'dog', 0.001), ('thin.png', 'w1', ['cat', 'dog'], 12.25),
            ('thin.png', '7', 'cat', None), ('sub/wide.jpg', 'alice@example.com', 'bird', 3600.125), ('one.png', 'w3', '0', 1.0)]
    return F._frame([{'name': n, 'annotator': a, 'label': l, 'seconds': s} for n, a, l, s in rows])

def write_read(df, tmp_path, fmt, target, read_kw=None, write_kw=None):
    out = tmp_path/target
    write_labels(df, out, fmt, **(write_kw or {}))
    assert detect_format(out) == fmt
    back = read_labels(out, **(read_kw or {}))
    assert back.attrs['format'] == fmt
    return back

# ---------------------------------------------------------------- round trips

@pytest.mark.parametrize('fmt,target', [('toloka', 'l.tsv'), ('mturk', 'l.csv')])
def test_crowd_round_trip(tmp_path, fmt, target):
    df = crowd_table()
    back = write_read(df, tmp_path, fmt, target)
    assert canon(back, ['name', 'annotator', 'label', 'seconds']) == canon(df, ['name', 'annotator', 'label', 'seconds'])
    assert list(back.columns) == F.COLUMNS and back.boxes.isna().all()

def test_crowd_table_round_trip(tmp_path):
    df = crowd_table()
    df = df[df.label.map(lambda l: isinstance(l, str) and l.isdigit())]
    back = write_read(df, tmp_path, 'crowd', 'crowd.csv')
    assert canon(back, ['name', 'annotator', 'label']) == canon(df, ['name', 'annotator', 'label'])

def test_mturk_boxes_round_trip(tmp_path):
    df = detection_table(labels=False).assign(annotator='W1', seconds=7.0)
    df = df[df.boxes.notna()]
    back = write_read(df, tmp_path, 'mturk', 'b.csv')
    assert canon(back, F.COLUMNS) == canon(df, F.COLUMNS)

def test_labelstudio_round_trip(tmp_path):
    det = detection_table().assign(annotator=['3', 'bob@example.com', '3', '11'], seconds=[1.5, None, 0.25, 9.0])
    df = pd.concat([det, crowd_table()], ignore_index=True)  # boxes with sizes, plus classification-only rows
    back = write_read(df, tmp_path, 'labelstudio', 'ls.json')
    assert canon(back, ['name', 'annotator', 'label', 'boxes', 'seconds']) == canon(df, ['name', 'annotator', 'label', 'boxes', 'seconds'])
    with_boxes = back[back.boxes.notna()]
    assert canon(with_boxes, ['name', 'width', 'height']) == canon(df[df.boxes.notna()], ['name', 'width', 'height'])
    task = json.loads((tmp_path/'ls.json').read_text())[0]
    region = [r for r in task['annotations'][0]['result'] if r['type'] == 'rectanglelabels'][0]
    assert region['value']['x'] == 0 and region['value']['width'] == 100 and region['original_width'] == 37

@pytest.mark.parametrize('fmt,target', [('cvat', 'a.xml'), ('coco', 'c.json')])
def test_image_label_and_box_round_trip(tmp_path, fmt, target):
    df = detection_table()
    back = write_read(df, tmp_path, fmt, target)
    assert canon(back, ['name', 'label', 'boxes', 'width', 'height']) == canon(df, ['name', 'label', 'boxes', 'width', 'height'])
    assert back.annotator.isna().all() and back.seconds.isna().all()

def test_yolo_round_trip(tmp_path):
    df = detection_table(labels=False)
    write_labels(df, tmp_path/'yolo', 'yolo')
    assert (tmp_path/'yolo/classes.txt').read_text() == 'bird\ncat\ndog\n'
    assert (tmp_path/'yolo/one.txt').read_text() == ''            # labelled, no objects
    assert (tmp_path/'yolo/sub/wide.txt').is_file()
    assert detect_format(tmp_path/'yolo') == 'yolo'
    back = read_labels(tmp_path/'yolo', sizes=SIZES)
    assert canon(back, ['name', 'label', 'boxes', 'width', 'height']) == canon(df, ['name', 'label', 'boxes', 'width', 'height'])

def test_yolo_sizes_from_images(tmp_path):
    for name, (w, h) in SIZES.items():
        (tmp_path/'img'/name).parent.mkdir(parents=True, exist_ok=True)
        Image.new('RGB', (w, h)).save(tmp_path/'img'/name)
    assert image_sizes(tmp_path/'img') == dict(sorted(SIZES.items()))
    df = detection_table(labels=False)
    write_labels(df, tmp_path/'labels', 'yolo', classes=['dog', 'cat', 'bird'])
    assert (tmp_path/'labels/sub/wide.txt').read_text().startswith('2 ')
    back = read_labels(tmp_path/'labels', images=tmp_path/'img')
    assert canon(back, ['name', 'boxes', 'width', 'height']) == canon(df, ['name', 'boxes', 'width', 'height'])

def test_voc_round_trip(tmp_path):
    df = detection_table(labels=False)
    write_labels(df, tmp_path/'voc', 'voc')
    assert sorted(p.relative_to(tmp_path/'voc').as_posix() for p in (tmp_path/'voc').rglob('*.xml')) == ['odd.xml', 'one.xml', 'sub/wide.xml', 'thin.xml']
    assert detect_format(tmp_path/'voc') == 'voc' and detect_format(tmp_path/'voc/odd.xml') == 'voc'
    back = read_labels(tmp_path/'voc')
    assert canon(back, ['name', 'label', 'boxes', 'width', 'height']) == canon(df, ['name', 'label', 'boxes', 'width', 'height'])

def test_conversion_chain_keeps_pixels(tmp_path):
    "Label Studio percent -> YOLO fractions -> VOC -> COCO: the pixel boxes survive every hop."
    df = detection_table(labels=False).assign(annotator='1')
    write_labels(df, tmp_path/'ls.json', 'labelstudio')
    t = read_labels(tmp_path/'ls.json')
    write_labels(t, tmp_path/'yolo', 'yolo'); t = read_labels(tmp_path/'yolo', sizes=SIZES)
    write_labels(t, tmp_path/'voc', 'voc'); t = read_labels(tmp_path/'voc')
    write_labels(t, tmp_path/'c.json', 'coco'); t = read_labels(tmp_path/'c.json')
    assert canon(t, ['name', 'boxes', 'width', 'height']) == canon(df, ['name', 'boxes', 'width', 'height'])

def test_every_format_is_registered():
    assert set(FORMATS) == {'toloka', 'mturk', 'crowd', 'labelstudio', 'cvat', 'coco', 'yolo', 'voc', 'table'}
    assert FORMATS['yolo'].folder and not FORMATS['coco'].folder

def test_shipped_crowd_table_is_detected():
    import neuronb
    path = Path(neuronb.__file__).parent/'templates/digits/crowd/crowd_results.csv'
    df = read_labels(path)
    assert df.attrs['format'] == 'crowd' and len(df) == 1797 * 3 and set(df.label) == set(map(str, range(10)))

# ------------------------------------------------------- crowdsourcing tables at scale

def test_toloka_vectorized_reader_matches_a_plain_parser(tmp_path):
    "20,000 rows with blank lines, rejected/skipped assignments, multi-labels and missing times, checked against csv."
    rnd = random.Random(0)
    header = ['INPUT:image', 'OUTPUT:result', 'GOLDEN:result', 'HINT:text', 'ASSIGNMENT:link', 'ASSIGNMENT:assignment_id',
              'ASSIGNMENT:worker_id', 'ASSIGNMENT:status', 'ASSIGNMENT:started', 'ASSIGNMENT:submitted']
    lines = ['\t'.join(header)]
    for i in range(20000):
        if i % 997 == 0: lines.append(''); continue
        label = rnd.choice(['cat', 'dog', '["cat","dog"]', '3', '007'])
        ms = rnd.randrange(1, 100000)
        t0, t1 = ('', '') if i % 13 == 0 else ('2024-05-01T10:00:00.000', f'2024-05-01T10:{ms // 60000:02d}:{ms % 60000 // 1000:02d}.{ms % 1000:03d}')
        status = rnd.choice(['APPROVED'] * 8 + ['SUBMITTED', 'REJECTED', 'SKIPPED'])
        lines.append('\t'.join([f'img{i % 500}.png', label, '', '', f'https://x/{i}', f'A{i}', f'{rnd.randrange(40):03d}', status, t0, t1]))
    (tmp_path/'big.tsv').write_text('\n'.join(lines) + '\n')
    expected = []
    for r in csv.DictReader(io.StringIO('\n'.join(lines)), delimiter='\t'):
        if r['ASSIGNMENT:status'] in ('REJECTED', 'SKIPPED') or not r['INPUT:image']: continue
        label = json.loads(r['OUTPUT:result']) if r['OUTPUT:result'].startswith('[') else r['OUTPUT:result']
        secs = None
        if r['ASSIGNMENT:started']:
            mm, ss = r['ASSIGNMENT:submitted'][14:].split(':')
            secs = int(mm) * 60 + float(ss)
        expected.append({'name': r['INPUT:image'], 'annotator': r['ASSIGNMENT:worker_id'], 'label': label, 'seconds': secs})
    got = F.read_toloka(tmp_path/'big.tsv')
    cols = ['name', 'annotator', 'label', 'seconds']
    assert canon(got, cols) == canon(pd.DataFrame(expected), cols)
    assert '007' in set(got.annotator) and '007' in {l for l in got.label if isinstance(l, str)}  # text stays text

# ---------------------------------------------------------------- malformed files

TOLOKA_HEADER = "INPUT:image\tOUTPUT:result\tASSIGNMENT:worker_id\tASSIGNMENT:status\tASSIGNMENT:started\tASSIGNMENT:submitted\n"
MTURK_BOX_HEADER = ('WorkerId,Input.image_url,Answer.annotatedResult.boundingBoxes,Answer.annotatedResult.inputImageProperties.height,'
                    'Answer.annotatedResult.inputImageProperties.width\n')
MTURK_HEADER = 'HITId,WorkerId,AssignmentStatus,WorkTimeInSeconds,Input.image_url,Answer.category.label\n'

def ls_task(result, **ann):
    return json.dumps([{'id': 41, 'data': {'image': 'a.png'}, 'annotations': [{'id': 6, 'completed_by': 1, 'result': result, **ann}]}])

def coco(**kw):
    d = {'images': [{'id': 1, 'file_name': 'a.png', 'width': 37, 'height': 23}], 'categories': [{'id': 1, 'name': 'cat'}], 'annotations': []}
    d.update(kw); return json.dumps(d)

def cvat(inner, attrs='id="0" name="a.png" width="37" height="23"'):
    return f'<?xml version="1.0"?>\n<annotations><version>1.1</version><image {attrs}>{inner}</image></annotations>'

def voc(objects='', size='<size><width>37</width><height>23</height><depth>3</depth></size>', filename='<filename>a.png</filename>'):
    return f'<annotation>{filename}{size}{objects}</annotation>'

RECT = {'type': 'rectanglelabels', 'original_width': 37, 'original_height': 23, 'value': {'x': 1, 'y': 1, 'width': 1, 'height': 1, 'rectanglelabels': ['cat']}}

MALFORMED = [
    # toloka
    ('toloka', 'labels.tsv', TOLOKA_HEADER + 'a.png\tcat\tw1\tAPPROVED\t\t\n' * 15 + 'b.png\t\tw2\tAPPROVED\t\t\n',
     'labels.tsv, row 17: OUTPUT:result is empty; fill it in or delete that row'),
    ('toloka', 'labels.tsv', TOLOKA_HEADER + '\tcat\tw1\tAPPROVED\t\t\n', 'labels.tsv, row 2: INPUT:image is empty'),
    ('toloka', 'labels.tsv', TOLOKA_HEADER + 'a.png\tcat\t\tACCEPTED\t\t\n', 'labels.tsv, row 2: ASSIGNMENT:worker_id is empty'),
    ('toloka', 'labels.tsv', TOLOKA_HEADER + 'a.png\tcat\tw1\tAPPROVED\t2024-05-01T10:00:00\tlater\n',
     "labels.tsv, row 2: ASSIGNMENT:submitted 'later' is not an ISO date and time"),
    ('toloka', 'labels.tsv', TOLOKA_HEADER + 'a.png\t["cat",1]\tw1\tAPPROVED\t\t\n', 'row 2: OUTPUT:result \'["cat",1]\' starts like a JSON list'),
    ('toloka', 'labels.tsv', 'INPUT:image\tOUTPUT:result\n', 'labels.tsv has no column ASSIGNMENT:worker_id'),
    ('toloka', 'labels.tsv', 'OUTPUT:result\tASSIGNMENT:worker_id\n', 'labels.tsv has no INPUT:* column'),
    ('toloka', 'labels.tsv', TOLOKA_HEADER + 'a.png\tcat\tw1\n' + 'a.png\tcat\tw1\tAPPROVED\t\t\textra\textra\n',
     'labels.tsv: not a well-formed TSV table'),
    ('toloka', 'labels.tsv', '', 'labels.tsv is empty; export the results again'),
    ('toloka', 'labels.tsv', 'INPUT:image\tOUTPUT:result\tASSIGNMENT:assignment_id\tASSIGNMENT:worker_id\na.png\tcat\tA1\tw1\nb.png\tcat\tA1\tw1\na.png\tdog\tA1\tw1\n',
     'labels.tsv, row 4: assignment A1 answers a.png twice'),
    # mturk
    ('mturk', 'batch.csv', MTURK_HEADER + 'H1,W1,Approved,3,a.png,\n', 'batch.csv, row 2: Answer.category.label is empty'),
    ('mturk', 'batch.csv', MTURK_HEADER + 'H1,W1,Approved,3,a.png,cat\nH1,,Approved,3,a.png,cat\n', 'batch.csv, row 3: WorkerId is empty'),
    ('mturk', 'batch.csv', MTURK_HEADER + 'H1,W1,Approved,3s,a.png,cat\n', "batch.csv, row 2: WorkTimeInSeconds '3s' is not a number"),
    ('mturk', 'batch.csv', 'WorkerId,Input.image_url,Answer.a,Answer.b\n', "several Answer.* columns (Answer.a, Answer.b); pass answer="),
    ('mturk', 'batch.csv', 'WorkerId,Input.image_url,Answer.annotatedResult.boundingBoxes\nW1,a.png,not json\n',
     "batch.csv, row 2: Answer.annotatedResult.boundingBoxes 'not json'"),
    ('mturk', 'batch.csv', 'WorkerId,Input.image_url,Answer.annotatedResult.boundingBoxes\nW1,a.png,"[{""left"":1,""top"":1,""width"":2,""height"":2,""label"":""cat""}]"\n',
     'batch.csv, row 2: boxes without Answer.annotatedResult.inputImageProperties.width/height'),
    ('mturk', 'batch.csv', 'AssignmentId,WorkerId,Input.image_url,Answer.category.label\nA1,W1,a.png,cat\nA1,W1,a.png,cat\n',
     'batch.csv, row 3: AssignmentId A1 comes twice'),
    ('mturk', 'batch.csv', MTURK_BOX_HEADER + 'W1,a.png,"[{""left"":1,""top"":1,""width"":2,""height"":2,""label"":[""cat""]}]",23,37\n',
     "batch.csv, row 2: Answer.annotatedResult.boundingBoxes"),
    ('mturk', 'batch.csv', MTURK_BOX_HEADER + 'W1,a.png,"[{""left"":30,""top"":1,""width"":10,""height"":2,""label"":""cat""}]",23,37\n',
     'batch.csv, row 2: box x=30, y=1, width=10, height=2 (cat) lies outside the 37x23 image by more than 0.5 pixel'),
    # label studio
    ('labelstudio', 'ls.json', ls_task([{'type': 'keypointlabels', 'value': {}}]),
     "ls.json, task 41, annotation 6, region 1: region type 'keypointlabels' is not supported"),
    ('labelstudio', 'ls.json', ls_task([{**RECT, 'original_width': None}]), 'task 41, annotation 6, region 1: rectanglelabels without original_width'),
    ('labelstudio', 'ls.json', ls_task([{**RECT, 'value': {**RECT['value'], 'rectanglelabels': []}}]), 'region 1: box without a label'),
    ('labelstudio', 'ls.json', ls_task([{**RECT, 'value': {**RECT['value'], 'x': 'left'}}]), 'region 1: box without numeric x, y, width, height'),
    ('labelstudio', 'ls.json', '[{"id": 2, "annotations": []}]', 'ls.json, task 2: no `data` object'),
    ('labelstudio', 'ls.json', '[{"id": 2, "data": {"image": "a.png"}', 'ls.json: not valid JSON (line 1'),
    ('labelstudio', 'ls.json', ls_task([{**RECT, 'value': {**RECT['value'], 'rectanglelabels': 'horse'}}]),
     "ls.json, task 41, annotation 6, region 1: rectanglelabels 'horse' is not a list of class names"),
    ('labelstudio', 'ls.json', '[{"id": 1, "data": {"image": "a.png"}, "annotations": [{"id": 6, "result": []}]}, '
                               '{"id": 2, "data": {"image": "b.png"}, "annotations": [{"id": 6, "result": []}]}]',
     'ls.json, task 2, annotation 6: annotation id 6 comes twice (first in task 1)'),
    ('labelstudio', 'ls.json', ls_task([{**RECT, 'value': {**RECT['value'], 'y': 102}}]), 'region 1: box x=0.37, y=23.46, width=0.37, height=0.23 (cat) lies outside'),
    ('labelstudio', 'ls.json', '[{"image": "a.png", "annotation_id": 3, "choice": "cat"}, {"image": "a.png", "annotation_id": 3, "choice": "dog"}]',
     'ls.json, record 2: annotation_id 3 comes twice (first in record 1)'),
    # cvat
    ('cvat', 'ann.xml', cvat('<box label="cat" xtl="1" ytl="1" xbr="0.5" ybr="2"/>'), "ann.xml, image 'a.png': box with xbr < xtl"),
    ('cvat', 'ann.xml', cvat('<box xtl="1" ytl="1" xbr="2" ybr="2"/>'), "ann.xml, image 'a.png': <box> without a label"),
    ('cvat', 'ann.xml', cvat('<box label="cat" xtl="1" ytl="1" xbr="2" ybr="2" rotation="45"/>'), "image 'a.png': box rotated by 45 degrees"),
    ('cvat', 'ann.xml', cvat('', 'id="3" width="3" height="3"'), 'ann.xml, image id 3: <image> without a name'),
    ('cvat', 'ann.xml', cvat('', 'id="0" name="a.png" width="-3" height="3"'), "ann.xml, image 'a.png': width '-3' is not a positive whole number"),
    ('cvat', 'ann.xml', cvat('<points label="cat" points="1,1"/>'), "image 'a.png': points shapes are not supported"),
    ('cvat', 'ann.xml', '<annotations><image name="a.png"', 'ann.xml: not well-formed XML (line 1'),
    ('cvat', 'ann.xml', cvat('<box label="cat" xtl="1" ytl="1" xbr="40" ybr="2"/>'), "ann.xml, image 'a.png': box x=1, y=1, width=39, height=1 (cat) lies outside the 37x23 image"),
    ('cvat', 'ann.xml', cvat('<box label="cat" xtl="1" ytl="1" xbr="2" ybr="2" rotation="a"/>'), "image 'a.png': box has rotation='a', expected a number"),
    ('cvat', 'ann.xml', cvat('<tag source="manual"/>'), "ann.xml, image 'a.png': <tag> without a label"),
    ('cvat', 'ann.xml', '<annotations><image id="0" name="a.png" width="3" height="3"/><image id="0" name="b.png" width="3" height="3"/></annotations>',
     "ann.xml, image 'b.png': image id '0' comes twice (first for 'a.png')"),
    # coco
    ('coco', 'coco.json', coco(annotations=[{'id': 3, 'image_id': 1, 'category_id': 1, 'bbox': [1, 1, -2, 2]}]),
     'coco.json, annotation 3: bbox [1, 1, -2, 2] is not [x, y, width, height] with a non-negative size'),
    ('coco', 'coco.json', coco(annotations=[{'id': 3, 'image_id': 2, 'category_id': 1}]), 'coco.json, annotation 3: image_id 2 is not in images'),
    ('coco', 'coco.json', coco(annotations=[{'id': 3, 'image_id': 1}]), 'coco.json, annotations[0]: no category_id'),
    ('coco', 'coco.json', coco(images=[{'id': 1, 'file_name': 'a.png', 'width': 0, 'height': 2}]), "coco.json, image 'a.png': width 0 is not a positive"),
    ('coco', 'coco.json', '{"images": [], "categories": [], "annotations": [}', 'coco.json: not valid JSON'),
    ('coco', 'coco.json', coco(annotations=[{'id': 3, 'image_id': [1], 'category_id': 1}]), 'coco.json, annotation 3: image_id [1] is not a number or text'),
    ('coco', 'coco.json', coco(annotations=[{'id': 3, 'image_id': 1, 'category_id': 1}, {'id': 3, 'image_id': 1, 'category_id': 1}]),
     'coco.json, annotation 3: annotation id 3 comes twice'),
    ('coco', 'coco.json', coco(annotations=[{'id': 3, 'image_id': 1, 'category_id': 1, 'bbox': [30, 1, 10, 1]}]), 'coco.json, annotation 3: box x=30, y=1, width=10, height=1 (cat) lies outside'),
    # voc
    ('voc', 'a.xml', voc('<object><name>cat</name></object>'), 'a.xml, object 1: no <bndbox>'),
    ('voc', 'a.xml', voc('<object><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>2</xmax><ymax>2</ymax></bndbox></object>'), 'a.xml, object 1: no <name>'),
    ('voc', 'a.xml', voc('<object><name>c</name><bndbox><xmin>3</xmin><ymin>1</ymin><xmax>2</xmax><ymax>2</ymax></bndbox></object>'),
     'a.xml, object 1: xmax < xmin or ymax < ymin'),
    ('voc', 'a.xml', voc(size='<size><width>37</width></size>'), 'a.xml: no <height>'),
    ('voc', 'a.xml', voc(filename=''), 'a.xml: no <filename>'),
    ('voc', 'a.xml', '<annotation><filename>a.png', 'a.xml: not well-formed XML'),
    ('voc', 'a.xml', voc('<object><name>c</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>38</xmax><ymax>2</ymax></bndbox></object>'),
     'a.xml, object 1: box x=1, y=1, width=37, height=1 (c) lies outside the 37x23 image'),
]

@pytest.mark.parametrize('fmt,fname,text,message', MALFORMED, ids=[f'{m[0]}-{i}' for i, m in enumerate(MALFORMED)])
def test_malformed_file_gives_one_clear_error(tmp_path, fmt, fname, text, message):
    (tmp_path/fname).write_text(text)
    with pytest.raises(DataError) as e: read_labels(tmp_path/fname, fmt=fmt)
    assert message in str(e.value) and fname in str(e.value)

@pytest.mark.parametrize('content,message', [
    ('0 0.5 0.5 0.2\n', "a.txt, line 1: expected 'class cx cy w h' (5 numbers), got '0 0.5 0.5 0.2'"),
    ('0 0.5 0.5 0.2 0.2\n\n0 0.1 0.2 0.3 0.4 0.5 0.6\n', 'a.txt, line 3: expected'),
    ('2 0.5 0.5 0.2 0.2\n', 'a.txt, line 1: class 2, but the class names file has 2 names (0..1)'),
    ('0 0.5 0.5 -0.2 0.2\n', 'a.txt, line 1: \'0 0.5 0.5 -0.2 0.2\' has a negative size'),
    ('0 0.5 nan 0.2 0.2\n', 'not finite'),
    ('x 0.5 0.5 0.2 0.2\n', 'a.txt, line 1: \'x 0.5 0.5 0.2 0.2\' has a value that is not a number'),
    ('0 0.9 0.5 0.4 0.2\n', 'a.txt, line 1: box x=25.9, y=9.2, width=14.8, height=4.6 (cat) lies outside the 37x23 image'),
])
def test_malformed_yolo(tmp_path, content, message):
    (tmp_path/'classes.txt').write_text('cat\ndog\n'); (tmp_path/'a.txt').write_text(content)
    with pytest.raises(DataError) as e: read_labels(tmp_path, sizes={'a.png': (37, 23)})
    assert message in str(e.value)

def test_yolo_needs_sizes_and_class_names(tmp_path):
    (tmp_path/'classes.txt').write_text('cat\n'); (tmp_path/'a.txt').write_text('0 0.5 0.5 0.2 0.2\n')
    with pytest.raises(DataError, match='hold no image sizes; pass images='): read_labels(tmp_path, fmt='yolo')
    with pytest.raises(DataError, match=r'a.txt: no image a\.\* among the 1 images given'): read_labels(tmp_path, sizes={'b.png': (3, 3)})
    (tmp_path/'classes.txt').unlink(); (tmp_path/'data.yaml').write_text('names: {0: cat}\n')
    assert read_labels(tmp_path, sizes={'a.png': (10, 10)}).boxes[0][0]['label'] == 'cat'
    (tmp_path/'data.yaml').unlink()
    with pytest.raises(DataError, match='has no class names file'): read_labels(tmp_path, fmt='yolo', sizes={'a.png': (3, 3)})

# ---------------------------------------------------------------- writers refuse what a format cannot hold

def test_writers_refuse_what_the_format_cannot_hold(tmp_path):
    det, crowd = detection_table(), crowd_table()
    cases = [
        (lambda: write_labels(det, tmp_path/'y', 'yolo'), "row 1 (odd.png) has the image label 'cat', and yolo holds boxes only"),
        (lambda: write_labels(det.assign(label=None), tmp_path/'v', 'voc', ), None),
        (lambda: write_labels(crowd, tmp_path/'c.xml', 'cvat'), 'image odd.png has several rows (again at row 2)'),
        (lambda: write_labels(det.assign(width=None), tmp_path/'c.json', 'coco'), 'row 1 (odd.png) has no width/height'),
        (lambda: write_labels(det, tmp_path/'t.tsv', 'toloka'), 'row 1 (odd.png) has no annotator'),
        (lambda: write_labels(det.assign(annotator='w'), tmp_path/'t.tsv', 'toloka'), 'row 1 (odd.png) has boxes'),
        (lambda: write_labels(crowd, tmp_path/'c.csv', 'crowd'), "row 1 (odd.png) has the label 'cat'; a crowd table holds one class number"),
        (lambda: write_labels(det.assign(label=None), tmp_path/'y', 'yolo', classes=['cat']), "a box of class 'dog', which is not in classes"),
        (lambda: write_labels(det.assign(name='../up.png').iloc[:1].assign(label=None), tmp_path/'v2', 'voc'), "image name '../up.png' does not give a file name"),
        (lambda: write_labels(pd.DataFrame({'file': ['a']}), tmp_path/'c.json', 'coco'), 'the table has no `name` column'),
        (lambda: write_labels(det, tmp_path/'x', 'tfrecord'), "unknown label format 'tfrecord'"),
    ]
    for call, message in cases:
        if message is None: call(); continue
        with pytest.raises(DataError) as e: call()
        assert message in str(e.value), (message, str(e.value))
    assert not (tmp_path.parent/'up.xml').exists()

def test_writers_are_atomic_and_leave_no_temporaries(tmp_path):
    write_labels(crowd_table(), tmp_path/'l.tsv', 'toloka')
    write_labels(detection_table(labels=False), tmp_path/'y', 'yolo')
    assert not [p for p in tmp_path.rglob('*.tmp')]

# ---------------------------------------------------------------- detection

def test_detection_from_content_and_refusals(tmp_path):
    (tmp_path/'export').write_text(ls_task([]))                      # no extension: content decides
    assert detect_format(tmp_path/'export') == 'labelstudio'
    (tmp_path/'results.txt').write_text(TOLOKA_HEADER)
    assert detect_format(tmp_path/'results.txt') == 'toloka'
    (tmp_path/'b.csv').write_text('"HITId","WorkerId","Input.image_url","Answer.category.label"\n')
    assert detect_format(tmp_path/'b.csv') == 'mturk'
    (tmp_path/'c.xml').write_text(cvat(''))
    assert detect_format(tmp_path/'c.xml') == 'cvat'
    (tmp_path/'other.csv').write_text('a,b\n1,2\n')
    with pytest.raises(DataError, match="cannot tell the label format of .*other.csv; pass fmt= one of toloka, mturk"): read_labels(tmp_path/'other.csv')
    (tmp_path/'empty').mkdir()
    with pytest.raises(DataError, match='cannot tell the label format of folder'): read_labels(tmp_path/'empty')
    with pytest.raises(DataError, match='does not exist'): read_labels(tmp_path/'missing.json')

# ---------------------------------------------------------------- importing into a project (`neuronb label import`)

IMAGES = {'cat1.png': (37, 23), 'dog1.png': (20, 10), 'x/dup.png': (8, 8), 'y/dup.png': (9, 9)}

@pytest.fixture
def project(tmp_path):
    "A project over four tiny images (two with the same base name in different folders), classes cat and dog."
    from neuronb.pipeline.init import init_project
    from neuronb.data.versions import add_files, commit
    for name, size in IMAGES.items():
        (tmp_path/'src'/name).parent.mkdir(parents=True, exist_ok=True)
        Image.new('RGB', size, 'white').save(tmp_path/'src'/name)
    p = init_project(tmp_path/'p', data=tmp_path/'src', labels='none', classes=['cat', 'dog'])
    add_files(p.store(), tmp_path/'src', dataset='images', progress=False); commit(p.store(), 'images')
    return p

def label_import(project, path, *options):
    "`neuronb label import` in this process: (exit status, stdout, stderr)."
    import contextlib
    from neuronb.cli import main
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(['label', '--dir', str(project.root), 'import', str(path), *options])
    return rc, out.getvalue(), err.getvalue()

def imported(project):
    from neuronb.label.project import project_events
    ev = project_events(project.store())
    return sorted(zip(ev.name, ev.annotator, ev.label.map(repr), ev.kind))

def ls_choice(image, label, user=1, **ann):
    return {'data': {'image': image}, 'annotations': [{'completed_by': user, **ann, 'result': [
        {'type': 'choices', 'from_name': 'c', 'to_name': 'image', 'value': {'choices': [label]}}]}]}

def test_import_matches_urls_and_upload_paths(project, tmp_path):
    tasks = [ls_choice('/data/upload/4/1a2b3c4d-cat1.png', 'cat'), ls_choice('s3://bucket/photos/dog1.png', 'dog'),
             ls_choice('https://host/photos/x/dup.png?token=1', 'cat'), ls_choice('https://host/gone.png', 'dog')]
    (tmp_path/'ls.json').write_text(json.dumps([{'id': i + 1, **t} for i, t in enumerate(tasks)]))
    rc, out, err = label_import(project, tmp_path/'ls.json')
    assert (rc, err) == (0, '') and 'Imported 3 annotations (labelstudio)' in out and '1 rows about files not in the dataset' in out
    assert imported(project) == [('cat1.png', '1', "'cat'", 'label'), ('dog1.png', '1', "'dog'", 'label'), ('x/dup.png', '1', "'cat'", 'label')]

@pytest.mark.parametrize('fmt,name,text', [
    ('toloka', 'pool.tsv', 'INPUT:image\tOUTPUT:result\tASSIGNMENT:worker_id\nhttps://tlk.s3.yandex.net/a/cat1.png\tcat\tw1\n'),
    ('mturk', 'batch.csv', 'WorkerId,Input.image_url,Answer.category.label\nW1,https://bucket.s3.amazonaws.com/a/cat1.png,cat\n'),
])
def test_crowd_exports_with_urls_import(project, tmp_path, fmt, name, text):
    (tmp_path/name).write_text(text)
    rc, out, err = label_import(project, tmp_path/name)
    assert (rc, err) == (0, '') and f'Imported 1 annotations ({fmt})' in out
    assert [r[0] for r in imported(project)] == ['cat1.png']

def test_ambiguous_base_name_is_refused(project, tmp_path):
    (tmp_path/'ls.json').write_text(json.dumps([{'id': 7, **ls_choice('https://host/k/dup.png', 'dog')}]))
    rc, out, err = label_import(project, tmp_path/'ls.json')
    assert rc == 1 and "ls.json: 'https://host/k/dup.png' could be any of the dataset's files x/dup.png, y/dup.png" in err
    assert 'Traceback' not in err and imported(project) == []

def test_a_match_rule_takes_names_auto_cannot(project, tmp_path):
    (tmp_path/'ls.json').write_text(json.dumps([{'id': 1, **ls_choice('https://host/files/y/dup.png/download', 'dog')}]))
    rc, out, err = label_import(project, tmp_path/'ls.json')
    assert rc == 1 and 'none of the 1 rows' in err and 'say how with a match rule (--match' in err
    rc, out, err = label_import(project, tmp_path/'ls.json', '--match', '^https://host/files/(.+)/download$')
    assert (rc, err) == (0, '') and imported(project) == [('y/dup.png', '1', "'dog'", 'label')]
    rc, out, err = label_import(project, tmp_path/'ls.json', '--match', '/files/.+/download')
    assert rc == 1 and "has 0 groups, not one; pass 'auto', 'path', or a regular expression" in err

@pytest.mark.parametrize('name,content,message', [
    # a value of the wrong type: a traceback before, now one line naming the file and the record
    ('ls.json', [{'id': 3, 'data': {'image': 'cat1.png'}, 'annotations': ['cat']}], "ls.json, task 3, annotation 1: 'cat' is not an annotation object"),
    ('ls.json', [{'id': 3, 'data': {'image': 'cat1.png'}, 'annotations': [{'id': 8, 'result': [
        {'type': 'rectanglelabels', 'original_width': 37, 'original_height': 23,
         'value': {'x': 1, 'y': 1, 'width': 5, 'height': 5, 'rectanglelabels': 'horse'}}]}]}],   # was five one-letter boxes
     "ls.json, task 3, annotation 8, region 1: rectanglelabels 'horse' is not a list of class names"),
    ('coco.json', {'images': [{'id': 1, 'file_name': 'cat1.png', 'width': 37, 'height': 23}], 'categories': [{'id': 1, 'name': 'cat'}],
                   'annotations': [{'id': 5, 'image_id': [1], 'category_id': 1}]}, 'coco.json, annotation 5: image_id [1] is not a number or text'),
    # a box outside its image
    ('coco.json', {'images': [{'id': 1, 'file_name': 'cat1.png', 'width': 37, 'height': 23}], 'categories': [{'id': 1, 'name': 'cat'}],
                   'annotations': [{'id': 5, 'image_id': 1, 'category_id': 1, 'bbox': [30, 0, 10, 5]}]},
     'coco.json, annotation 5: box x=30, y=0, width=10, height=5 (cat) lies outside the 37x23 image by more than 0.5 pixel'),
    # a label outside the project's classes
    ('ls.json', [{'id': 3, **ls_choice('cat1.png', 'kat', user=4)}],
     "ls.json: 'cat1.png' (annotator 4) has the label 'kat', which is not one of the classes cat, dog (labels outside them: 'kat' (1))"),
    ('coco.json', {'images': [{'id': 1, 'file_name': 'cat1.png', 'width': 37, 'height': 23}], 'categories': [{'id': 1, 'name': 'bird'}],
                   'annotations': [{'id': 5, 'image_id': 1, 'category_id': 1, 'bbox': [1, 1, 5, 5]}]},
     "coco.json: 'cat1.png' has the label 'bird', which is not one of the classes cat, dog"),
    # an annotation id that comes twice
    ('ls.json', [{'id': 1, 'data': {'image': 'cat1.png'}, 'annotations': [{'id': 9, 'result': []}]},
                 {'id': 2, 'data': {'image': 'dog1.png'}, 'annotations': [{'id': 9, 'result': []}]}],
     'ls.json, task 2, annotation 9: annotation id 9 comes twice (first in task 1)'),
    ('coco.json', {'images': [{'id': 1, 'file_name': 'cat1.png', 'width': 37, 'height': 23}], 'categories': [{'id': 1, 'name': 'cat'}],
                   'annotations': [{'id': 5, 'image_id': 1, 'category_id': 1}] * 2}, 'coco.json, annotation 5: annotation id 5 comes twice'),
])
def test_import_refuses_bad_values_with_one_line(project, tmp_path, name, content, message):
    (tmp_path/name).write_text(json.dumps(content))
    rc, out, err = label_import(project, tmp_path/name)
    assert rc == 1 and message in err and 'Traceback' not in err and imported(project) == []

@pytest.mark.parametrize('name,text,message', [
    ('pool.tsv', 'INPUT:image\tOUTPUT:result\tASSIGNMENT:assignment_id\tASSIGNMENT:worker_id\ncat1.png\tcat\tA1\tw1\ncat1.png\tcat\tA1\tw1\n',
     'pool.tsv, row 3: assignment A1 answers cat1.png twice'),
    ('batch.csv', 'AssignmentId,WorkerId,Input.image_url,Answer.category.label\nA1,W1,cat1.png,cat\nA1,W1,cat1.png,cat\n',
     'batch.csv, row 3: AssignmentId A1 comes twice'),
    ('pool.tsv', 'INPUT:image\tOUTPUT:result\tASSIGNMENT:worker_id\ncat1.png\tdgo\tw1\n',
     "pool.tsv: 'cat1.png' (annotator w1) has the label 'dgo', which is not one of the classes cat, dog"),
])
def test_import_refuses_bad_crowd_rows(project, tmp_path, name, text, message):
    (tmp_path/name).write_text(text)
    rc, out, err = label_import(project, tmp_path/name)
    assert rc == 1 and message in err and 'Traceback' not in err and imported(project) == []

def test_box_within_the_rounding_tolerance_is_clipped(project, tmp_path):
    (tmp_path/'coco.json').write_text(json.dumps({'images': [{'id': 1, 'file_name': 'cat1.png', 'width': 37, 'height': 23}],
        'categories': [{'id': 1, 'name': 'cat'}], 'annotations': [{'id': 5, 'image_id': 1, 'category_id': 1, 'bbox': [30, 0, 7.4, 23.3]}]}))
    assert label_import(project, tmp_path/'coco.json')[0] == 0
    from neuronb.label.project import project_events
    assert project_events(project.store()).boxes[0] == [box(30.0, 0.0, 7.0, 23.0, 'cat')]

def test_toloka_control_tasks_are_gold_not_votes(project, tmp_path):
    from neuronb.label.project import aggregate_project
    rows = [('cat1.png', 'dog', 'cat', 'A1', 'w1'), ('cat1.png', 'dog', 'cat', 'A2', 'w2'), ('cat1.png', 'cat', 'cat', 'A3', 'w3'),
            ('dog1.png', 'dog', '', 'A1', 'w1'), ('dog1.png', 'dog', '', 'A2', 'w2')]
    (tmp_path/'pool.tsv').write_text('INPUT:image\tOUTPUT:result\tGOLDEN:result\tASSIGNMENT:assignment_id\tASSIGNMENT:worker_id\n' +
                                     ''.join('\t'.join(r) + '\n' for r in rows))
    rc, out, err = label_import(project, tmp_path/'pool.tsv')
    assert (rc, err) == (0, '') and 'Imported 5 annotations (toloka)' in out
    assert ('cat1.png', 'gold', "'cat'", 'review') in imported(project)
    agg = aggregate_project(project, method='majority')
    assert dict(zip(agg['labels'].name, agg['labels'].label)) == {'cat1.png': 'cat', 'dog1.png': 'dog'}   # two votes said dog
    acc = agg['workers'].set_index('worker').accuracy
    assert acc['w3'] == 1.0 and acc['w1'] == 0.5                       # scored against the right answer

def cvat_yolo_folder(root, lines):
    "A YOLO 1.1 export as CVAT writes it: obj.names, obj.data, train.txt, obj_train_data/<image>.txt."
    (root/'obj_train_data').mkdir(parents=True)
    (root/'obj.names').write_text('cat\ndog\n')
    (root/'obj.data').write_text('classes = 2\ntrain = data/train.txt\nnames = data/obj.names\nbackup = backup/\n')
    (root/'train.txt').write_text(''.join(f'data/obj_train_data/{n}\n' for n in lines))
    for n, text in lines.items():
        (root/'obj_train_data'/n).parent.mkdir(parents=True, exist_ok=True)
        (root/'obj_train_data'/n).with_suffix('.txt').write_text(text)
    return root

def test_cvat_yolo_folder_imports_with_the_datasets_image_sizes(project, tmp_path):
    folder = cvat_yolo_folder(tmp_path/'yolo', {'cat1.png': '0 0.5 0.5 0.2 0.4\n', 'x/dup.png': '1 0.5 0.5 1 1\n', 'gone.png': ''})
    assert detect_format(folder) == 'yolo'
    rc, out, err = label_import(project, folder)
    assert (rc, err) == (0, '') and 'Imported 2 annotations (yolo)' in out and '1 rows about files not in the dataset' in out
    from neuronb.label.project import project_events
    ev = project_events(project.store()).set_index('name')
    assert canon(pd.DataFrame({'boxes': [ev.boxes['cat1.png'], ev.boxes['x/dup.png']]}), ['boxes']) == canon(pd.DataFrame(
        {'boxes': [[box(14.8, 6.9, 7.4, 9.2, 'cat')], [box(0, 0, 8, 8, 'dog')]]}), ['boxes'])   # 37x23 and 8x8, from the dataset

def test_plain_yolo_folder_imports_with_the_datasets_image_sizes(project, tmp_path):
    (tmp_path/'y').mkdir(); (tmp_path/'y/classes.txt').write_text('cat\ndog\n')
    (tmp_path/'y/dog1.txt').write_text('1 0.5 0.5 1 1\n'); (tmp_path/'y/other.txt').write_text('0 0.5 0.5 1 1\n')
    rc, out, err = label_import(project, tmp_path/'y')
    assert (rc, err) == (0, '') and 'Imported 1 annotations (yolo)' in out and '1 rows about files not in the dataset' in out
    assert [b for bs in imported_boxes(project) for b in bs] == [box(0.0, 0.0, 20.0, 10.0, 'dog')]

def test_yolo_box_outside_the_dataset_image_is_refused(project, tmp_path):
    folder = cvat_yolo_folder(tmp_path/'yolo', {'dog1.png': '1 0.9 0.5 0.4 0.2\n'})
    rc, out, err = label_import(project, folder)
    assert rc == 1 and 'obj_train_data/dog1.txt, line 1: box x=14, y=4, width=8, height=2 (dog) lies outside the 20x10 image' in err

def imported_boxes(project):
    from neuronb.label.project import project_events
    return [b for b in project_events(project.store()).boxes if b is not None]

def test_labelstudio_json_min_imports(project, tmp_path):
    (tmp_path/'min.json').write_text(json.dumps([
        {'image': '/data/upload/3/0f0f0f0f-cat1.png', 'id': 1, 'choice': 'cat', 'annotator': 'ann@example.com', 'annotation_id': 11, 'lead_time': 2.5},
        {'image': '/data/upload/3/1e1e1e1e-dog1.png', 'id': 2, 'choice': {'choices': ['cat', 'dog']}, 'annotator': 4, 'annotation_id': 12},
        {'image': '/data/upload/3/2d2d2d2d-x-dup.png', 'id': 3}]))
    rc, out, err = label_import(project, tmp_path/'min.json')
    assert (rc, err) == (0, '') and 'Imported 2 annotations (labelstudio)' in out
    assert imported(project) == [('cat1.png', 'ann@example.com', "'cat'", 'label'), ('dog1.png', '4', "['cat', 'dog']", 'label')]
