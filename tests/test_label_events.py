"Label event store: concurrent writers (local disk and moto's S3 server), bad input, corrupt files, caching, aggregation."
import json, multiprocessing as mp, os, time
import pytest
import pandas as pd
from neuronb.core import DataError, ParameterError, StorageError
from neuronb.data.storage import open_store
from neuronb.label.events import (LabelEvent, EventStore, item_hash, events_from_table, current_labels, item_agreement,
                                  annotator_accuracy, aggregate, disagreements, read_item, FIELDS)

os.environ.setdefault('WANDB_MODE', 'disabled')

H = item_hash(b'an image')
SHARED_ID = '20200101T000000000000Z-5a5a5a5a5a'

# --- concurrent writers -------------------------------------------------------------------------------

def _writer(url, opts, worker, n, start):
    "One process: wait for the common start, then add `n` single events, one batch of 10 and one contested id."
    store = open_store(url, **opts)
    es = EventStore(store)
    while time.time() < start: time.sleep(0.005)
    ids = [es.add(LabelEvent(item_hash(f'item {i}'.encode()), f'w{worker}', f'{worker}-{i}', seconds=i)).id for i in range(n)]
    batch = [LabelEvent(item_hash(f'batch {i}'.encode()), f'w{worker}', f'b{worker}-{i}', source='import') for i in range(10)]
    es.add_many(batch)
    try: es.add(LabelEvent(H, f'w{worker}', f'winner-{worker}', id=SHARED_ID)); won = True
    except DataError as e:
        assert 'already stored with different content' in str(e)
        won = False
    return worker, ids + [e.id for e in batch], won

def _run_writers(url, opts, n_proc=4, n=50):
    ctx = mp.get_context('spawn')  # a fresh interpreter: no inherited S3 sessions or event loops
    start = time.time() + 3
    with ctx.Pool(n_proc) as pool:
        return pool.starmap(_writer, [(url, opts, w, n, start) for w in range(n_proc)])

def _check_all_present(es, results, n=50):
    df = es.events()
    want = {i for _, ids, _ in results for i in ids}
    assert df.id.is_unique
    assert want <= set(df.id) and len(df) == len(want) + 1  # + the one contested event
    winners = [w for w, _, won in results if won]
    assert len(winners) == 1, f"exactly one process may create the contested id, got {winners}"
    shared = df[df.id == SHARED_ID].iloc[0]
    assert shared.label == f'winner-{winners[0]}' and shared.annotator == f'w{winners[0]}'
    for w, _, _ in results:  # every writer's events hold what that writer wrote
        mine = df[(df.annotator == f'w{w}') & (df.source == 'app') & (df.id != SHARED_ID)].sort_values('seconds')
        assert mine.label.tolist() == [f'{w}-{i}' for i in range(n)]
        assert sorted(df[(df.annotator == f'w{w}') & (df.source == 'import')].label) == sorted(f'b{w}-{i}' for i in range(10))

def test_concurrent_writers_local(tmp_path):
    results = _run_writers(str(tmp_path/'store'), {})
    es = EventStore(tmp_path/'store')
    _check_all_present(es, results)
    assert len(os.listdir(tmp_path/'store/labels/events/_batches')) == 4
    leftovers = [f for _, _, fs in os.walk(tmp_path/'store') for f in fs if '.tmp-' in f]
    assert leftovers == []

def make_bucket(endpoint, name):
    import s3fs
    s3fs.S3FileSystem(endpoint_url=endpoint, skip_instance_cache=True).mkdir(name)

def test_concurrent_writers_s3(s3_endpoint, aws_env):
    make_bucket(s3_endpoint, 'events')
    results = _run_writers('s3://events/proj', {'endpoint_url': s3_endpoint})
    es = EventStore(open_store('s3://events/proj', endpoint_url=s3_endpoint))
    _check_all_present(es, results)

def test_s3_round_trip_and_corrupt_file(s3_endpoint, aws_env):
    make_bucket(s3_endpoint, 'roundtrip')
    store = open_store('s3://roundtrip/p', endpoint_url=s3_endpoint)
    es = EventStore(store)
    e = es.add(LabelEvent(H, 'alice', ['cat', 'dog'], seconds=1.5))
    assert es.add(e) == e  # a retried add of the same event is harmless
    es.add_many([LabelEvent(H, 'bob', boxes=[{'x': 1, 'y': 2, 'width': 3, 'height': 4, 'label': 'cat'}])])
    df = EventStore(store).events()
    assert df.label.tolist() == [['cat', 'dog'], None] and df.boxes.iloc[1][0]['label'] == 'cat'
    store.write_bytes('labels/events/20200101/x.json', b'[1, 2')
    with pytest.raises(DataError, match=r"label event file labels/events/20200101/x.json in s3://roundtrip/p is corrupt"):
        EventStore(store).events()

# --- reading: cache and corrupt files -----------------------------------------------------------------

def test_events_parses_each_file_once(tmp_path, monkeypatch):
    es = EventStore(tmp_path)
    for i in range(5): es.add(LabelEvent(H, 'alice', str(i)))
    es.add_many([LabelEvent(H, 'bob', str(i)) for i in range(100)])
    es = EventStore(tmp_path)  # a fresh reader: nothing parsed yet
    reads = []
    real = EventStore._read_file
    monkeypatch.setattr(EventStore, '_read_file', lambda self, name: reads.append(name) or real(self, name))
    assert len(es.events()) == 105 and len(reads) == 6
    assert len(es.events()) == 105 and len(reads) == 6  # nothing new: nothing read
    es.add(LabelEvent(H, 'carol', 'x'))
    assert len(es.events()) == 106 and len(reads) == 7 and reads[-1].endswith('.json')
    df = es.events(); df.loc[0, 'label'] = 'changed'  # the caller's copy: the cache stays as stored
    assert es.events().label.iloc[0] == '0'

def test_corrupt_batch_and_non_event_files(tmp_path):
    es = EventStore(tmp_path)
    es.add(LabelEvent(H, 'alice', 'cat'))
    (tmp_path/'labels/events/_batches').mkdir()
    (tmp_path/'labels/events/_batches/20200101T000000000000Z-0000000001.parquet').write_bytes(b'PAR1 not really')
    with pytest.raises(DataError, match=r"labels/events/_batches/20200101T000000000000Z-0000000001.parquet .* is corrupt \(not a Parquet file"):
        EventStore(tmp_path).events()
    os.remove(tmp_path/'labels/events/_batches/20200101T000000000000Z-0000000001.parquet')
    (tmp_path/'labels/events/20200101').mkdir()
    (tmp_path/'labels/events/20200101/20200101T000000000000Z-0000000002.json').write_text(json.dumps({'item': H}))
    with pytest.raises(DataError, match="is corrupt \\(not a label event: id, item, annotator or kind missing\\); .* restore it from a backup"):
        EventStore(tmp_path).events()

def test_unfinished_writes_are_not_read(tmp_path):
    es = EventStore(tmp_path)
    es.add(LabelEvent(H, 'alice', 'cat'))
    (next((tmp_path/'labels/events').iterdir())/'.20200101T000000000000Z-0000000003.json.tmp-deadbeef').write_text('{"half')
    assert len(es.events()) == 1

# --- bad input ----------------------------------------------------------------------------------------

BAD_EVENTS = [
    (dict(annotator='alice', label='7', kind='vote'), "unknown event kind 'vote'; use one of label, skip, undo, review, correction"),
    (dict(annotator='', label='7'), "annotator must be a non-empty name"),
    (dict(annotator=None, label='7'), "annotator must be a non-empty name"),
    (dict(annotator='../etc', label='7'), "annotator name '../etc' has path characters"),
    (dict(annotator='a/b', label='7'), "has path characters"),
    (dict(annotator='a\\b', label='7'), "has path characters"),
    (dict(annotator='_batches', label='7'), "has path characters"),
    (dict(annotator='alice', label=7), "label 7 (int) is not a class name or a list of class names; pass a non-empty string (e.g. '7', not 7)"),
    (dict(annotator='alice', label=''), "is not a class name"),
    (dict(annotator='alice', label={'a': 1}), "label {'a': 1} (dict) is not a class name"),
    (dict(annotator='alice', label=['cat', None]), "a list of strings for multi-label"),
    (dict(annotator='alice', boxes='box'), "boxes must be a list of box dicts or None, got str"),
    (dict(annotator='alice', boxes=[[1, 2, 3, 4]]), "boxes[0] = [1, 2, 3, 4] is not a box; each box is a dict with x, y, width, height"),
    (dict(annotator='alice', boxes=[{'x': 1, 'y': 1, 'width': 2}]), "is not a box"),
    (dict(annotator='alice', boxes=[{'x': 'a', 'y': 1, 'width': 2, 'height': 2}]), "boxes[0]['x'] = 'a' is not a valid number of pixels"),
    (dict(annotator='alice', boxes=[{'x': 1, 'y': 1, 'width': 2, 'height': float('nan')}]), "boxes[0]['height'] = nan"),
    (dict(annotator='alice', boxes=[{'x': 1, 'y': 1, 'width': 2, 'height': 2, 'label': 3}]), "boxes[0]['label'] = 3 is not a class name"),
    (dict(annotator='alice', kind='undo'), "a 'undo' event needs parent= the id of the event it undoes"),
    (dict(annotator='alice', label='7', kind='correction'), "needs parent= the id of the event it corrects"),
    (dict(annotator='alice'), "a 'label' event needs a label or boxes; use kind='skip'"),
    (dict(annotator='alice', label='7', kind='review', parent=None, seconds=-2), "seconds=-2 is not a time spent"),
    (dict(annotator='alice', label='7', seconds='3'), "seconds='3' is not a time spent"),
    (dict(annotator='alice', label='7', id='a/b'), "event id 'a/b' is not valid; leave id out to get a new one"),
    (dict(annotator='alice', kind='undo', parent=12), "parent=12 is not an event id"),
]

@pytest.mark.parametrize('kw,msg', BAD_EVENTS)
def test_bad_event_messages(kw, msg):
    with pytest.raises(DataError) as e: LabelEvent(H, **kw)
    assert msg in str(e.value)

def test_bad_item_and_store_input(tmp_path):
    with pytest.raises(DataError, match="item 'a.png' is not a content hash; pass the sha256 hex"): LabelEvent('a.png', 'alice', '7')
    with pytest.raises(DataError, match="item_hash needs the item's bytes, got str"): item_hash('text')
    es = EventStore(tmp_path)
    with pytest.raises(ParameterError, match="EventStore.add needs a LabelEvent, got dict"): es.add({'item': H})
    with pytest.raises(ParameterError, match="add_many needs LabelEvents, got a str"): es.add_many(['x'])
    e = LabelEvent(H, 'alice', 'cat')
    with pytest.raises(DataError, match="same event twice"): es.add_many([e, e])
    es.add(e)
    with pytest.raises(DataError, match="already stored with different content; events are never overwritten"):
        es.add(LabelEvent(H, 'alice', 'dog', id=e.id))
    assert es.events().label.tolist() == ['cat']
    assert es.add_many([]) == 0
    with pytest.raises(DataError, match="1 of these events are already stored"): es.add_many([e])
    with pytest.raises(ParameterError, match="events must be an EventStore"): current_labels({'a': 1})
    with pytest.raises(ParameterError, match="the events frame has no column"): item_agreement(pd.DataFrame({'item': [H]}))
    with pytest.raises(ParameterError, match="unknown aggregation method 'mean'; use one of majority, dawid-skene"): aggregate(es, 'mean')
    with pytest.raises(DataError, match="key gold by item hash"): annotator_accuracy(es, {'a.png': 'cat'})
    with pytest.raises(ParameterError, match="gold must be a dict"): annotator_accuracy(es, ['cat'])

def test_events_from_table_messages():
    files = {'a.png': H}
    t = pd.DataFrame({'name': ['a.png'], 'annotator': ['w1'], 'label': ['cat'], 'boxes': [None], 'seconds': [1.0]})
    assert events_from_table(t, item_of=files)[0].item == H
    assert events_from_table(t, item_of=files.get)[0].label == 'cat'
    cases = [(t, None, "row 0 ('a.png') has no item hash; pass item_of="),
             (t.assign(name='b.png'), files, "no item for the file name 'b.png'"),
             (t.assign(annotator='w/1'), files, "row 0 ('a.png'): annotator name 'w/1' has path characters"),
             (t.assign(label=[{'x': 1}]), files, "row 0 ('a.png'): label {'x': 1} (dict) is not a class name"),
             (t.assign(boxes=[[{'x': 1, 'y': 1}]]), files, "row 0 ('a.png'): boxes[0]"),
             (t.assign(seconds=-1.0), files, "row 0 ('a.png'): seconds=-1.0 is not a time spent"),
             (t[['annotator', 'label']], files, "it needs name (or item) and label (or boxes)")]
    for table, item_of, msg in cases:
        with pytest.raises(DataError) as e: events_from_table(table, item_of=item_of)
        assert msg in str(e.value), (msg, str(e.value))

def test_read_item(tmp_path):
    from neuronb.data.versions import add_files, commit, version_files
    src = tmp_path/'src'; src.mkdir(); (src/'x.bin').write_bytes(b'payload')
    add_files(tmp_path/'s', src, dataset='d', cache=False); commit(tmp_path/'s', 'd')
    h = version_files(tmp_path/'s', 'latest', 'd')['x.bin']
    assert read_item(tmp_path/'s', h) == b'payload' == read_item(tmp_path/'s', h, name='x.bin')
    obj = next((tmp_path/'s/objects'/h[:2]).iterdir()); obj.chmod(0o644); obj.write_bytes(b'tampered')
    with pytest.raises(StorageError, match="is corrupt \\(its content does not match its hash\\)"): read_item(tmp_path/'s', h)
    with pytest.raises(DataError, match="is not a content hash"): read_item(tmp_path/'s', 'x.bin')
    with pytest.raises(StorageError, match="is not in the store"): read_item(tmp_path/'s', item_hash(b'other'))

# --- views --------------------------------------------------------------------------------------------

def test_large_import_round_trip(tmp_path):
    table = pd.DataFrame({'item': [item_hash(str(i // 3).encode()) for i in range(30_000)],
                          'annotator': [f'w{i % 7}' for i in range(30_000)], 'label': [str(i % 10) for i in range(30_000)]})
    evs = events_from_table(table, source='toloka')
    es = EventStore(tmp_path)
    assert es.add_many(evs) == 30_000
    df = EventStore(tmp_path).events()
    assert df.id.tolist() == [e.id for e in evs] and df.label.tolist() == table.label.tolist()
    assert list(df.columns) == FIELDS and (df.source == 'toloka').all()
    assert len(current_labels(df)) == 30_000 - len(table) + len(table.drop_duplicates(['item', 'annotator']))

def test_undo_redo_and_corrections():
    a = LabelEvent(H, 'alice', 'cat')
    u = LabelEvent(H, 'alice', kind='undo', parent=a.id)
    assert current_labels([a, u]).empty
    uu = LabelEvent(H, 'alice', kind='undo', parent=u.id)
    assert current_labels([a, u, uu]).label.tolist() == ['cat']  # undoing the undo restores the label
    s = LabelEvent(H, 'alice', kind='skip')
    assert current_labels([a, s]).kind.tolist() == ['skip']
    c = LabelEvent(H, 'rev', 'dog', kind='correction', parent=a.id)
    cur = current_labels([a, c])
    assert cur[['annotator', 'label', 'by']].values.tolist() == [['alice', 'dog', 'rev']]
    assert current_labels([a, c], own_only=True).label.tolist() == ['cat']
    b = LabelEvent(H, 'bob', 'dog')
    assert disagreements([a, b]) == [H] and disagreements([a, b, LabelEvent(H, 'lead', 'cat', kind='review')]) == []
    r = LabelEvent(H, 'lead', 'dog', kind='review')
    agg = aggregate([a, b, r])
    assert agg[['label', 'confidence', 'reviewed']].values.tolist() == [['dog', 1.0, True]]
    assert aggregate([a, b, r, LabelEvent(H, 'lead', kind='undo', parent=r.id)]).reviewed.tolist() == [False]

def test_multi_label_agreement():
    evs = [LabelEvent(H, 'a', ['dog', 'cat']), LabelEvent(H, 'b', ['cat', 'dog']), LabelEvent(H, 'c', ['cat'])]
    ag = item_agreement(evs)
    assert ag.majority.iloc[0] == ['cat', 'dog'] and round(ag.agreement.iloc[0], 2) == 0.67
    assert aggregate(evs).label.iloc[0] == ['cat', 'dog']

def test_dawid_skene_beats_majority_on_simulated_crowd():
    import numpy as np
    from neuronb.label.crowd import simulate_crowd
    # 5 workers, one careless, 3 answers per item: each worker answers ~600 items, enough for Dawid-Skene to
    # learn who to trust (seeds 0-3 all give DS > MV here: 0.987/0.981, 0.988/0.978, 0.976/0.967, 0.987/0.984)
    rng = np.random.default_rng(0)
    truth = pd.DataFrame({'task': [item_hash(f'digit {i}'.encode()) for i in range(1000)], 'label': rng.integers(0, 10, 1000)})
    crowd = simulate_crowd(truth, n_workers=5, overlap=3, seed=0)
    table = crowd.rename(columns={'task': 'item', 'worker': 'annotator'}).assign(name=None, boxes=None)
    es = events_from_table(table, source='toloka')
    true = dict(zip(truth.task, truth.label.astype(str)))
    def accuracy(agg): return float((agg.label == agg.item.map(true)).mean())
    mv, ds = accuracy(aggregate(es, 'majority')), accuracy(aggregate(es, 'dawid-skene'))
    assert ds >= mv and mv > 0.9, (mv, ds)
    acc = annotator_accuracy(es, gold=true).set_index('annotator').accuracy
    assert acc.idxmin() == 'w05'  # the simulated careless worker
    cons = annotator_accuracy(es).set_index('annotator')
    assert cons.accuracy.idxmin() == 'w05' and (cons.against == 'consensus').all()

def test_jsonl_batches_without_pyarrow(tmp_path, monkeypatch):
    import neuronb.label.events as ev
    monkeypatch.setattr(ev, '_has_pyarrow', lambda: False)
    es = EventStore(tmp_path)
    evs = [LabelEvent(H, 'a', ['x', 'y']), LabelEvent(H, 'b', boxes=[{'x': 0, 'y': 0, 'width': 1, 'height': 1, 'label': 'x'}]),
           LabelEvent(H, 'c', kind='skip')]
    assert es.add_many(evs) == 3
    (name,) = os.listdir(tmp_path/'labels/events/_batches')
    assert name.endswith('.jsonl')
    df = EventStore(tmp_path).events()
    assert df.label.tolist() == [['x', 'y'], None, None] and df.boxes.iloc[1][0]['width'] == 1 and df.parent.tolist() == [None] * 3
    (tmp_path/'labels/events/_batches'/name).write_text('{"id": "1"\n')
    with pytest.raises(DataError, match=f"_batches/{name} .* is corrupt \\(a line is not JSON"): EventStore(tmp_path).events()

def test_aggregate_without_crowdkit(monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, 'crowdkit.aggregation', None)  # makes the import fail
    with pytest.raises(ParameterError, match="needs crowd-kit, which is not importable .*pip install crowd-kit"):
        aggregate([LabelEvent(H, 'a', 'x')])
    assert item_agreement([LabelEvent(H, 'a', 'x')]).majority.tolist() == ['x']  # the rest does without it

# --- bulk paths: the same events and messages as one by one ----------------------------------------------

def test_events_frame_from_table_and_add_many_frame(tmp_path):
    from neuronb.label.events import events_frame_from_table
    n = 5_000
    table = pd.DataFrame({'name': [f'f{i % 50}.png' for i in range(n)], 'annotator': [f'w{i % 7}' for i in range(n)],
                          'label': [['a', 'b'] if i % 11 == 0 else None if i % 13 == 0 else str(i % 10) for i in range(n)],
                          'seconds': [None if i % 5 == 0 else float(i % 30) for i in range(n)]})
    files = {f'f{i}.png': item_hash(f'f{i}'.encode()) for i in range(50)}
    frame = events_frame_from_table(table, files, source='toloka')
    evs = events_from_table(table, files, source='toloka')
    assert list(frame.columns) == FIELDS and frame.id.is_unique and frame.id.is_monotonic_increasing
    assert all(len(i) == 33 for i in frame.id) and all(len(t) == 27 for t in frame.ts)
    strip = lambda rows: [{k: v for k, v in r.items() if k not in ('id', 'ts')} for r in rows]
    assert strip(frame.to_dict('records')) == strip([{k: getattr(e, k) for k in FIELDS} for e in evs])
    assert frame.kind.tolist().count('skip') == sum(1 for i in range(n) if i % 11 and i % 13 == 0)
    es = EventStore(tmp_path)
    assert es.add_many(frame) == n and es.add_many(evs) == n
    back = EventStore(tmp_path).events()
    assert back.id.tolist() == sorted(frame.id.tolist() + [e.id for e in evs])
    assert back[back.id.isin(frame.id)].label.tolist() == frame.label.tolist()
    with pytest.raises(DataError, match=f"{n} of these events are already stored"): es.add_many(frame)

BAD_FRAME_ROWS = [(dict(item='a.png'), "item 'a.png' is not a content hash"), (dict(annotator='a/b'), "has path characters"),
                  (dict(label=7), "label 7 (int) is not a class name"), (dict(kind='vote'), "unknown event kind 'vote'"),
                  (dict(kind='undo', label=None), "needs parent= the id of the event it undoes"), (dict(seconds=-1.0), "seconds=-1.0 is not a time spent"),
                  (dict(id='a/b'), "event id 'a/b' is not valid"), (dict(parent=3), "parent=3 is not an event id"),
                  (dict(boxes=[{'x': 1}]), "boxes[0] = {'x': 1} is not a box")]

@pytest.mark.parametrize('change,msg', BAD_FRAME_ROWS)
def test_add_many_frame_checks_each_row(tmp_path, change, msg):
    frame = pd.DataFrame([{k: getattr(LabelEvent(H, 'alice', 'cat'), k) for k in FIELDS} for _ in range(3)]).assign(id='', ts='')
    for k, v in change.items(): frame[k] = frame[k].astype(object); frame.at[2, k] = v
    with pytest.raises(DataError) as e: EventStore(tmp_path).add_many(frame)
    assert str(e.value).startswith('events frame row 2: ') and msg in str(e.value), str(e.value)
    assert EventStore(tmp_path).events().empty  # nothing stored

def test_table_errors_name_the_first_bad_row():
    files = {'a.png': H}
    t = pd.DataFrame({'name': ['a.png'] * 6, 'annotator': ['w1', 'w2', '_x', 'w3', 'a/b', 'w4'], 'label': ['1', 2, '3', '', '5', '6']})
    with pytest.raises(DataError, match=r"^annotations table row 2 \('a.png'\): annotator name '_x'"): events_from_table(t, files)
    with pytest.raises(DataError, match=r"^annotations table row 3 \('a.png'\): label '' \(str\)"): events_from_table(t.assign(annotator='w'), files)
    assert [e.label for e in events_from_table(t.assign(annotator='w', label=[1, 2.0, None, '4', ['x', 5], 'y']), files)] == ['1', '2', None, '4', ['x', '5'], 'y']


def test_events_stored_before_the_prediction_fields_read_back(tmp_path):
    "Batches and single events written before `prediction` and `model` existed read back with None; new ones keep them."
    import json, io, pyarrow as pa, pyarrow.parquet as pq
    from neuronb.label.events import EventStore, LabelEvent, item_hash, REQUIRED, _batch_columns, _event_columns
    es = EventStore(tmp_path/'store')
    old = [LabelEvent(item_hash(b'a'), 'alice', 'cat'), LabelEvent(item_hash(b'b'), 'bob', 'dog')]
    cols = {k: v for k, v in _batch_columns(_event_columns(old)).items() if k in REQUIRED + ['labels']}
    table = pa.table({k: pa.array(v, type=pa.float64() if k == 'seconds' else pa.list_(pa.string()) if k == 'labels' else pa.string())
                      for k, v in cols.items()})
    buf = io.BytesIO(); pq.write_table(table, buf)
    es.store.write_bytes('labels/events/_batches/20260101T000000000000Z-0000000000.parquet', buf.getvalue())
    single = {k: getattr(old[0], k) for k in REQUIRED} | {'id': '20260101T000001000000Z-0000000001', 'item': item_hash(b'c')}
    es.store.write_bytes('labels/events/20260101/20260101T000001000000Z-0000000001.json', json.dumps(single).encode())
    es.add(LabelEvent(item_hash(b'd'), 'qa', '7', source='demo', prediction='p-1', model='abc123'))
    df = EventStore(tmp_path/'store').events()
    assert len(df) == 4 and df.prediction.tolist() == [None, None, None, 'p-1'] and df.model.tolist()[-1] == 'abc123'
    with pytest.raises(DataError, match="prediction=5 is not an id"): LabelEvent(item_hash(b'e'), 'qa', '7', prediction=5)
