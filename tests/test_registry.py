"""The run registry with real processes: concurrent writers, a killed writer, the SQLAlchemy backend, output formats."""
import json, os, signal, sqlite3, subprocess, sys, textwrap, time
from pathlib import Path

os.environ['WANDB_MODE'] = 'disabled'

import pytest
from neuronb.core import ConfigError
from neuronb.pipeline.registry import (SqlAlchemyBackend, SqliteBackend, format_lineage, format_runs, open_registry,
                                       write_run_index)

H = 'sha256:' + 'ab' * 32


def stage(reg, run_id, name, status='ok', **kw):
    "Record stage `name` of `run_id` with plausible values; `kw` overrides them."
    args = dict(status=status, fingerprint='fp' + name * 8, parameters={'epochs': 2}, inputs={'data/raw': H},
                outputs={f'data/{name}': H}, metrics={}, notebook=f'runs/{run_id}/01_{name}.ipynb',
                html=f'runs/{run_id}/01_{name}.html', started='2026-01-05T09:30:00.000+00:00', duration=1.0)
    reg.record_stage(run_id, name, **{**args, **kw})


def spawn(code, *args):
    "A Python process running `code` with `args` in sys.argv[1:]."
    return subprocess.Popen([sys.executable, '-c', textwrap.dedent(code), *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


WRITER = """
    import sys, time
    from pathlib import Path
    from neuronb.pipeline.registry import open_registry
    db, name, n, tmp = sys.argv[1], sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
    (tmp/f'ready-{name}').touch()
    while not (tmp/'go').exists(): pass  # spin, so both start writing within microseconds of each other
    reg = open_registry(db)                      # both open (and create) the file at the same moment
    reg.start_run('p', 'shared', 'runs/shared')  # both start the same run: the second one resumes it
    for i in range(n):
        kw = dict(fingerprint=f'{name}{i}', parameters={'i': i}, inputs={}, outputs={'out': f'h{i}'}, metrics={'i': i},
                  notebook=None, html=None, started='2026-01-05T09:30:00+00:00', duration=0.0)
        reg.record_stage('shared', f'{name}-{i}', status='running', **kw)
        reg.record_stage('shared', f'{name}-{i}', status='ok', **kw)
    reg.close()
    print('done', name)
"""


def test_two_processes_write_at_once(tmp_path):
    db = tmp_path/'registry.db'  # does not exist yet: creating it is part of the race
    procs = [spawn(WRITER, db, name, 50, tmp_path) for name in 'ab']
    deadline = time.time() + 60
    while not all((tmp_path/f'ready-{n}').exists() for n in 'ab'):
        assert time.time() < deadline, 'writers did not start'
        time.sleep(0.01)
    (tmp_path/'go').touch()
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    with open_registry(db) as reg:
        run = reg.run('shared')
    names = sorted(s['stage'] for s in run['stages'])
    assert names == sorted([f'{n}-{i}' for n in 'ab' for i in range(50)])
    assert {s['status'] for s in run['stages']} == {'ok'}
    assert sorted(s['seq'] for s in run['stages']) == list(range(1, 101))  # each row got its own place in the order
    assert (run['ran'], run['reused'], run['failed']) == (100, 0, 0)
    con = sqlite3.connect(db)
    assert con.execute('PRAGMA integrity_check').fetchone()[0] == 'ok'
    assert con.execute('PRAGMA journal_mode').fetchone()[0] == 'wal'


def test_running_then_final_status_updates_the_row(tmp_path):
    with open_registry(tmp_path/'r.db') as reg:
        reg.start_run('p', 'r1', 'runs/r1')
        stage(reg, 'r1', 'prepare')
        stage(reg, 'r1', 'train', 'running', notebook=None, html=None, metrics={})
        run = reg.run('r1')
        assert [(s['stage'], s['status']) for s in run['stages']] == [('prepare', 'ok'), ('train', 'running')]
        assert reg.last_ok('p', 'train') is None  # a running stage is not a result
        stage(reg, 'r1', 'train', 'timeout', error={'message': 'cell 4 ran past 60 s'}, duration=60.5)
        run = reg.run('r1')
        assert [(s['stage'], s['status'], s['seq']) for s in run['stages']] == [('prepare', 'ok', 1), ('train', 'timeout', 2)]
        assert run['stages'][1]['error'] == {'message': 'cell 4 ran past 60 s'} and run['stages'][1]['duration'] == 60.5
        assert run['status'] == 'running'  # until finish_run says otherwise
        reg.finish_run('r1', 'failed')
        assert reg.run('r1')['status'] == 'failed' and reg.run('r1')['finished'] is not None


def test_last_ok_skips_reused_and_failed_rows(tmp_path):
    with open_registry(tmp_path/'r.db') as reg:
        reg.start_run('p', 'r1', 'runs/r1'); stage(reg, 'r1', 'train', fingerprint='one', started='2026-01-05T09:00:00+00:00')
        reg.start_run('p', 'r2', 'runs/r2'); stage(reg, 'r2', 'train', 'ok', skipped=True, reused_from='r1',
                                                     started='2026-01-05T10:00:00+00:00')
        reg.start_run('p', 'r3', 'runs/r3'); stage(reg, 'r3', 'train', 'error', started='2026-01-05T11:00:00+00:00')
        reg.start_run('q', 'r4', 'runs/r4'); stage(reg, 'r4', 'train', started='2026-01-05T12:00:00+00:00')  # another project
        ok = reg.last_ok('p', 'train')
        assert (ok['run_id'], ok['fingerprint'], ok['outputs']) == ('r1', 'one', {'data/train': H})
        assert [h['run_id'] for h in reg.stage_history('p', 'train')] == ['r3', 'r2', 'r1']


KILLED_IN_TRANSACTION = """
    import sys, time
    from neuronb.pipeline.registry import open_registry
    reg = open_registry(sys.argv[1])
    reg.start_run('p', 'victim', 'runs/victim')
    for i in range(10**6):
        reg.record_stage('victim', f's{i}', status='running', fingerprint=None, parameters={}, inputs={}, outputs={},
                         metrics={}, notebook=None, html=None, started='2026-01-05T09:30:00+00:00', duration=0.0)
        if i == 20:  # hold the write lock with an uncommitted row, then wait to be killed
            with reg.backend.transaction(write=True) as tx:
                tx.exec("UPDATE neuronb_runs SET status = 'ok' WHERE run_id = 'victim'")
                print('in transaction', flush=True)
                time.sleep(120)
"""


def test_killed_writer_leaves_the_registry_readable(tmp_path):
    db = tmp_path/'r.db'
    p = spawn(KILLED_IN_TRANSACTION, db)
    try: assert p.stdout.readline().strip() == 'in transaction', p.stderr.read()
    finally: os.kill(p.pid, signal.SIGKILL); p.wait()
    assert p.returncode == -signal.SIGKILL
    con = sqlite3.connect(db)
    assert con.execute('PRAGMA integrity_check').fetchone()[0] == 'ok'
    con.close()
    with open_registry(db) as reg:
        run = reg.run('victim')
        assert run['status'] == 'dead'  # the uncommitted 'ok' is gone, and its process with it: shown dead, not running
        assert len(run['stages']) == 21 and {s['status'] for s in run['stages']} == {'running'}
        reg.backend.busy_timeout = 1
        t = time.time()
        stage(reg, 'victim', 's0', 'dead')  # the lock died with the process: writing does not wait
        reg.finish_run('victim', 'interrupted')
        assert time.time() - t < 1
        assert reg.run('victim')['status'] == 'interrupted'


def test_sqlalchemy_backend_on_a_sqlite_url(tmp_path):
    pytest.importorskip('sqlalchemy')
    with open_registry('sqlite+pysqlite:///reg.db', project_root=tmp_path) as reg:  # relative to the project folder
        assert isinstance(reg.backend, SqlAlchemyBackend)
        reg.start_run('p', '20260105-093000-a1b2', 'runs/x', argv=['neuronb', 'run'])
        stage(reg, '20260105-093000-a1b2', 'train', 'running')
        stage(reg, '20260105-093000-a1b2', 'train', metrics={'acc': 0.5})
        reg.finish_run('20260105-093000-a1b2', 'ok')
        run = reg.run('20260105-0930')
        assert [(s['stage'], s['status'], s['metrics']) for s in run['stages']] == [('train', 'ok', {'acc': 0.5})]
        assert reg.last_ok('p', 'train')['run_id'] == '20260105-093000-a1b2'
        assert reg.runs('p')[0]['metrics'] == {'acc': 0.5}
        with pytest.raises(ConfigError, match='no run'): reg.run('zzz')
    with open_registry(tmp_path/'reg.db') as reg:  # the same file, read through sqlite3
        assert isinstance(reg.backend, SqliteBackend)
        assert reg.run('latest')['argv'] == ['neuronb', 'run']


def test_sqlalchemy_missing_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, 'sqlalchemy', None)  # as if it were not installed
    with pytest.raises(ConfigError, match=r'postgresql://u:\*\*\*@db/x needs SQLAlchemy.*pip install sqlalchemy'):
        open_registry('postgresql://u:secret@db/x')


def test_missing_driver_and_bad_urls(tmp_path):
    pytest.importorskip('sqlalchemy')
    try: import psycopg2  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match=r"driver 'psycopg2'.*pip install psycopg2-binary") as e:
            open_registry('postgresql+psycopg2://u:secret@db/x')
        assert 'secret' not in str(e.value)
    with pytest.raises(ConfigError, match="does not know \\('nosuch'\\)"): open_registry('nosuch://db/x')


def test_open_refusals(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match='no pipeline.yaml'): open_registry()
    (tmp_path/'pipeline.yaml').write_text('name: p\n')
    with open_registry() as reg: assert reg.where == str(tmp_path/'.neuronb'/'registry.db')
    (tmp_path/'junk.db').write_bytes(os.urandom(4096))
    with pytest.raises(ConfigError, match='is not a usable registry'): open_registry('junk.db', project_root=tmp_path)
    with open_registry(tmp_path/'r.db') as reg:
        with pytest.raises(ConfigError, match='call start_run before'): stage(reg, 'nope', 'train')
        with pytest.raises(ConfigError, match="no run 'x' in the registry .*no run is recorded yet"): reg.run('x')


def example_registry(url):
    "Two runs of project `digits` at `url`: the first ran both stages, the second reused `prepare` and failed in `train`."
    reg = open_registry(url)
    reg.start_run('digits', '20260105-093000-a1b2', 'runs/20260105-093000-a1b2', argv=['neuronb', 'run'],
                  info={'git': 'abc1234'})
    stage(reg, '20260105-093000-a1b2', 'prepare', notebook='runs/20260105-093000-a1b2/01_prepare.ipynb',
          html='runs/20260105-093000-a1b2/01_prepare.html')
    stage(reg, '20260105-093000-a1b2', 'train', parameters={'epochs': 3, 'lr': 0.01}, duration=75.0,
          metrics={'test_accuracy': 0.97345, '<b>odd</b>': 1}, notebook='runs/20260105-093000-a1b2/02_train.ipynb',
          html='runs/20260105-093000-a1b2/02_train.html', outputs={'models/digits': 'sha256:' + 'cd' * 32})
    reg.finish_run('20260105-093000-a1b2', 'ok')
    reg.start_run('digits', '20260105-094500-c3d4', 'runs/20260105-094500-c3d4', argv=['neuronb', 'run', '-p', 'train.lr=5'])
    stage(reg, '20260105-094500-c3d4', 'prepare', 'skipped', skipped=True, reused_from='20260105-093000-a1b2',
          notebook=None, html=None)
    stage(reg, '20260105-094500-c3d4', 'train', 'error', parameters={'epochs': 3, 'lr': 5.0},
          error={'message': 'cell 3 raised ValueError: loss is nan'}, notebook='runs/20260105-094500-c3d4/02_train.ipynb',
          html='runs/20260105-094500-c3d4/02_train.html')
    reg.finish_run('20260105-094500-c3d4', 'failed')
    return reg


def test_format_runs(tmp_path):
    with example_registry(tmp_path/'r.db') as reg: lines = format_runs(reg.runs('digits')).splitlines()
    assert lines[0].split() == ['run', 'started', '(UTC)', 'status', 'time', 'ran/reused/failed', 'metrics']
    assert set(lines[1]) == {'-'}
    assert lines[2].startswith('20260105-094500-c3d4') and ' failed ' in lines[2] and ' 1/1/1' in lines[2]
    assert lines[3].startswith('20260105-093000-a1b2') and ' ok ' in lines[3] and ' 2/0/0' in lines[3]
    assert 'test_accuracy=0.9735' in lines[3]
    assert len(lines) == 4


def test_format_lineage(tmp_path):
    with example_registry(tmp_path/'r.db') as reg:
        text = format_lineage(reg.run('20260105-0945'))
        first = format_lineage(reg.run('20260105-0930'))
    assert text.startswith('run 20260105-094500-c3d4  project digits  failed')
    assert 'command  neuronb run -p train.lr=5' in text
    assert '1. prepare  skipped' in text and '(reused from run 20260105-093000-a1b2)' in text
    assert 'notebook    runs/20260105-093000-a1b2/01_prepare.ipynb' in text  # the producing run's notebook
    assert f"fingerprint {('fp' + 'train' * 8)[:12]}" in text
    assert 'data/raw  abababababab' in text and 'lr=5' in text and 'cell 3 raised ValueError: loss is nan' in text
    assert 'models/digits  sha256:' + 'cd' * 32 in first and 'test_accuracy=0.9735' in first
    assert 'code     neuronb ' in first and 'git abc1234' in first


def test_write_run_index(tmp_path):
    runs = tmp_path/'runs'
    for rid, names in [('20260105-093000-a1b2', ['01_prepare.ipynb', '01_prepare.html', '02_train.ipynb', '02_train.html']),
                       ('20260105-094500-c3d4', ['02_train.ipynb', '02_train.html'])]:
        (runs/rid).mkdir(parents=True)
        for n in names: (runs/rid/n).write_text('{}')
    with example_registry(tmp_path/'r.db') as reg:
        path = write_run_index(reg.run('20260105-094500-c3d4'), runs/'20260105-094500-c3d4')
        first = write_run_index(reg.run('20260105-093000-a1b2'), runs/'20260105-093000-a1b2').read_text()
    page = path.read_text()
    assert path == runs/'20260105-094500-c3d4'/'index.html'
    assert not list(path.parent.glob('.*'))  # written through a temporary file, nothing left behind
    assert '<title>digits run 20260105-094500-c3d4</title>' in page
    assert 'href="../20260105-093000-a1b2/01_prepare.html"' in page and 'href="../20260105-093000-a1b2/01_prepare.ipynb"' in page
    assert 'href="02_train.html"' in page and 'href="02_train.ipynb"' in page
    assert 'loss is nan' in page and 'lr=5' in page and 'reused from' in page
    for link in [l.split('"')[0] for l in page.split('href="')[1:]]:
        assert (path.parent/link).is_file(), f'dead link {link}'
    assert '&lt;b&gt;odd&lt;/b&gt;=1' in first and '<b>odd</b>' not in first  # recorded names are escaped
    assert 'test_accuracy=0.9735' in first and '1m15s' in first


IMPORT_COST = """
    import json, sys, time
    t = time.perf_counter()
    from neuronb.pipeline.registry import open_registry
    reg = open_registry(sys.argv[1])
    reg.start_run('p', 'r1', 'runs/r1'); reg.last_ok('p', 'train'); reg.runs('p'); reg.close()
    heavy = sorted(m for m in ('sqlalchemy', 'papermill', 'nbformat', 'yaml', 'torch', 'fastai', 'pandas') if m in sys.modules)
    print(json.dumps({'seconds': time.perf_counter() - t, 'heavy': heavy}))
"""


def test_import_and_open_stay_cheap(tmp_path):
    p = spawn(IMPORT_COST, tmp_path/'r.db')
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    got = json.loads(out)
    assert got['heavy'] == [], f"importing the registry pulled in {got['heavy']}"
    assert got['seconds'] < 0.25, f"import + open + 3 queries took {got['seconds']:.3f} s"


# --- a shared registry on a real PostgreSQL server (the `postgres_url` fixture starts one of the tests' own)

def test_postgres_two_processes_write_at_once(postgres_url, tmp_path):
    "Two processes create the tables, start the same run and record 100 stage rows at the same moment: all there, in order."
    procs = [spawn(WRITER, postgres_url, name, 50, tmp_path) for name in 'ab']
    deadline = time.time() + 60
    while not all((tmp_path/f'ready-{n}').exists() for n in 'ab'):
        assert time.time() < deadline, 'writers did not start'
        time.sleep(0.01)
    (tmp_path/'go').touch()
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    with open_registry(postgres_url) as reg:
        assert isinstance(reg.backend, SqlAlchemyBackend) and reg.backend.engine.dialect.name == 'postgresql'
        run = reg.run('shared')
        assert sorted(s['stage'] for s in run['stages']) == sorted(f'{n}-{i}' for n in 'ab' for i in range(50))
        assert {s['status'] for s in run['stages']} == {'ok'}
        assert sorted(s['seq'] for s in run['stages']) == list(range(1, 101))  # no two rows took the same place
        assert (run['ran'], run['reused'], run['failed']) == (100, 0, 0)
        assert [s['metrics'] for s in run['stages'] if s['stage'] == 'b-7'] == [{'i': 7}]
        with reg.backend.transaction() as tx:
            assert tx.rows('SELECT version FROM neuronb_schema') == [{'version': 1}]  # created once


def _comparable(run:dict) -> dict:
    "A run record without what depends on when it was recorded."
    clock = ('started', 'finished', 'duration', 'recorded')
    return {**{k: v for k, v in run.items() if k not in clock}, 'stages': [{k: v for k, v in s.items() if k not in clock or k == 'duration'}
                                                                         for s in run['stages']]}


def test_postgres_registry_reads_back_what_sqlite_does(postgres_url, tmp_path):
    "The same runs recorded in SQLite and in PostgreSQL read back alike: values, types, order, lookups, formatting."
    with example_registry(tmp_path/'r.db') as lite, example_registry(postgres_url) as pg:
        for run_id in ('20260105-093000-a1b2', '20260105-0945', 'latest'):
            assert _comparable(pg.run(run_id)) == _comparable(lite.run(run_id))
        assert [_comparable({**r, 'stages': []}) for r in pg.runs('digits')] == [_comparable({**r, 'stages': []}) for r in lite.runs('digits')]
        assert pg.last_ok('digits', 'train')['run_id'] == '20260105-093000-a1b2'
        assert [h['status'] for h in pg.stage_history('digits', 'train')] == ['error', 'ok']  # newest first: same started, later recorded
        assert 'loss is nan' in format_lineage(pg.run('20260105-0945')) and len(format_runs(pg.runs('digits')).splitlines()) == 4
        with pytest.raises(ConfigError, match="no run 'zzz' in the registry postgresql"): pg.run('zzz')
        with pytest.raises(ConfigError, match="run id 20260105-093000-a1b2 already belongs to project 'digits'"):
            pg.start_run('other', '20260105-093000-a1b2', 'runs/x')


def test_postgres_newer_schema_is_refused(postgres_url):
    with open_registry(postgres_url) as reg:
        with reg.backend.transaction(write=True) as tx: tx.exec('UPDATE neuronb_schema SET version = 99')
    with pytest.raises(ConfigError, match=r'has schema version 99, newer than this neuronb knows \(1\); upgrade neuronb'):
        open_registry(postgres_url)


def test_postgres_server_not_running_says_so(tmp_path):
    "A URL whose server is not there: one message naming the registry (password masked) and what to check, at once."
    pytest.importorskip('psycopg')
    t0 = time.time()
    with pytest.raises(ConfigError) as e: open_registry(f'postgresql+psycopg://u:secret@/db?host={tmp_path}')
    msg = str(e.value)
    assert 'cannot reach the registry postgresql+psycopg://u:***@/db' in msg and 'check the database is running' in msg, msg
    assert 'secret' not in msg and time.time() - t0 < 10
