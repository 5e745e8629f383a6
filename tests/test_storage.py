"Storage faults, ingest of bad files, object-store round trips (moto's S3 server on loopback) and crowd-table errors."
import io, logging, os
from pathlib import Path
import pytest
from PIL import Image
from neuronb.core import StorageError, DataError
from neuronb.data.storage import open_store, ingest_files, sha256_bytes, Store, NotInStore
from neuronb.label.crowd import read_crowd_table

os.environ.setdefault('WANDB_MODE', 'disabled')

def png(value, size=8):
    buf = io.BytesIO(); Image.new('L', (size, size), value).save(buf, format='PNG'); return buf.getvalue()

class Boom(Exception): pass

# --- atomic writes -------------------------------------------------------------------------------------

def test_failed_rename_leaves_previous_content(tmp_path, monkeypatch):
    st = open_store(tmp_path)
    st.write_bytes('d/model.bin', b'old')
    def mv(*a, **k):
        assert [p.name for p in (tmp_path/'d').iterdir() if p.name != 'model.bin'], 'temp file should exist by now'
        raise Boom('crash before rename')
    monkeypatch.setattr(st.fs, 'mv', mv)
    with pytest.raises(Boom): st.write_bytes('d/model.bin', b'new content')
    assert (tmp_path/'d/model.bin').read_bytes() == b'old'
    assert sorted(p.name for p in (tmp_path/'d').iterdir()) == ['model.bin']  # the temporary file is gone

def test_failure_mid_write_leaves_no_partial_file(tmp_path, monkeypatch):
    st = open_store(tmp_path)
    real_open = st.fs.open
    class Half:
        def __init__(self, f): self.f = f
        def __enter__(self): return self
        def __exit__(self, *a): self.f.close()
        def write(self, data): self.f.write(data[:len(data)//2]); raise Boom('disk full')
    monkeypatch.setattr(st.fs, 'open', lambda path, mode='rb', **kw: Half(real_open(path, mode, **kw)) if 'w' in mode else real_open(path, mode, **kw))
    with pytest.raises(Boom): st.write_bytes('new.json', b'{"a": 1}')
    assert not st.exists('new.json') and os.listdir(tmp_path) == []
    assert st.listdir('') == []

def test_listdir_hides_leftover_temp_files(tmp_path):
    st = open_store(tmp_path)
    st.write_bytes('a.txt', b'1')
    (tmp_path/'.a.txt.tmp-deadbeef').write_bytes(b'half')  # what a killed process could leave
    assert st.listdir('') == ['a.txt']

def test_paths_stay_inside_the_store(tmp_path):
    st = open_store(tmp_path)
    with pytest.raises(StorageError, match="climbs out"): st.write_bytes('../escape.txt', b'x')
    with pytest.raises(NotInStore, match='is not in the store'): st.read_bytes('missing.txt')
    with pytest.raises(FileNotFoundError): st.read_json('missing.json')

def test_relative_url_resolves_against_base(tmp_path):
    st = open_store('data/store', base=tmp_path)
    st.write_json('m.json', {'a': 1})
    assert (tmp_path/'data/store/m.json').exists() and st.url.startswith('file://')

# --- objects and ingest --------------------------------------------------------------------------------

def test_put_object_dedupes(tmp_path, monkeypatch):
    st = open_store(tmp_path)
    h = st.put_object(b'content', '.png')
    assert h == sha256_bytes(b'content') and (tmp_path/'objects'/h[:2]/f'{h}.png').read_bytes() == b'content'
    writes = []
    monkeypatch.setattr(Store, 'write_bytes', lambda self, *a: writes.append(a))
    assert st.put_object(b'content', '.png') == h
    assert writes == []
    assert st.get_object(h, '.png') == b'content'

def test_ingest_reports_duplicates_and_rejects(tmp_path):
    src = tmp_path/'raw'; src.mkdir()
    for i in range(3): (src/f'ok_{i}.png').write_bytes(png(40 * i))
    (src/'ok_0_copy.png').write_bytes(png(0))              # same content as ok_0.png
    (src/'truncated.png').write_bytes(png(7, 64)[:70])
    (src/'readme.txt').write_text('not an image')
    (src/'empty.png').write_bytes(b'')
    st = open_store(tmp_path/'store')
    rep = ingest_files(src, st, pattern='*', progress=False)
    assert (rep.added, rep.stored) == (3, 0)
    assert rep.duplicates == [('ok_0_copy.png', sha256_bytes(png(0)))]
    reasons = dict(rep.rejected)
    assert set(reasons) == {'truncated.png', 'readme.txt', 'empty.png'}
    assert reasons['readme.txt'] == 'not an image file PIL can read'
    assert reasons['truncated.png'].startswith('truncated or corrupt image')
    manifest = st.read_json('manifests/raw.json')
    assert manifest['files'] == {f'ok_{i}.png': sha256_bytes(png(40 * i)) for i in range(3)} and manifest['n'] == 3
    assert manifest['rejected'] == reasons and 'ok_0_copy.png' in manifest['duplicates']
    frame = rep.to_frame()
    assert frame.status.value_counts().to_dict() == {'new': 3, 'rejected': 3, 'duplicate': 1}
    assert 'same content as ok_0.png' in repr(rep)

def test_ingest_with_progress_bar(tmp_path):
    src = tmp_path/'raw'; src.mkdir()
    (src/'a.png').write_bytes(png(1))
    rep = ingest_files(src, tmp_path/'store', progress=True, manifest='first')
    assert rep.added == 1 and open_store(tmp_path/'store').exists('manifests/first.json')

def test_ingest_missing_folder(tmp_path):
    with pytest.raises(DataError, match='does not exist'): ingest_files(tmp_path/'nope', tmp_path/'store')

# --- protocols -----------------------------------------------------------------------------------------

def test_unknown_protocol_message():
    with pytest.raises(StorageError) as e: open_store('nosuch://bucket/x')
    msg = str(e.value)
    assert "unknown storage protocol 'nosuch'" in msg and 'memory' in msg and 's3fs' in msg

def test_memory_store_roundtrip():
    st = open_store('memory://test-storage/proj')
    st.write_json('a/b.json', [1, 2])
    assert st.read_json('a/b.json') == [1, 2] and st.listdir('a') == ['b.json']

# --- S3 through moto's standalone server ---------------------------------------------------------------

# s3_endpoint and aws_env come from conftest.py

def make_bucket(endpoint, name):
    import s3fs
    s3fs.S3FileSystem(endpoint_url=endpoint, skip_instance_cache=True).mkdir(name)

def test_s3_roundtrip(s3_endpoint, aws_env, tmp_path):
    make_bucket(s3_endpoint, 'bucket')
    st = open_store('s3://bucket/proj', endpoint_url=s3_endpoint)
    assert st.is_object_store and st.url == 's3://bucket/proj'
    st.write_bytes('a/x.bin', b'one'); st.write_bytes('a/x.bin', b'two')
    assert st.read_bytes('a/x.bin') == b'two' and st.listdir('a') == ['x.bin']
    st.write_json('m.json', {'k': 1}); assert st.read_json('m.json') == {'k': 1}
    h = st.put_object(b'obj', '.png'); assert st.get_object(h, '.png') == b'obj' and st.exists(f'objects/{h[:2]}/{h}.png')
    with pytest.raises(NotInStore): st.read_bytes('nothing')
    src = tmp_path/'raw'; src.mkdir()
    (src/'a.png').write_bytes(png(3)); (src/'b.png').write_bytes(png(3)); (src/'c.png').write_bytes(b'junk')
    rep = ingest_files(src, st, progress=False)
    assert (rep.added, len(rep.duplicates), len(rep.rejected)) == (1, 1, 1)
    assert st.read_json('manifests/raw.json')['files'] == {'a.png': sha256_bytes(png(3))}

def test_s3_failed_put_keeps_previous_object(s3_endpoint, aws_env, monkeypatch):
    make_bucket(s3_endpoint, 'atomic')
    st = open_store('s3://atomic/p', endpoint_url=s3_endpoint)
    st.write_bytes('k', b'old')
    monkeypatch.setattr(st.fs, 'pipe_file', lambda *a, **k: (_ for _ in ()).throw(Boom('connection reset')))
    with pytest.raises(Boom): st.write_bytes('k', b'new')
    monkeypatch.undo()
    assert st.read_bytes('k') == b'old'

def test_s3_endpoint_from_env(s3_endpoint, aws_env):
    make_bucket(s3_endpoint, 'envbucket')
    aws_env.setenv('AWS_ENDPOINT_URL_S3', s3_endpoint)  # botocore reads it: no storage option needed
    st = open_store('s3://envbucket/p', skip_instance_cache=True)
    st.write_bytes('x', b'1'); assert st.read_bytes('x') == b'1'

def test_s3_missing_bucket_message(s3_endpoint, aws_env):
    with pytest.raises(StorageError, match="bucket 'no-such-bucket' of 's3://no-such-bucket/p' does not exist; create it first"):
        open_store('s3://no-such-bucket/p', endpoint_url=s3_endpoint)

def test_s3_missing_credentials_message(s3_endpoint, aws_env):
    aws_env.delenv('AWS_ACCESS_KEY_ID'); aws_env.delenv('AWS_SECRET_ACCESS_KEY')
    with pytest.raises(StorageError, match='no credentials for .*AWS_ACCESS_KEY_ID'):
        open_store('s3://bucket/p', endpoint_url=s3_endpoint, skip_instance_cache=True)

# --- crowd tables --------------------------------------------------------------------------------------

def test_crowd_table_missing_column(tmp_path):
    p = tmp_path/'crowd.csv'; p.write_text('image,worker,label\na.png,w1,3\n')
    with pytest.raises(DataError, match=r'crowd\.csv has no column task \(found: image, worker, label\); rename'):
        read_crowd_table(p)

def test_crowd_table_bad_label_names_file_and_row(tmp_path):
    p = tmp_path/'crowd.csv'; p.write_text('task,worker,label\na.png,w1,3\nb.png,w2,3\nc.png,w3,cat\n')
    with pytest.raises(DataError, match=r"crowd\.csv, row 4: label 'cat' is not a whole number.*fix or delete that row"):
        read_crowd_table(p)
    p.write_text('task,worker,label\na.png,w1,2.5\n')
    with pytest.raises(DataError, match="row 2: label '2.5'"): read_crowd_table(p)
    p.write_text('task,worker,label\na.png,w1,\n')
    with pytest.raises(DataError, match="row 2: label ''"): read_crowd_table(p)

def test_crowd_table_empty_and_missing(tmp_path):
    p = tmp_path/'crowd.csv'; p.write_text('')
    with pytest.raises(DataError, match='is empty'): read_crowd_table(p)
    with pytest.raises(DataError, match='does not exist'): read_crowd_table(tmp_path/'nope.csv')

def test_crowd_table_toloka_tsv(tmp_path):
    p = tmp_path/'assignments.tsv'
    p.write_text('INPUT:image\tOUTPUT:label\tASSIGNMENT:worker_id\tASSIGNMENT:status\na.png\t4\tw1\tACCEPTED\na.png\t9\tw2\tACCEPTED\n')
    df = read_crowd_table(p)
    assert df.columns.tolist() == ['task', 'worker', 'label'] and df.label.tolist() == [4, 9]
