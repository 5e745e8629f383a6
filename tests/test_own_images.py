"""Bring your own images: `neuronb init --data SOURCE` on generated folders, tables, exports and buckets, through the real CLI."""
import hashlib, json, os, subprocess, sys
from pathlib import Path
import numpy as np
import pytest
from PIL import Image, ImageDraw

BIN = Path(sys.executable).parent
ENV = {**os.environ, 'WANDB_MODE': 'disabled'}
CLASSES = {'red fox': (200, 60, 40), 'Æble grøn': (60, 180, 70), 'blue sky': (50, 80, 200)}   # spaces, non-ASCII
QUICK = ['-p', 'train.epochs=6', '-p', 'train.size=32', '-p', 'train.bs=16', '-p', 'train.lr=0.01']


def neuronb(*args, env=ENV, timeout=900):
    return subprocess.run([str(BIN/'neuronb'), *map(str, args)], capture_output=True, text=True, env=env, timeout=timeout)


def _picture(rng, colour, w, h):
    "An easy task: each class has its own background colour, with noise and a random blob on top."
    base = np.clip(np.array(colour) + rng.normal(0, 25, (h, w, 3)), 0, 255).astype(np.uint8)
    img = Image.fromarray(base)
    x0, y0 = int(rng.integers(0, w // 2)), int(rng.integers(0, h // 2))
    ImageDraw.Draw(img).ellipse([x0, y0, x0 + w // 3, y0 + h // 3], fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
    return img


def make_images(root, n=16, seed=0, folders=True):
    "Class folders (or one flat folder) of RGB JPEGs and PNGs of 40–400 px, plus one corrupt file; returns {file: class}."
    rng, truth = np.random.default_rng(seed), {}
    for c, colour in CLASSES.items():
        for i in range(n):
            name = f"{c}/img {i}.{'png' if i % 3 == 0 else 'jpg'}" if folders else f"{c[:3]}-{i}.{'png' if i % 3 == 0 else 'jpg'}"
            path = Path(root)/name
            path.parent.mkdir(parents=True, exist_ok=True)
            _picture(rng, colour, int(rng.integers(40, 400)), int(rng.integers(40, 400))).save(path, quality=90)
            truth[name] = c
    (Path(root)/('red fox/broken.jpg' if folders else 'broken.jpg')).write_bytes(b'\xff\xd8\xff\xe0 a transfer cut short')
    return truth


def tree_hash(root) -> str:
    "One hash of every file's path, bytes, size and modification time under `root`."
    h = hashlib.sha256()
    for p in sorted(Path(root).rglob('*')):
        if p.is_file(): st = p.stat(); h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\0".encode() + p.read_bytes())
    return h.hexdigest()


def stage_metrics(root) -> dict:
    "`{stage: metrics}` of the newest run of the project at `root`."
    newest = sorted(p for p in (Path(root)/'runs').glob('*/run.json'))[-1]
    return {s['stage']: s['metrics'] for s in json.loads(newest.read_text())['stages']}


@pytest.fixture(scope='module')
def folders_project(tmp_path_factory):
    "A project over class folders, run once through every stage."
    base = tmp_path_factory.mktemp('own')
    make_images(base/'photos')
    before = tree_hash(base/'photos')
    made = neuronb('init', base/'pets', '--data', base/'photos')
    assert made.returncode == 0, made.stderr
    run = neuronb('run', base/'pets', *QUICK)
    return base, run, before


def test_class_folders_train_analyse_and_serve_with_their_names(folders_project):
    base, run, _ = folders_project
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    m = stage_metrics(base/'pets')
    assert (m['ingest']['files_ingested'], m['ingest']['rejected']) == (48, 1)   # the corrupt file is listed, not stored
    assert m['label']['labelled_items'] == 48
    assert m['train']['test_accuracy'] >= 0.9 and m['demo']['sample_accuracy'] >= 0.8
    latest = json.loads((base/'pets/data/models/latest.json').read_text())['version']
    cfg = json.loads((base/'pets/data/models'/latest/'config.json').read_text())
    assert cfg['classes'] == sorted(CLASSES) and cfg['in_channels'] == 3 and cfg['size'] == 32
    assert len(cfg['mean']) == 3 and len(cfg['std']) == 3
    ingest = next((base/'pets/runs').glob('*/01_ingest.ipynb')).read_text()
    assert 'broken.jpg' in ingest


def test_the_source_is_byte_identical_and_nothing_is_written_outside_the_project(folders_project):
    base, run, before = folders_project
    assert run.returncode == 0
    assert tree_hash(base/'photos') == before
    assert sorted(p.name for p in base.iterdir()) == ['pets', 'photos']


def test_an_unchanged_source_is_a_no_op_and_a_new_image_a_new_version(folders_project):
    base, run, _ = folders_project
    again = neuronb('run', base/'pets', *QUICK)
    assert again.returncode == 0 and 'Everything is up to date' in again.stdout, again.stdout
    rng = np.random.default_rng(7)
    _picture(rng, CLASSES['blue sky'], 120, 90).save(base/'photos/blue sky/new one.jpg')
    try:
        status = neuronb('status', base/'pets')
        assert 'ingest' in status.stdout and 'source:' in status.stdout and 'changed' in status.stdout, status.stdout
        ran = neuronb('run', base/'pets', *QUICK, '--only', 'ingest')
        assert ran.returncode == 0, ran.stdout + ran.stderr
        log = neuronb('data', '--dir', base/'pets', 'log', '-d', 'images')
        assert log.returncode == 0 and '49 files' in log.stdout and '48 files' in log.stdout, log.stdout
    finally: (base/'photos/blue sky/new one.jpg').unlink()


def test_analysis_shows_plots_of_colour_images(folders_project):
    base, run, _ = folders_project
    nb = next((base/'pets/runs').glob('*/04_analyze.ipynb'))
    cells = json.loads(nb.read_text())['cells']
    assert len([o for c in cells for o in c.get('outputs', []) if 'image/png' in o.get('data', {})]) >= 4


def _flat_project(tmp_path, labels_file=None, *extra):
    make_images(tmp_path/'flat', folders=False)
    args = ['init', tmp_path/'p', '--data', tmp_path/'flat'] + (['--labels', labels_file] if labels_file else []) + list(extra)
    made = neuronb(*args)
    assert made.returncode == 0, made.stderr
    return tmp_path/'p'


def test_labels_from_a_csv_table(tmp_path):
    truth = make_images(tmp_path/'x', folders=False)   # the same names _flat_project will make
    (tmp_path/'labels.csv').write_text('file,label\n' + ''.join(f'"{f}","{c}"\n' for f, c in truth.items()), encoding='utf-8')
    root = _flat_project(tmp_path, tmp_path/'labels.csv')
    run = neuronb('run', root, *QUICK)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    m = stage_metrics(root)
    assert m['label']['labelled_items'] == 48 and m['train']['test_accuracy'] >= 0.9
    assert (root/'labels/labels.csv').is_file()                      # the project keeps what it was built from


def test_labels_from_a_label_studio_export(tmp_path):
    truth = make_images(tmp_path/'x', folders=False)
    tasks = [{'id': i, 'data': {'image': f}, 'annotations': [{'completed_by': 1, 'result': [
             {'type': 'choices', 'from_name': 'choice', 'to_name': 'image', 'value': {'choices': [c]}}]}]}
             for i, (f, c) in enumerate(truth.items())]
    (tmp_path/'export.json').write_text(json.dumps(tasks, ensure_ascii=False), encoding='utf-8')
    root = _flat_project(tmp_path, tmp_path/'export.json')
    run = neuronb('run', root, *QUICK, '--only', 'ingest', '--only', 'label', '--only', 'prepare')
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    meta = json.loads((root/'data/datasets/images/meta.json').read_text())
    assert meta['ready'] and meta['classes'] == sorted(CLASSES) and meta['n'] == 48


def test_no_labels_yet_starts_with_labeling_and_train_says_how_many_are_missing(tmp_path):
    make_images(tmp_path/'flat', folders=False)
    refused = neuronb('init', tmp_path/'p', '--data', tmp_path/'flat')
    assert refused.returncode == 1 and '--classes' in refused.stderr and 'Traceback' not in refused.stderr
    assert not (tmp_path/'p').exists()
    made = neuronb('init', tmp_path/'p', '--data', tmp_path/'flat', '--labels', 'none', '--classes', 'red fox,blue sky')
    assert made.returncode == 0 and 'neuronb label --dir' in made.stdout, made.stdout + made.stderr
    early = neuronb('label', '--dir', tmp_path/'p', 'serve', '--annotators', 'alice')   # before anything is ingested
    assert early.returncode == 1 and 'run `neuronb run --only ingest`' in early.stderr and 'Traceback' not in early.stderr
    run = neuronb('run', tmp_path/'p')
    assert run.returncode == 1
    assert 'training needs at least 5 labels in each of at least two classes: 10 more' in run.stderr, run.stderr
    assert 'neuronb label serve' in run.stderr and 'Traceback' not in run.stderr
    m = stage_metrics(tmp_path/'p')
    assert m['ingest']['files_ingested'] == 48 and m['prepare']['ready'] is False


def test_bad_sources_are_refused_with_one_message(tmp_path):
    out = neuronb('init', tmp_path/'p', '--data', tmp_path/'nowhere')
    assert out.returncode == 1 and 'does not exist' in out.stderr and 'Traceback' not in out.stderr
    (tmp_path/'docs').mkdir(); (tmp_path/'docs/readme.txt').write_text('no pictures here')
    out = neuronb('init', tmp_path/'p', '--data', tmp_path/'docs')
    assert out.returncode == 1 and 'holds no image files' in out.stderr
    out = neuronb('init', tmp_path/'p', '--data', tmp_path/'docs', '--labels', tmp_path/'missing.csv')
    assert out.returncode == 1 and 'Traceback' not in out.stderr
    assert not (tmp_path/'p').exists()


def test_a_bucket_as_the_source(tmp_path, s3_endpoint, aws_env):
    import s3fs
    fs = s3fs.S3FileSystem(endpoint_url=s3_endpoint, key='testing', secret='testing', skip_instance_cache=True)
    fs.mkdir('photos-bucket')
    make_images(tmp_path/'local')
    fs.put(str(tmp_path/'local') + '/', 'photos-bucket/pets/', recursive=True)
    env = {**ENV, **{k: os.environ[k] for k in os.environ if k.startswith('AWS_')}, 'AWS_ENDPOINT_URL_S3': s3_endpoint}
    made = neuronb('init', tmp_path/'p', '--data', 's3://photos-bucket/pets/', env=env)
    assert made.returncode == 0, made.stderr
    run = neuronb('run', tmp_path/'p', *QUICK, '--only', 'ingest', '--only', 'label', '--only', 'prepare', env=env)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    m = stage_metrics(tmp_path/'p')
    assert (m['ingest']['files_ingested'], m['ingest']['rejected'], m['label']['labelled_items']) == (48, 1, 48)
    assert len(fs.find('photos-bucket/pets')) == 49                   # the bucket is only read


def test_a_sweep_trains_on_the_projects_own_images(folders_project):
    base, run, _ = folders_project
    assert run.returncode == 0
    (base/'pets/quick.yaml').write_text('method: grid\nmetric: {name: valid_accuracy, goal: maximize}\n'
                                        'parameters:\n  lr: {values: [0.003, 0.01]}\n  epochs: {value: 2}\n  size: {value: 24}\n')
    out = subprocess.run([str(BIN/'neuronb'), 'sweep', 'quick.yaml', '--engine', 'local'], capture_output=True, text=True,
                         env=ENV, timeout=900, cwd=base/'pets')
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count('COMPLETE') == 2 and 'best valid_accuracy' in out.stdout
    assert 'objective: project_objective' in out.stdout                       # the project's images, not the digits
    assert (base/'pets/sweep.yaml').is_file()                                # every project gets a sweep config


def test_status_runs_and_show_answer_in_json(folders_project):
    base, run, _ = folders_project
    status = json.loads(neuronb('status', base/'pets', '--json').stdout)
    assert [s['stage'] for s in status] == ['ingest', 'label', 'prepare', 'analyze', 'train', 'demo']
    runs = json.loads(neuronb('runs', base/'pets', '--json').stdout)
    assert runs and all('run_id' in r for r in runs)
    show = json.loads(neuronb('show', '--dir', base/'pets', '--json').stdout)
    assert show['run_id'] == runs[0]['run_id']
    log = json.loads(neuronb('data', '--dir', base/'pets', 'log', '-d', 'images', '--json').stdout)
    assert log[0]['dataset'] == 'images'


def _project_images(root, size=24):
    "The train and valid splits of a prepared project as `StoreImages`, and a model config for them."
    from neuronb.pipeline.project import load_project
    from neuronb.data.prepare import read_index
    from neuronb.train.data import index_images, channel_stats
    project = load_project(root)
    store = project.store()
    df, meta = read_index(store, project.dataset)
    tr, va = (index_images(store, df, meta['classes'], size, 3, split=s) for s in ('train', 'valid'))
    mean, std = channel_stats(tr)
    return tr, va, {'arch': 'simple_cnn', 'n_classes': len(meta['classes']), 'in_channels': 3, 'width': 8,
                    'classes': meta['classes'], 'size': size, 'mean': mean, 'std': std}


def test_an_interrupted_fit_on_streamed_images_resumes_exactly(folders_project, tmp_path):
    import torch
    from fastai.callback.core import Callback
    from neuronb.train.learner import train_classifier, last_checkpoint
    base, run, _ = folders_project
    tr, va, cfg = _project_images(base/'pets')

    class Crash(Callback):
        def before_epoch(self):
            if self.epoch == 2: raise RuntimeError('simulated crash')
    kw = dict(epochs=4, lr=1e-2, bs=8, seed=0, progress=False, num_workers=2)
    full = train_classifier(tr, None, va, None, cfg, **kw)
    with pytest.raises(RuntimeError, match='simulated crash'):
        train_classifier(tr, None, va, None, cfg, checkpoint_dir=tmp_path, cbs=[Crash()], **kw)
    assert last_checkpoint(tmp_path).name == 'epoch-0002'
    resumed = train_classifier(tr, None, va, None, cfg, checkpoint_dir=tmp_path, resume=True, **kw)
    assert resumed.recorder.values == full.recorder.values
    for a, b in zip(resumed.model.state_dict().values(), full.model.state_dict().values()): assert torch.equal(a, b)


def test_the_train_stage_on_streamed_images_in_two_processes_with_the_lr_finder(folders_project):
    base, run, _ = folders_project
    out = neuronb('run', base/'pets', *QUICK[:-2], '-p', 'train.nproc=2', '-p', 'train.find_lr=true', '-p', 'train.epochs=3',
                  '--only', 'train')
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    m = stage_metrics(base/'pets')
    assert m['train']['found_lr'] > 0 and 0 <= m['train']['test_accuracy'] <= 1   # 3 epochs at the finder's lr: no accuracy promised
    latest = json.loads((base/'pets/data/models/latest.json').read_text())['version']
    assert json.loads((base/'pets/data/models'/latest/'config.json').read_text())['nproc'] == 2
    job = json.loads((base/'pets/.neuronb/jobs/train/job.json').read_text())
    assert job['images']['train']['size'] == 32 and not (base/'pets/.neuronb/jobs/train/data.safetensors').exists()


@pytest.mark.browser
def test_the_demo_shows_the_projects_class_names_in_chromium(folders_project, tmp_path):
    import socket, time
    from playwright.sync_api import sync_playwright
    base, run, _ = folders_project
    assert run.returncode == 0
    from conftest import DemoServer, free_port
    demo = DemoServer([str(BIN/'neuronb'), 'demo', str(base/'pets'), '--port', str(free_port())], ENV)
    proc = demo.proc
    try:
        _picture(np.random.default_rng(3), CLASSES['Æble grøn'], 300, 200).save(tmp_path/'apple.jpg')
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path='/usr/bin/chromium', args=[
                '--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
                '--disable-component-update', '--disable-sync', '--no-first-run'])
            page = browser.new_page()
            page.goto(demo.link(), wait_until='domcontentloaded')   # the printed private link
            page.wait_for_selector('.nb-upload', timeout=90_000)
            with page.expect_file_chooser() as chooser: page.click('.nb-upload')
            chooser.value.set_files(str(tmp_path/'apple.jpg'))
            page.wait_for_selector('.nb-prediction-value', timeout=30_000)
            assert page.inner_text('.nb-prediction-value').strip() == 'Æble grøn'
            assert page.locator('.nb-probs-table > div').count() == 3
            assert 'red fox' in page.inner_text('.nb-probs-table')
            browser.close()
    finally:
        from conftest import stop_server
        assert stop_server(proc) == [], "the demo left processes behind"


def make_multilabel(root, n=48, seed=0):
    "Gray noise pictures with a red disc (top left), a blue square (bottom right) or both; returns {file: classes}."
    rng, truth = np.random.default_rng(seed), {}
    for i in range(n):
        kinds = [['red'], ['blue'], ['blue', 'red']][i % 3]
        w, h = int(rng.integers(60, 200)), int(rng.integers(60, 200))
        img = Image.fromarray(np.clip(rng.normal(128, 20, (h, w, 3)), 0, 255).astype(np.uint8))
        d = ImageDraw.Draw(img)
        if 'red' in kinds: d.ellipse([2, 2, w // 2, h // 2], fill=(220, 30, 30))
        if 'blue' in kinds: d.rectangle([w // 2, h // 2, w - 2, h - 2], fill=(30, 30, 220))
        Path(root).mkdir(parents=True, exist_ok=True)
        img.save(Path(root)/f'pic {i}.jpg', quality=90)
        truth[f'pic {i}.jpg'] = kinds
    return truth


def test_multilabel_from_a_table_of_class_lists(tmp_path):
    truth = make_multilabel(tmp_path/'pics')
    (tmp_path/'labels.csv').write_text('file,label\n' + ''.join(f'"{f}","{json.dumps(c).replace(chr(34), chr(34) * 2)}"\n'
                                                               for f, c in truth.items()), encoding='utf-8')
    make_images(tmp_path/'foldered', n=3)
    folders = neuronb('init', tmp_path/'x', '--data', tmp_path/'foldered', '--task', 'multilabel')   # class folders: one class each
    assert folders.returncode == 1 and 'a folder gives each image one' in folders.stderr
    made = neuronb('init', tmp_path/'p', '--data', tmp_path/'pics', '--labels', tmp_path/'labels.csv', '--task', 'multilabel')
    assert made.returncode == 0, made.stderr
    run = neuronb('run', tmp_path/'p', *QUICK[:-4], '-p', 'train.size=32', '-p', 'train.bs=8', '-p', 'train.epochs=8')
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    m = stage_metrics(tmp_path/'p')
    assert m['train']['test_accuracy'] >= 0.9 and m['train']['test_exact_match'] >= 0.8, m['train']
    meta = json.loads((tmp_path/'p/data/datasets/images/meta.json').read_text())
    assert meta['multi_label'] and meta['classes'] == ['blue', 'red'] and meta['class_counts'] == {'blue': 32, 'red': 32}
    latest = json.loads((tmp_path/'p/data/models/latest.json').read_text())['version']
    cfg = json.loads((tmp_path/'p/data/models'/latest/'config.json').read_text())
    assert cfg['multi_label'] and cfg['threshold'] == 0.5
    assert m['demo']['sample_accuracy'] >= 0.6
