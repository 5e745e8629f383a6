"""The stage runner end to end: every refusal and every way a stage can fail, in real kernels."""
import json, os, signal, subprocess, sys, threading, time, uuid
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from types import SimpleNamespace

os.environ['WANDB_MODE'] = 'disabled'  # before any kernel starts: kernels inherit it

import pytest
from neuronb.core import NotebookError, ParameterError, StageFailed, recorded_metrics
from neuronb.pipeline.kernels import KernelPool, is_alive, stop_kernel
from neuronb.pipeline.runner import StageResult, _kernel, notebook_parameters, run_notebook, validate_parameters

INJECTION = "x=__import__('os').getpid();y"


def make_nb(path, *cells):
    "A notebook of code `cells` at `path`; a `(source, tags)` tuple gives a cell tags."
    cs = []
    for i, c in enumerate(cells):
        src, tags = c if isinstance(c, tuple) else (c, [])
        cs.append({'cell_type': 'code', 'id': f'c{i}', 'execution_count': None, 'metadata': {'tags': tags},
                   'outputs': [], 'source': src})
    nb = {'cells': cs, 'metadata': {'kernelspec': {'name': 'python3', 'display_name': 'Python 3', 'language': 'python'}},
          'nbformat': 4, 'nbformat_minor': 5}
    Path(path).write_text(json.dumps(nb))
    return Path(path)


def params(src="epochs = 3\nlr = 0.5\nname = 'digits'"): return (src, ['parameters'])


def listing(folder): return sorted(str(p.relative_to(folder)) for p in Path(folder).rglob('*'))


def cell_text(nb, i): return ''.join(nb['cells'][i]['source'])


def assert_clean_failure(res, out):
    "A failed stage still leaves its notebook, HTML copy and status file, and no partial file."
    assert res.notebook == out and out.exists()
    assert res.html == out.with_suffix('.html') and res.html.exists() and res.html.stat().st_size > 1000
    assert not list(out.parent.glob('.*')), 'a partial or temporary file was left behind'
    doc = json.loads(res.status_path.read_text())
    assert doc['status'] == res.status and doc['error'] == res.error
    return doc


def kernel_children():
    "Live ipykernel processes whose parent is this process."
    out = []
    for p in Path('/proc').iterdir():
        try:
            state, ppid = (p/'stat').read_text().rsplit(')', 1)[1].split()[:2]
            if state != 'Z' and int(ppid) == os.getpid() and b'ipykernel' in (p/'cmdline').read_bytes(): out.append(int(p.name))
        except (OSError, ValueError): pass
    return sorted(out)


def processes_with(marker):
    "Live processes whose environment holds `marker` (how a test finds the kernels a child process started)."
    out = []
    for p in Path('/proc').iterdir():
        try:
            if marker.encode() in (p/'environ').read_bytes() and (p/'stat').read_text().rsplit(')', 1)[1].split()[0] != 'Z': out.append(int(p.name))
        except (OSError, ValueError): pass
    return out


@pytest.fixture(params=['fresh', 'pool'])
def run(request, tmp_path):
    "`run_notebook`, on a fresh kernel per stage or on kernels a pool started ahead in the stages' folder."
    if request.param == 'fresh':
        yield run_notebook
        assert kernel_children() == []
        return
    with KernelPool(size=1, cwd=tmp_path) as pool:
        yield partial(run_notebook, pool=pool)
    assert kernel_children() == [], 'a kernel was left running'


@pytest.fixture
def stage(tmp_path):
    "A small ok stage that records metrics and reports where and how its kernel ran."
    return make_nb(tmp_path/'stage.ipynb',
                   "import os, sys\nimport neuronb\nfrom neuronb.core import record",
                   params(),
                   "record('score', epochs * lr)\nrecord('name', name)\n"
                   "record('cwd', os.getcwd())\nrecord('python', sys.executable)\nrecord('neuronb', neuronb.__file__)\n"
                   "record('wandb_mode', os.environ.get('WANDB_MODE'))\nrecord('lr_type', type(lr).__name__)")


# --- refusals: nothing runs, nothing is written --------------------------------------------------

def test_unknown_parameter(stage, tmp_path):
    with pytest.raises(ParameterError, match=r"unknown parameter 'epoch' .*did you mean 'epochs'\? valid parameters: epochs, lr, name"):
        run_notebook(stage, tmp_path/'runs'/'out.ipynb', {'epoch': 5})
    assert not (tmp_path/'runs').exists()


def test_bad_name_is_refused_before_any_kernel(tmp_path):
    nb = make_nb(tmp_path/'inj.ipynb', "open('kernel_ran.txt', 'w').write('yes')", params("x = 1\ny = 2"))
    before = listing(tmp_path)
    with pytest.raises(ParameterError) as e: run_notebook(nb, tmp_path/'runs'/'out.ipynb', {INJECTION: 1})
    assert INJECTION in str(e.value) and 'not a valid Python name' in str(e.value)
    assert not (tmp_path/'kernel_ran.txt').exists(), 'a kernel ran'
    assert listing(tmp_path) == before, 'something was written'
    with pytest.raises(ParameterError, match="'lambda' is a Python keyword"): validate_parameters({'lambda': 1}, {'x': 1}, 'nb')


def test_wrong_type(stage, tmp_path):
    with pytest.raises(ParameterError, match=r"parameter 'epochs' of .*stage.ipynb must be a int like its default 3, got str '5'"):
        run_notebook(stage, tmp_path/'runs'/'out.ipynb', {'epochs': '5'})
    with pytest.raises(ParameterError, match="must be a number like its default 0.5, got bool True"):
        run_notebook(stage, tmp_path/'runs'/'out.ipynb', {'lr': True})
    with pytest.raises(ParameterError, match="not a JSON value"):
        run_notebook(stage, tmp_path/'runs'/'out.ipynb', {'name': object()})
    assert validate_parameters({'lr': 1}, {'lr': 0.5}, 'nb') == {'lr': 1}  # int where a float is expected is fine
    assert not (tmp_path/'runs').exists()


def test_missing_parameters_cell(tmp_path):
    nb = make_nb(tmp_path/'nop.ipynb', "epochs = 3")
    with pytest.raises(NotebookError, match=r"no cell tagged `parameters`; .*property inspector → cell tags"):
        run_notebook(nb, tmp_path/'runs'/'out.ipynb')
    with pytest.raises(NotebookError, match="does not exist"): notebook_parameters(tmp_path/'missing.ipynb')
    assert not (tmp_path/'runs').exists()


def test_two_parameters_cells(tmp_path):
    nb = make_nb(tmp_path/'two.ipynb', params("a = 1"), "print(a)", params("b = 2"))
    with pytest.raises(NotebookError, match=r"2 cells tagged `parameters` \(cells \[0, 2\]\); keep the tag on one cell only"):
        run_notebook(nb, tmp_path/'runs'/'out.ipynb')


def test_non_literal_default_and_unknown_kernel(stage, tmp_path):
    nb = make_nb(tmp_path/'lit.ipynb', params("import os\nroot = os.getcwd()"))
    with pytest.raises(NotebookError, match="line 1 .* is not `name = value`: 'import os'"): notebook_parameters(nb)
    nb = make_nb(tmp_path/'lit2.ipynb', params("root = os.getcwd()"))
    with pytest.raises(NotebookError, match="the default of `root` .* is not a literal"): notebook_parameters(nb)
    with pytest.raises(NotebookError, match="no Jupyter kernel named 'nokernel'; installed kernels: .*python3"):
        run_notebook(stage, tmp_path/'runs'/'out.ipynb', kernel_name='nokernel')
    assert not (tmp_path/'runs').exists()


# --- failures: the stage runs and fails; run_notebook returns, the record explains ---------------

def test_cell_raises(run, tmp_path):
    nb = make_nb(tmp_path/'boom.ipynb', params("n = 1"), "x = n * 10", "# comment\nraise ValueError(f'bad value {x}')", "print('never')")
    out = tmp_path/'runs'/'boom.ipynb'
    res = run(nb, out, {'n': 4}, stage='boom', timeout=30)
    assert (res.status, res.error['cell'], res.error['ename'], res.error['evalue']) == ('error', 2, 'ValueError', 'bad value 40')
    doc = assert_clean_failure(res, out)
    assert doc['parameters'] == {'n': 4} and doc['error']['cell'] == 2
    executed = json.loads(out.read_text())
    assert 'An Exception was encountered' in cell_text(executed, 0)  # papermill's banner
    assert 'raise ValueError' in cell_text(executed, [i for i, c in enumerate(executed['cells']) if 'papermill-error-cell' in cell_text(executed, i)][-1] + 1)
    with pytest.raises(StageFailed) as e: res.raise_for_status()
    msg = str(e.value)
    assert '\n' not in msg and "stage 'boom'" in msg and 'cell 2' in msg and 'ValueError: bad value 40' in msg and str(out) in msg


def test_cell_timeout(run, tmp_path):
    nb = make_nb(tmp_path/'slow.ipynb', params("n = 1"), "import time", "time.sleep(30)", "print('never')")
    out = tmp_path/'runs'/'slow.ipynb'
    res = run(nb, out, timeout=2)
    assert res.status == 'timeout' and res.error['cell'] == 2 and res.error['ename'] == 'CellTimeoutError'
    assert res.duration < 20
    assert 'did not finish within the 2 s timeout' in res.error['message']
    assert_clean_failure(res, out)
    executed = json.loads(out.read_text())
    assert 'A cell timed out' in cell_text(executed, 0) and 'cell 2' in cell_text(executed, 0)
    anchor = [i for i, c in enumerate(executed['cells']) if 'id="papermill-error-cell"' in cell_text(executed, i)]
    assert len(anchor) == 1 and 'time.sleep(30)' in cell_text(executed, anchor[0] + 1)
    with pytest.raises(StageFailed, match="stage 'slow' failed: cell 2 .*did not finish within the 2 s timeout"): res.raise_for_status()


def test_kernel_killed(run, tmp_path):
    nb = make_nb(tmp_path/'die.ipynb', params("n = 1"), "import os, signal\nos.write(2, b'fatal: native crash here\\n')\nos.kill(os.getpid(), signal.SIGKILL)", "print('never')")
    out = tmp_path/'runs'/'die.ipynb'
    res = run(nb, out, timeout=30)
    assert res.status == 'dead' and res.error['cell'] == 1 and res.error['ename'] == 'DeadKernelError'
    assert 'the kernel died while running cell 1' in res.error['message']
    assert 'fatal: native crash here' in res.error['kernel_log']  # the kernel's own last words are kept
    assert_clean_failure(res, out)
    executed = json.loads(out.read_text())
    assert 'The kernel died' in cell_text(executed, 0)
    with pytest.raises(StageFailed, match="stage 'die' failed: the kernel died while running cell 1"): res.raise_for_status()


# --- success and compatibility ---------------------------------------------------------------------

def test_ok_run(run, stage, tmp_path):
    out = tmp_path/'runs'/'stage.ipynb'
    tricky = 'mn"ist\' \\n\n ü {x} \"\"\"'  # quotes, backslashes, newline, unicode: injected as data, never code
    res = run(stage, out, {'epochs': 4, 'lr': 1, 'name': tricky}, stage='train', timeout=60)
    assert isinstance(res, StageResult) and res.status == 'ok' and res.error is None
    assert res.raise_for_status() is res
    m = res.metrics
    assert (m['score'], m['name'], m['wandb_mode'], m['lr_type']) == (4.0, tricky, 'disabled', 'float')  # int given, float default
    assert Path(m['cwd']) == tmp_path.resolve()                     # the notebook's own folder
    assert Path(m['python']).resolve() == Path(sys.executable).resolve()  # 'python3' is this interpreter
    import neuronb
    assert Path(m['neuronb']) == Path(neuronb.__file__)
    doc = json.loads(res.status_path.read_text())
    assert res.status_path == tmp_path/'runs'/'stage.status.json'
    assert (doc['stage'], doc['status'], doc['kernel_name'], doc['error']) == ('train', 'ok', 'python3', None)
    assert doc['parameters'] == {'epochs': 4, 'lr': 1.0, 'name': tricky}
    assert doc['metrics'] == m and doc['started'] <= doc['finished'] and doc['duration'] > 0
    assert sorted(p.name for p in out.parent.iterdir()) == ['stage.html', 'stage.ipynb', 'stage.status.json']
    executed = json.loads(out.read_text())
    assert recorded_metrics(executed) == m
    assert executed['metadata']['papermill']['output_path'] == str(out)
    assert 'score: 4' in res.html.read_text()


def test_no_html_and_explicit_cwd(stage, tmp_path):
    (tmp_path/'elsewhere').mkdir()
    res = run_notebook(stage, tmp_path/'out.ipynb', html=False, cwd=tmp_path/'elsewhere', timeout=60)
    assert res.status == 'ok' and res.html is None and not (tmp_path/'out.html').exists()
    assert Path(res.metrics['cwd']) == (tmp_path/'elsewhere').resolve()


def test_plain_papermill_runs_the_same_notebook(stage, tmp_path):
    papermill = Path(sys.executable).parent/'papermill'
    out = tmp_path/'plain.ipynb'
    r = subprocess.run([str(papermill), str(stage), str(out), '-p', 'epochs', '4', '-p', 'name', 'mnist', '-k', 'python3',
                        '--cwd', str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    plain = recorded_metrics(json.loads(out.read_text()))
    ours = run_notebook(stage, tmp_path/'runs'/'stage.ipynb', {'epochs': 4, 'name': 'mnist'}).metrics
    assert plain['score'] == ours['score'] == 2.0 and plain['name'] == ours['name'] == 'mnist'


# --- threads (`neuronb run --jobs N`) and kernels started ahead ---------------------------------------

WHERE = ("import os, time\nfrom neuronb.core import record\ntime.sleep(0.5)  # so the stages overlap\n"
         "record('cwd', os.getcwd()); record('tag', tag); record('pid', os.getpid())")


def watch_cwd(stop, seen):
    "Sample this process's working directory until `stop` is set."
    while not stop.is_set():
        seen.add(os.getcwd()); time.sleep(0.002)


def run_in_threads(tmp_path, jobs, pool=None):
    "`jobs` = [(folder name, tag)]: run each stage in a thread of its own, all at once, while watching the cwd."
    stop, seen, here = threading.Event(), set(), os.getcwd()
    watcher = threading.Thread(target=watch_cwd, args=(stop, seen)); watcher.start()
    def one(job):
        folder, tag = job
        nb = make_nb(tmp_path/folder/f'{tag}.ipynb', params("tag = 'none'"), WHERE)
        return run_notebook(nb, tmp_path/'runs'/f'{tag}.ipynb', {'tag': tag}, timeout=60, pool=pool)
    try:
        with ThreadPoolExecutor(len(jobs)) as ex: results = list(ex.map(one, jobs))
    finally:
        stop.set(); watcher.join()
    assert seen == {here} and os.getcwd() == here, f'the working directory moved: {seen}'
    for (folder, tag), res in zip(jobs, results):
        assert res.status == 'ok', res.error
        assert Path(res.metrics['cwd']) == (tmp_path/folder).resolve() and res.metrics['tag'] == tag
        doc = json.loads(res.status_path.read_text())
        assert doc['parameters'] == {'tag': tag} and doc['metrics'] == res.metrics and res.html.exists()
    assert len({r.metrics['pid'] for r in results}) == len(jobs), 'two stages shared a kernel'
    return results


def test_three_stages_in_three_threads(tmp_path):
    for d in 'abc': (tmp_path/d).mkdir()
    results = run_in_threads(tmp_path, [('a', 'one'), ('b', 'two'), ('c', 'three')])
    assert max(r.duration for r in results) < sum(r.duration for r in results) * 0.9  # they did overlap
    assert kernel_children() == []
    assert not [p for p in (tmp_path/'runs').iterdir() if p.name.startswith('.')], 'a partial or log file was left'


def test_threads_share_a_pool(tmp_path):
    for d in 'ab': (tmp_path/d).mkdir()
    with KernelPool(size=2, cwd=tmp_path/'a') as pool:
        run_in_threads(tmp_path, [('a', 'a1'), ('a', 'a2'), ('b', 'b1')], pool=pool)
        run_in_threads(tmp_path, [('a', 'a3'), ('b', 'b2'), ('b', 'b3')], pool=pool)
    assert kernel_children() == []


def test_pool_replaces_a_pooled_kernel_that_died_before_it_was_handed_out(tmp_path):
    nb = make_nb(tmp_path/'s.ipynb', params("tag = 'none'"), "import os\nfrom neuronb.core import record\nrecord('pid', os.getpid())")
    with KernelPool(size=1, cwd=tmp_path) as pool:
        km = pool._idle[0][1].result(timeout=60)
        dead = km.provisioner.pid
        os.kill(dead, signal.SIGKILL)                      # an OOM kill or a crash while it waited
        deadline = time.monotonic() + 60
        while is_alive(km): assert time.monotonic() < deadline, 'the killed kernel still looks alive'; time.sleep(0.05)
        res = run_notebook(nb, tmp_path/'runs'/'1.ipynb', pool=pool, timeout=60)
        assert res.ok, res.error
        assert res.metrics['pid'] != dead
    assert kernel_children() == []


def test_pool_stage_runs_on_the_kernel_started_ahead(tmp_path):
    nb = make_nb(tmp_path/'s.ipynb', params("tag = 'none'"), "import os\nfrom neuronb.core import record\n"
                 "record('pid', os.getpid()); record('leftover', 'secret' in globals())\nsecret = 1")
    with KernelPool(size=1, cwd=tmp_path) as pool:
        ahead = pool._idle[0][1].result(timeout=30).provisioner.pid  # started ahead, as while a previous stage runs
        first = run_notebook(nb, tmp_path/'runs'/'1.ipynb', pool=pool, timeout=30)
        second = run_notebook(nb, tmp_path/'runs'/'2.ipynb', pool=pool, timeout=30)
        assert len(kernel_children()) == 1  # the next stage's kernel, waiting
    assert first.metrics['pid'] == ahead and second.metrics['pid'] != ahead
    assert first.metrics['leftover'] is second.metrics['leftover'] is False  # a kernel per stage, never reused
    assert kernel_children() == []
    with pytest.raises(NotebookError, match='kernel pool has been shut down'):
        run_notebook(nb, tmp_path/'runs'/'3.ipynb', pool=pool)


def test_pool_of_another_kernel_is_not_used(tmp_path):
    other = SimpleNamespace(kernel_name='other-kernel', take=lambda cwd: pytest.fail('took a kernel of the wrong kind'))
    km = _kernel(other, 'python3', tmp_path, tmp_path/'k.log')
    assert is_alive(km) and km.kernel_log == tmp_path/'k.log'
    stop_kernel(km)
    assert not is_alive(km) and kernel_children() == []


def test_pool_refuses_bad_arguments(tmp_path):
    from neuronb.core import ConfigError
    with pytest.raises(ConfigError, match='size must be a whole number >= 1, got 0'): KernelPool(size=0)
    with pytest.raises(NotebookError, match="no Jupyter kernel named 'nokernel'"): KernelPool('nokernel')
    with pytest.raises(NotebookError, match='working directory .*missing does not exist'):
        run_notebook(make_nb(tmp_path/'s.ipynb', params("x = 1")), tmp_path/'runs'/'s.ipynb', cwd=tmp_path/'missing')
    assert kernel_children() == []


LEAKER = """
import sys, time
from neuronb.pipeline.kernels import KernelPool
from neuronb.pipeline.runner import run_notebook
pool = KernelPool(size=2, cwd=sys.argv[1], env={'NEURONB_LEAK_TEST': sys.argv[2]})
if sys.argv[3] == 'run':
    res = run_notebook(sys.argv[4], sys.argv[5], pool=pool, timeout=60, html=False)
    print(res.status, flush=True)
else:
    pool._idle[-1][1].result(30)
    print('ready', flush=True)
    time.sleep(60)  # killed here
"""


def test_no_kernel_outlives_its_process(tmp_path):
    nb = make_nb(tmp_path/'s.ipynb', params("x = 1"), "print(x)")
    marker = uuid.uuid4().hex
    # a normal exit without shutdown(): the pool's atexit handler stops its kernels
    (tmp_path/'tmp').mkdir()  # where that process's pool keeps its kernels' logs
    r = subprocess.run([sys.executable, '-c', LEAKER, str(tmp_path), f'{marker}-exit', 'run', str(nb), str(tmp_path/'o.ipynb')],
                       capture_output=True, text=True, timeout=120, env={**os.environ, 'TMPDIR': str(tmp_path/'tmp')})
    assert r.returncode == 0 and r.stdout.strip() == 'ok', r.stderr[-2000:]
    assert processes_with(f'{marker}-exit') == []
    assert list((tmp_path/'tmp').iterdir()) == [], 'kernel logs were left behind'
    # killed outright: no handler runs, the kernels notice their parent is gone and exit
    p = subprocess.Popen([sys.executable, '-c', LEAKER, str(tmp_path), f'{marker}-kill', 'wait'], stdout=subprocess.PIPE, text=True,
                         env={**os.environ, 'TMPDIR': str(tmp_path/'tmp')})
    try:
        assert p.stdout.readline().strip() == 'ready'
        assert len(processes_with(f'{marker}-kill')) == 2
    finally:
        p.kill(); p.wait()
    deadline = time.monotonic() + 15
    while processes_with(f'{marker}-kill') and time.monotonic() < deadline: time.sleep(0.2)
    assert processes_with(f'{marker}-kill') == []


def test_pool_preloads_modules_without_a_trace(tmp_path):
    nb = make_nb(tmp_path/'s.ipynb', params("x = 1"), "import sys\nfrom neuronb.core import record\nrecord('had', 'colorsys' in sys.modules)")
    with KernelPool(size=1, cwd=tmp_path, preload=['colorsys']) as pool:
        res = run_notebook(nb, tmp_path/'runs'/'s.ipynb', {'x': 2}, pool=pool, timeout=60)
    plain = run_notebook(nb, tmp_path/'runs'/'plain.ipynb', {'x': 2}, timeout=60)
    assert res.status == plain.status == 'ok' and res.metrics['had'] is True and plain.metrics['had'] is False
    code = lambda r: [(c['source'], c['execution_count']) for c in json.loads(r.notebook.read_text())['cells']]
    assert code(res) == code(plain) and [n for _, n in code(res)] == [1, 2, 3]  # no extra cell, counts from 1
    assert kernel_children() == []
