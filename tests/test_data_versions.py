"Data versions: faults (exceptions, killed processes, failing filesystems), concurrent commits, bad images, sources and S3 end to end."
import functools, hashlib, http.server, io, json, logging, os, signal, subprocess, sys, textwrap, threading, time
from pathlib import Path
import pytest
from PIL import Image
from fsspec.implementations.local import LocalFileSystem
from neuronb.core import StorageError, DataError
from neuronb.data.storage import open_store, ingest_files, Store, sha256_bytes
from neuronb.data import versions as V
from neuronb.data.versions import add_files, commit, log, diff, checkout, push, pull, gc, verify, resolve, status

os.environ.setdefault('WANDB_MODE', 'disabled')

def png(value, size=8):
    buf = io.BytesIO(); Image.new('L', (size, size), value).save(buf, format='PNG'); return buf.getvalue()

def jpeg(value, size=16):
    buf = io.BytesIO(); Image.new('RGB', (size, size), (value, 0, 0)).save(buf, format='JPEG'); return buf.getvalue()

def make_folder(root, n, start=0, sub=''):
    d = Path(root)/sub; d.mkdir(parents=True, exist_ok=True)
    for i in range(start, start + n): (d/f"f{i:04d}.png").write_bytes(png(i % 256, 8 + i // 256))
    return Path(root)

def tree(folder):
    "{relative name: bytes} of every file under `folder`."
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in Path(folder).rglob('*') if p.is_file()}

def objects_sound(store):
    "Every visible object's content matches the hash in its name (no partial object is visible)."
    bad = [rel for rel in V._object_paths(store) if sha256_bytes(store.read_bytes(rel)) != rel.rsplit('/', 1)[-1].split('.')[0]]
    assert bad == [], bad

def add(store, src, **kw): return add_files(store, src, cache=False, progress=False, **kw)

class Boom(Exception): pass

# --- the basic cycle ---------------------------------------------------------------------------------

def test_cycle_log_diff_checkout(tmp_path):
    src = make_folder(tmp_path/'src', 5)
    st = open_store(tmp_path/'store')
    c1 = commit(st, message='five') if add(st, src).added else None
    (src/'f0001.png').write_bytes(png(201)); (src/'f0002.png').unlink(); (src/'new.png').write_bytes(png(202))
    rep = add(st, src, replace=True)
    assert (rep.added, rep.changed, rep.removed) == (['new.png'], ['f0001.png'], ['f0002.png'])
    assert status(st)['added'] == ['new.png']
    c2 = commit(st, message='edit')
    assert [e['id'] for e in log(st)] == [c2['id'], c1['id']] and c2['parent'] == c1['id']
    assert diff(st, c1['id'][:12], c2['id'][:7]) == {'a': c1['id'][:12], 'b': c2['id'][:12], 'added': ['new.png'],
                                                    'removed': ['f0002.png'], 'changed': ['f0001.png']}
    assert tree(checkout(st, 'latest', tmp_path/'out')) == tree(src)
    assert tree(checkout(st, 'latest~1', tmp_path/'old'))['f0002.png'] == png(2)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith('.')] == []  # the staging folder was renamed away

def test_user_errors_say_what_to_do(tmp_path):
    st = open_store(tmp_path/'store')
    with pytest.raises(DataError, match="nothing to commit in dataset 'raw': add files first"): commit(st)
    add(st, make_folder(tmp_path/'src', 2)); commit(st)
    with pytest.raises(DataError, match=r"has no version 'abcdef' \(recent: .*use an id from `log`"): checkout(st, 'abcdef', tmp_path/'o')
    with pytest.raises(DataError, match="no dataset 'labels' in .*check the name"): log(st, 'labels')
    (tmp_path/'busy').mkdir(); (tmp_path/'busy'/'x').write_text('1')
    with pytest.raises(DataError, match='is not empty; check out into an empty or new folder, or pass force=True'):
        checkout(st, 'latest', tmp_path/'busy')
    with pytest.raises(DataError, match="source .* does not exist; give a folder, a glob"): add(st, tmp_path/'missing')
    with pytest.raises(DataError, match='dataset name .* is not valid'): add(st, tmp_path/'src', dataset='a b')

# --- bad images ----------------------------------------------------------------------------------------

def test_corrupt_and_truncated_images_rejected_and_reported(tmp_path):
    src = tmp_path/'src'; src.mkdir()
    (src/'good.png').write_bytes(png(1)); (src/'good.jpg').write_bytes(jpeg(9))
    (src/'truncated.png').write_bytes(png(7, 64)[:70])
    bad_crc = bytearray(png(5, 32)); bad_crc[40] ^= 0xFF; (src/'corrupt.png').write_bytes(bytes(bad_crc))
    (src/'truncated.jpg').write_bytes(jpeg(3, 64)[:200])
    (src/'random.png').write_bytes(os.urandom(300))
    (src/'empty.jpg').write_bytes(b'')
    (src/'labels.csv').write_text('name,label\n')
    st = open_store(tmp_path/'store')
    rep = add(st, src)
    reasons = dict(rep.rejected)
    assert set(reasons) == {'truncated.png', 'corrupt.png', 'truncated.jpg', 'random.png', 'empty.jpg'}
    assert all(r.startswith(('truncated or corrupt image', 'not an image file PIL can read')) for r in reasons.values())
    assert rep.added == ['good.jpg', 'good.png', 'labels.csv']
    assert 'rejected   truncated.jpg: truncated or corrupt image' in repr(rep) and 'rejected   corrupt.png: ' in repr(rep)
    assert rep.to_frame().query("status == 'rejected'").name.tolist() == sorted(reasons)
    stored = {rel.rsplit('/', 1)[-1].split('.')[0] for rel in V._object_paths(st)}
    assert not {sha256_bytes((src/n).read_bytes()) for n in reasons} & stored  # nothing of them was stored
    assert dict(add_files(st, src, images_only=True, cache=tmp_path/'c.json', progress=False).rejected)['labels.csv'] == 'not an image file PIL can read'
    # a cached verdict is reported again without reading the file
    again = add_files(st, src, cache=tmp_path/'c.json', progress=False)
    assert dict(again.rejected).keys() == reasons.keys()

# --- sources -------------------------------------------------------------------------------------------

def test_sources_glob_memory_and_http(tmp_path):
    src = make_folder(tmp_path/'src', 3, sub='a'); (src/'a'/'x.txt').write_text('t')
    st = open_store(tmp_path/'store')
    assert add(st, f"{src}/a/*.png").added == ['f0000.png', 'f0001.png', 'f0002.png']
    mem = open_store('memory://versions-test-src/in'); mem.write_bytes('deep/m.png', png(77))
    assert add(st, 'memory://versions-test-src/in', into='mem').added == ['mem/deep/m.png']
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(src/'a'))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_port}"
        rep = add(st, [f"{base}/f0000.png", f"{base}/x.txt"], into='web')
        assert rep.duplicates == [('web/f0000.png', 'f0000.png')] and rep.added == ['web/x.txt']
    finally: server.shutdown()
    c = commit(st)
    assert c['n'] == 5 and verify(st)['missing'] == []

def test_unknown_protocol_is_a_clear_error(tmp_path):
    st = open_store(tmp_path/'store')
    with pytest.raises(StorageError, match="unknown storage protocol 'nosuch' in 'nosuch://b/x'; installed protocols: .*s3fs"):
        add(st, 'nosuch://b/x')
    add(st, make_folder(tmp_path/'src', 1)); commit(st)
    with pytest.raises(StorageError, match="unknown storage protocol 'nosuch'"): push(st, 'nosuch://remote/p')
    with pytest.raises(StorageError, match="unknown storage protocol 'nosuch'"): checkout(st, 'latest', 'nosuch://out/p')

# --- faults: exceptions, failing filesystems, killed processes -----------------------------------------

def test_exception_while_publishing_keeps_previous_version(tmp_path, monkeypatch):
    st = open_store(tmp_path/'store')
    c1 = commit(st) if add(st, make_folder(tmp_path/'src', 3)) else None
    add(st, make_folder(tmp_path/'src', 2, start=3))
    monkeypatch.setattr(V, 'create_new', lambda *a: (_ for _ in ()).throw(Boom('network gone')))
    with pytest.raises(Boom): commit(st, message='lost?')
    monkeypatch.undo()
    assert [e['id'] for e in log(st)] == [c1['id']]          # the history did not move
    assert status(st)['added'] == ['f0003.png', 'f0004.png']  # the staged change is still there
    objects_sound(st)
    assert commit(st)['n'] == 5

def test_exception_mid_object_write_leaves_no_partial_object(tmp_path, monkeypatch):
    st = open_store(tmp_path/'store')
    c1 = commit(st) if add(st, make_folder(tmp_path/'src', 2)) else None
    make_folder(tmp_path/'src', 40, start=2)
    real_replace, calls = os.replace, []
    def replace(a, b):
        calls.append(a)
        if len(calls) == 10: raise Boom('killed during rename')
        real_replace(a, b)
    monkeypatch.setattr(V.os, 'replace', replace)
    with pytest.raises(Boom): add(st, tmp_path/'src', workers=1)
    monkeypatch.undo()
    objects_sound(st)
    assert not any('.tmp-' in p.name for p in (tmp_path/'store').rglob('*'))
    assert log(st)[0]['id'] == c1['id'] and status(st)['added'] == []  # nothing was staged
    assert commit(st) if add(st, tmp_path/'src').added else False

class FailingFS(LocalFileSystem):
    "A local filesystem whose writes fail once `limit` bytes have been written through it in total."
    def __init__(self, limit, **kw):
        super().__init__(**kw); self.limit, self.written = limit, 0
    def _open(self, path, mode='rb', **kw):
        f = super()._open(path, mode, **kw)
        if 'r' in mode: return f
        fs, write = self, f.write
        def limited(data):
            room = fs.limit - fs.written
            if len(data) > room:
                write(bytes(data)[:max(room, 0)]); fs.written = fs.limit
                raise OSError(28, f'No space left on device (test double, after {fs.limit} bytes)')
            fs.written += len(data); return write(data)
        f.write = limited
        return f

def test_filesystem_failing_after_n_bytes_leaves_store_consistent(tmp_path):
    root = str(tmp_path/'store')
    good = open_store(root)
    c1 = commit(good, message='base') if add(good, make_folder(tmp_path/'src', 4)) else None
    make_folder(tmp_path/'src', 6, start=4)
    failures = 0
    for limit in range(0, 6000, 150):  # each try fails a little later: objects, the staged change, manifest, commit, ref
        st = Store(FailingFS(limit, skip_instance_cache=True), root)
        try:
            add(st, tmp_path/'src', workers=2); commit(st, message=f'limit {limit}')
            break  # enough room: this attempt went through
        except (OSError, StorageError):
            failures += 1
        objects_sound(good)
        head = log(good)[0]
        assert head['id'] == c1['id'], f"a commit appeared although writing failed (limit {limit})"
        assert tree(checkout(good, head['id'], tmp_path/f'out{limit}')) == {n: b for n, b in tree(tmp_path/'src').items() if n < 'f0004'}
        assert verify(good)['missing'] == [] and verify(good)['corrupt'] == []
    assert failures >= 8 and failures < 40
    c2 = commit(good) if add(good, tmp_path/'src') else None
    assert c2['n'] == 10 and tree(checkout(good, 'latest', tmp_path/'final')) == tree(tmp_path/'src')

WORKER = textwrap.dedent('''
    import sys, time
    from neuronb.data.versions import add_files, commit
    store, src, rounds, into = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    for r in range(rounds):
        add_files(store, f"{src}/r{r}", into=into, cache=False, progress=False)
        c = commit(store, message=f"{into} round {r}")
        print(c['id'], c['created'], flush=True)
''')

def test_two_processes_committing_at_once(tmp_path):
    for k, who in enumerate(('p1', 'p2')):
        for r in range(4): make_folder(tmp_path/who/f"r{r}", 3, start=100 * k + r * 3)  # distinct contents
    store = tmp_path/'store'
    add_files(store, make_folder(tmp_path/'base', 1, start=250), cache=False, progress=False); commit(store)
    procs = [subprocess.Popen([sys.executable, '-c', WORKER, str(store), str(tmp_path/who), '4', who],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for who in ('p1', 'p2')]
    outs = [p.communicate(timeout=50) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    head = resolve(store, 'latest')
    files = V._manifest(open_store(store), head['manifest'])['files']
    assert len(files) == 1 + 2 * 12 and {n.split('/')[0] for n in files} == {'f0250.png', 'p1', 'p2'}
    entries = V._entries(open_store(store), 'raw')
    assert [e['seq'] for e in entries] == list(range(1, len(entries) + 1))
    assert all(e['parent'] == p['id'] for p, e in zip(entries, entries[1:]))  # one linear history, nothing overwritten
    assert V._pending(open_store(store), 'raw') == [] and verify(store)['corrupt'] == []

def test_threads_committing_at_once(tmp_path):
    st = open_store(tmp_path/'store')
    errors = []
    def work(k):
        try:
            for r in range(3):
                (tmp_path/f't{k}').mkdir(exist_ok=True); (tmp_path/f't{k}'/f'{r}.png').write_bytes(png(k * 10 + r))
                add(st, tmp_path/f't{k}'/f'{r}.png', into=f't{k}'); commit(st, message=f't{k} {r}')
        except Exception as e: errors.append(e)
    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads: t.start()
    for t in threads: t.join()
    assert errors == []
    assert resolve(st, 'latest')['n'] == 12

KILLED = textwrap.dedent('''
    import io, os, sys
    from pathlib import Path
    from PIL import Image
    from neuronb.data.versions import add_files, commit
    store, src = sys.argv[1], Path(sys.argv[2])
    for r in range(1000):
        d = src/f"{os.getpid()}-{r}"; d.mkdir(parents=True)
        for i in range(60): Image.frombytes('L', (8, 8), os.urandom(64)).save(d/f"{i}.png")
        print(f"adding {r}", flush=True); add_files(store, d, into=d.name, cache=False, progress=False)
        print(f"committing {r}", flush=True); commit(store, message=f"round {r}")
''')

def test_killed_process_leaves_previous_version_intact(tmp_path):
    store, grew = tmp_path/'store', 0
    # killed as it starts adding, as it starts committing, and a few rounds in: wherever the line says it is
    for i, when in enumerate(('committing 1', 'adding 2', 'committing 3')):
        before = [e['id'] for e in log(store, limit=None)] if (store/'versions').exists() else []
        p = subprocess.Popen([sys.executable, '-c', KILLED, str(store), str(tmp_path/'src')], stdout=subprocess.PIPE, text=True)
        for line in p.stdout:
            if line.strip() == when: break
        p.send_signal(signal.SIGKILL); p.communicate()
        st = open_store(store)
        objects_sound(st)
        if not st.exists('versions'): continue
        after = [e['id'] for e in log(st, limit=None)]
        assert after[len(after) - len(before):] == before  # old versions kept; new ones only ever on top
        grew += len(after) > len(before)
        check = verify(st)
        assert check['missing'] == [] and check['corrupt'] == []
        head = resolve(st, 'latest')
        assert len(tree(checkout(st, head['id'], tmp_path/f'out{i}'))) == head['n']
        assert commit(st)['n'] >= head['n']  # whatever the killed process staged can still be committed
    assert grew >= 2
    assert gc(store, min_age=0)['dry_run'] is True

def test_gc_keeps_everything_referenced(tmp_path):
    st = open_store(tmp_path/'store')
    ingest_files(make_folder(tmp_path/'legacy', 2), st, progress=False)   # the pipeline's own ingest manifest
    add(st, make_folder(tmp_path/'src', 3)); commit(st)
    (tmp_path/'src'/'f0000.png').write_bytes(png(250)); add(st, tmp_path/'src'); commit(st)
    make_folder(tmp_path/'later', 1, start=50); add(st, tmp_path/'later')  # staged, not committed
    junk = st.put_object(b'never referenced', '.bin')
    report = gc(st, dry_run=False, min_age=0)
    assert report['garbage'] == [f"objects/{junk[:2]}/{junk}.bin"] and report['deleted'] == 1
    assert verify(st)['missing'] == []
    assert tree(checkout(st, 'latest~1', tmp_path/'old'))['f0000.png'] == png(0)
    assert commit(st)['n'] == 4
    assert all(st.exists(f"objects/{h[:2]}/{h}.png") for h in st.read_json('manifests/raw.json')['files'].values())

def test_push_refuses_diverged_history(tmp_path):
    a, b = open_store(tmp_path/'a'), open_store(tmp_path/'b')
    add(a, make_folder(tmp_path/'src', 2)); commit(a); pull(b, a)
    (tmp_path/'x.png').write_bytes(png(99)); add(a, tmp_path/'x.png'); commit(a)
    (tmp_path/'y.png').write_bytes(png(98)); add(b, tmp_path/'y.png'); commit(b)
    with pytest.raises(DataError, match="dataset 'raw' has diverged: .* has commits"): push(a, b)

def test_pull_rejects_corrupt_remote_object(tmp_path):
    a = open_store(tmp_path/'a')
    add(a, make_folder(tmp_path/'src', 2)); c = commit(a)
    h = sha256_bytes(png(1)); (tmp_path/'a'/'objects'/h[:2]/f'{h}.png').write_bytes(b'bit rot')
    with pytest.raises(StorageError, match='is corrupt .*nothing of it was copied'): pull(tmp_path/'b', a)
    assert not open_store(tmp_path/'b').exists(f'versions/raw/refs/{c["seq"]:010d}.json')
    assert verify(a)['corrupt'] == [f'objects/{h[:2]}/{h}.png']

# --- S3 through moto's standalone server ---------------------------------------------------------------

# s3_endpoint and aws_env come from conftest.py

def test_s3_push_pull_checkout_end_to_end(s3_endpoint, aws_env, tmp_path):
    import s3fs
    s3fs.S3FileSystem(endpoint_url=s3_endpoint, skip_instance_cache=True).mkdir('versions-e2e')
    src = make_folder(tmp_path/'src', 6, sub='cats'); (src/'bad.png').write_bytes(b'junk')
    local = open_store(tmp_path/'local')
    rep = add(local, src)
    assert len(rep.added) == 6 and [n for n, _ in rep.rejected] == ['bad.png']
    c1 = commit(local, message='six cats')
    remote = f's3://versions-e2e/team'
    moved = push(local, remote, endpoint_url=s3_endpoint)
    assert moved['commits'] == {'raw': 1} and moved['objects'] == 8  # 6 files, a manifest, a commit record
    assert push(local, remote, endpoint_url=s3_endpoint)['objects'] == 0
    fresh = tmp_path/'fresh'
    assert pull(fresh, remote, endpoint_url=s3_endpoint)['commits'] == {'raw': 1}
    assert log(fresh)[0]['id'] == c1['id']
    out = checkout(fresh, c1['id'][:8], tmp_path/'out')
    assert tree(out) == {n: b for n, b in tree(src).items() if n != 'bad.png'}

def test_s3_store_commits_and_reads_s3_sources(s3_endpoint, aws_env, tmp_path):
    import s3fs
    s3fs.S3FileSystem(endpoint_url=s3_endpoint, skip_instance_cache=True).mkdir('versions-direct')
    st = open_store('s3://versions-direct/proj', endpoint_url=s3_endpoint)
    assert V.create_new(st, 'lock/1.json', b'a') is True and V.create_new(st, 'lock/1.json', b'b') is False
    assert st.read_bytes('lock/1.json') == b'a'
    make_folder(tmp_path/'src', 3)
    for p in (tmp_path/'src').iterdir(): st.fs.put_file(str(p), f"versions-direct/incoming/{p.name}")
    rep = add_files(st, 's3://versions-direct/incoming', cache=tmp_path/'c.json', progress=False, endpoint_url=s3_endpoint)
    assert rep.added == ['f0000.png', 'f0001.png', 'f0002.png']
    c = commit(st, message='from s3')
    again = add_files(st, 's3://versions-direct/incoming', cache=tmp_path/'c.json', progress=False, endpoint_url=s3_endpoint)
    assert again.unchanged == 3 and commit(st)['created'] is False  # ETag stamps: nothing read again
    assert tree(checkout(st, 'latest', tmp_path/'out')) == tree(tmp_path/'src') and c['n'] == 3


def test_version_files_names_the_objects_of_a_version(tmp_path):
    from neuronb.data.storage import open_store
    from neuronb.data.versions import add_files, commit, version_files
    (tmp_path/'src').mkdir(); (tmp_path/'src/a.txt').write_text('a')
    store = open_store(tmp_path/'store')
    add_files(store, tmp_path/'src', dataset='docs', progress=False, cache=False); commit(store, 'docs', 'one')
    files = version_files(store, 'latest', 'docs')
    assert list(files) == ['a.txt'] and store.get_object(files['a.txt'], '.txt') == b'a'
