"""One writer per project, interruption, dead runs and storage checks, through the real command line."""
import json, os, signal, subprocess, sys, time
from pathlib import Path
import psutil, pytest
from neuronb.pipeline.engine import run_pipeline, pipeline_status, toy_project
from neuronb.pipeline.registry import open_registry

NEURONB = str(Path(sys.executable).parent/'neuronb')
ENV = {**os.environ, 'WANDB_MODE': 'disabled'}
# `double` touches ../started, then waits (up to 5 minutes) for ../go before its next cell writes m.txt
WAITING = ("import time, pathlib\npathlib.Path('../started').touch()\nt0 = time.time()\n"
           "while not pathlib.Path('../go').exists() and time.time() - t0 < 300: time.sleep(0.05)")


def cli(*args, **kw):
    return subprocess.run([NEURONB, *map(str, args)], capture_output=True, text=True, env=ENV, timeout=300, **kw)


def until(cond, what, deadline=120):
    "Wait until `cond()` is true, failing after `deadline` seconds."
    end = time.monotonic() + deadline
    while not cond():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.fixture
def waiting_toy(tmp_path):
    "The toy project, whose `double` stage holds a run open until the test creates `go`."
    project = toy_project(tmp_path/'toy')
    nb = json.loads((project.root/'stages/double.ipynb').read_text())
    write = nb['cells'][-1]
    nb['cells'][-1:] = [{**write, 'id': 'wait', 'source': WAITING}, write]
    (project.root/'stages/double.ipynb').write_text(json.dumps(nb))
    procs = []
    def start(*args):
        p = subprocess.Popen([NEURONB, 'run', str(project.root), *args], env=ENV, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, start_new_session=True)
        procs.append(p); return p
    yield project, start
    (project.root/'go').touch()
    for p in procs:
        family = _family(p)
        if p.poll() is None: p.send_signal(signal.SIGKILL)
        p.communicate(timeout=60)
        for q in family:
            try: q.kill()
            except psutil.NoSuchProcess: pass


def _family(p):
    try: return psutil.Process(p.pid).children(recursive=True)
    except psutil.NoSuchProcess: return []


def test_second_writer_refused_naming_the_holder_or_waits(waiting_toy):
    project, start = waiting_toy
    first = start()
    until(lambda: (project.root/'started').exists(), 'the first run to reach double')
    second = cli('run', project.root, '-p', 'double.factor=5')
    assert second.returncode == 1, second
    msg = second.stderr.strip()
    assert len(msg.splitlines()) == 1, msg
    assert f"in use by `neuronb run {project.root}` (pid {first.pid} on {os.uname().nodename}, since" in msg and '--wait' in msg
    commit = cli('data', 'commit', '--dir', project.root, '-m', 'x')
    assert commit.returncode == 1 and 'in use by `neuronb run' in commit.stderr, commit
    queued = start('-p', 'double.factor=5', '--wait')
    line = queued.stdout.readline()
    assert line.startswith('Waiting for `neuronb run'), line
    assert queued.poll() is None
    (project.root/'go').touch()
    assert first.wait(120) == 0 and queued.wait(120) == 0, (first.stderr.read(), queued.stderr.read())
    assert (project.root/'m.txt').read_text() == '15'      # the queued run ran after, with its own parameter
    reg = open_registry(project.registry, project_root=project.root)
    try: runs = reg.runs(project.name)
    finally: reg.close()
    factors = [s['parameters'].get('factor') for r in runs for s in reg_run(project, r['run_id'])['stages'] if s['stage'] == 'double' and not s['skipped']]
    assert sorted(factors) == [2, 5], factors   # two separate runs, each with its own parameters


def reg_run(project, run_id):
    reg = open_registry(project.registry, project_root=project.root)
    try: return reg.run(run_id)
    finally: reg.close()


@pytest.mark.parametrize('sig', [signal.SIGINT, signal.SIGTERM])
def test_interrupt_stops_the_stage_at_once_and_records_nothing(waiting_toy, sig):
    project, start = waiting_toy
    run = start()
    until(lambda: (project.root/'started').exists(), 'double to start')
    family = _family(run)
    assert family, 'the run has no kernel'
    run.send_signal(sig)
    assert run.wait(60) == 130
    err = run.stderr.read()
    assert "interrupted: stopped 'double'; nothing an interrupted stage produced was recorded" in err, err
    assert not (project.root/'m.txt').exists(), 'the cell after the interrupted one ran'
    until(lambda: not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in family), 'the kernels to exit', 30)
    last = reg_run(project, 'latest')
    assert last['status'] == 'interrupted'
    assert {s['stage']: s['status'] for s in last['stages']}['double'] == 'interrupted'
    assert {p.stage: p.state for p in pipeline_status(project)}['double'] == 'failed'
    (project.root/'go').touch()
    assert {o.stage: o.status for o in run_pipeline(project, echo=None).outcomes}['double'] == 'ok'


def test_dead_run_shown_dead_and_its_partial_files_removed(waiting_toy):
    project, start = waiting_toy
    run = start()
    until(lambda: (project.root/'started').exists(), 'double to start')
    family = _family(run)
    folder = next((project.root/'runs').iterdir())
    until(lambda: list(folder.glob('.*.partial.ipynb')), 'the partial notebook')
    run.send_signal(signal.SIGKILL); run.wait(30)
    for p in family: p.kill()
    runs = json.loads(cli('runs', project.root, '--json').stdout)
    assert runs[0]['status'] == 'dead' and runs[0]['info']['pid'] == run.pid
    assert 'dead' in cli('runs', project.root).stdout
    (project.root/'go').touch()
    again = cli('run', project.root)
    assert again.returncode == 0, again
    assert f"Run {folder.name} (pid {run.pid} on {os.uname().nodename}) had died; marked dead, removed" in again.stdout
    assert not list(folder.glob('.*.partial.ipynb')) and not list(folder.glob('.*.kernel.log'))
    assert reg_run(project, folder.name)['status'] == 'dead'


@pytest.mark.parametrize('storage,why', [('a-file', 'which is a file, not a folder'),
                                         ('a-file/data', 'does not exist and cannot be created'),
                                         ('/proc/neuronb-store', 'does not exist and cannot be created')])
def test_unusable_storage_refused_before_any_stage(tmp_path, storage, why):
    project = toy_project(tmp_path/'toy')
    (project.root/'a-file').write_text('not a folder')
    pfile = project.root/'pipeline.yaml'
    pfile.write_text(pfile.read_text().replace('name: toy\n', f'name: toy\nstorage: {storage}\n'))
    out = cli('run', project.root)
    assert out.returncode == 1, out
    msg = out.stderr.strip()
    assert len(msg.splitlines()) == 1 and f"storage: '{storage}'" in msg and why in msg and 'pipeline.yaml' in msg, msg
    assert not (project.root/'n.txt').exists() and not (project.root/'runs').exists(), 'a stage ran'


@pytest.mark.skipif(os.geteuid() == 0, reason='root can write to a read-only folder')
def test_read_only_storage_refused(tmp_path):
    project = toy_project(tmp_path/'toy')
    (project.root/'ro').mkdir(); (project.root/'ro').chmod(0o500)
    pfile = project.root/'pipeline.yaml'
    pfile.write_text(pfile.read_text().replace('name: toy\n', 'name: toy\nstorage: ro\n'))
    out = cli('run', project.root)
    assert out.returncode == 1 and "storage: 'ro'" in out.stderr and 'is not writable' in out.stderr, out
    assert not (project.root/'n.txt').exists()


def test_jobs_must_be_positive(tmp_path):
    project = toy_project(tmp_path/'toy')
    out = cli('run', project.root, '-j', '0')
    assert out.returncode == 1 and '--jobs must be 1 or more' in out.stderr
    assert cli('run', project.root, '-j', '64').returncode == 0   # capped at the 3 stages: no 64 kernels


@pytest.fixture(scope='module')
def digits_project(tmp_path_factory):
    "A fresh digits example project (nothing run)."
    root = tmp_path_factory.mktemp('params')/'digits'
    assert cli('init', root, '--example', 'digits').returncode == 0
    return root


@pytest.mark.parametrize('args, message', [
    (['-p', 'train.epochs=-1'], "parameter 'epochs' of stage 'train' (stages/05_train.ipynb) must be >= 1 (its parameters cell says so), got -1"),
    (['-p', 'train.lr=0'], "must be > 0"),
    (['-p', 'train.resize=crop'], "must be in ['squish', 'pad']"),
    (['-p', 'train.lr=fast'], "got str 'fast'; write a number, e.g. 0.001 or 1e-3"),
    (['--only', 'ingest', '-p', 'train.epochs=0'], "parameter 'epochs' of stage 'train' (stages/05_train.ipynb) must be >= 1"),
    (['--only', 'ingest', '-p', 'train.epoch=2'], "did you mean 'epochs'?"),
])
def test_refused_parameters_run_nothing(digits_project, args, message):
    r = cli('run', digits_project, *args)
    assert r.returncode == 1 and message in r.stderr, r.stderr
    assert r.stderr.count('\n') == 1, r.stderr  # one line, no traceback
    assert not (digits_project/'runs').exists() or not any((digits_project/'runs').iterdir())


def test_pipeline_yaml_mistakes_are_one_line(digits_project, tmp_path):
    text = (digits_project/'pipeline.yaml').read_text()
    try:
        (digits_project/'pipeline.yaml').write_text(text + '\nname: again\n')
        r = cli('status', digits_project)
        first = text.splitlines().index(next(l for l in text.splitlines() if l.startswith('name:'))) + 1
        assert r.returncode == 1 and f"key 'name' appears twice, on lines {first} and {text.count(chr(10)) + 2}" in r.stderr, r.stderr
        (digits_project/'pipeline.yaml').write_text(text + '\nextra: [1, 2\n')
        r = cli('status', digits_project)
        assert r.returncode == 1 and 'is not valid YAML: ' in r.stderr and ', column ' in r.stderr, r.stderr
        assert r.stderr.count('\n') == 1, r.stderr
    finally: (digits_project/'pipeline.yaml').write_text(text)


def test_lock_on_object_storage_is_an_expiring_lease(s3_endpoint, aws_env):
    "On S3 the lock is an object written with exclusive create; a holder elsewhere whose lease ran out is taken over."
    import boto3
    from neuronb.data.storage import open_store
    from neuronb.pipeline.lock import LOCK_PATH, ProjectBusy, ProjectLock
    boto3.client('s3', endpoint_url=s3_endpoint, region_name='us-east-1').create_bucket(Bucket='leases')
    st = open_store('s3://leases/proj', endpoint_url=s3_endpoint)
    said = []
    with ProjectLock(st, 'neuronb run A', echo=lambda *a, **k: said.append(a[0])):
        with pytest.raises(ProjectBusy, match=r'in use by `neuronb run A` \(pid \d+ on '):
            ProjectLock(st, 'neuronb run B').acquire()
    assert not st.exists(LOCK_PATH)
    # a holder on another machine: its pid cannot be checked from here, so only its lease decides
    doc = {'host': 'gpu-box-7', 'pid': 4242, 'command': 'neuronb train', 'since': '2026-12-01T10:00:00.000+00:00', 'token': 'x'}
    st.write_bytes(LOCK_PATH, json.dumps({**doc, 'expires': time.time() + 3600}).encode())
    with pytest.raises(ProjectBusy, match='in use by `neuronb train` .*gpu-box-7'):
        ProjectLock(st, 'neuronb run B').acquire()
    st.write_bytes(LOCK_PATH, json.dumps({**doc, 'expires': time.time() - 1}).encode())
    with ProjectLock(st, 'neuronb run B', echo=lambda *a, **k: said.append(a[0])) as lock:
        assert lock.taken_over['host'] == 'gpu-box-7'
        assert json.loads(st.read_bytes(LOCK_PATH))['command'] == 'neuronb run B'
    assert any('Taking over the project lock of `neuronb train`' in s and 'its lease expired' in s for s in said), said
