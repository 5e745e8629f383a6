"""The pipeline engine: caching, resume, concurrency, bad pipeline files, a killed run."""
import json, os, signal, subprocess, sys, time
from pathlib import Path
import pytest
from neuronb.pipeline.engine import run_pipeline, pipeline_status, toy_project, _stage_nb
from neuronb.pipeline.project import load_project

NEURONB = str(Path(sys.executable).parent/'neuronb')
ENV = {**os.environ, 'WANDB_MODE': 'disabled'}


def cli(*args, **kw):
    return subprocess.run([NEURONB, *map(str, args)], capture_output=True, text=True, env=ENV, timeout=300, **kw)


def statuses(run): return {o.stage: o.status for o in run.outcomes}


def states(project): return {p.stage: p.state for p in pipeline_status(project)}


def edit_notebook(path, change):
    nb = json.loads(Path(path).read_text())
    change(nb['cells'])
    Path(path).write_text(json.dumps(nb))


@pytest.fixture
def toy(tmp_path):
    project = toy_project(tmp_path/'toy')
    assert set(statuses(run_pipeline(project, echo=None)).values()) == {'ok'}
    return project


def test_markdown_outputs_and_metadata_do_not_invalidate(toy):
    def cosmetic(cells):
        cells.insert(0, {'cell_type': 'markdown', 'metadata': {}, 'source': '# A title'})
        cells[-1].update(execution_count=12, outputs=[{'output_type': 'stream', 'name': 'stdout', 'text': 'hi'}])
        cells[-1]['metadata']['collapsed'] = True
    edit_notebook(toy.root/'stages/make.ipynb', cosmetic)
    assert set(states(toy).values()) == {'fresh'}
    assert statuses(run_pipeline(toy, echo=None)) == {'make': 'reused', 'double': 'reused', 'report': 'reused'}


def test_code_edit_invalidates_the_stage_and_its_dependents(toy):
    def code(cells): cells[-1]['source'] += '\nprint("changed")'
    edit_notebook(toy.root/'stages/double.ipynb', code)
    plans = {p.stage: p for p in pipeline_status(toy)}
    assert plans['double'].state == 'stale' and plans['double'].reason == 'code changed'
    assert plans['make'].state == 'fresh' and plans['report'].state == 'fresh'
    edit_notebook(toy.root/'stages/make.ipynb', code)
    assert states(toy) == {'make': 'stale', 'double': 'stale', 'report': 'stale'}
    assert statuses(run_pipeline(toy, echo=None)) == {'make': 'ok', 'double': 'ok', 'report': 'ok'}


def test_parameter_change_reruns_only_downstream(toy):
    run = run_pipeline(toy, overrides={'double': {'factor': 10}}, echo=None)
    assert statuses(run) == {'make': 'reused', 'double': 'ok', 'report': 'reused'}
    assert (toy.root/'m.txt').read_text() == '30'
    # the pipeline file's value again: double is stale, and says which parameter moved
    plan = {p.stage: p for p in pipeline_status(toy)}['double']
    assert plan.state == 'stale' and plan.reason == 'parameters changed (factor 10→2)'


def test_changed_or_missing_output_makes_a_stage_stale(toy):
    (toy.root/'m.txt').write_text('999')
    assert {p.stage: p.reason for p in pipeline_status(toy)}['double'] == 'output m.txt changed since'
    (toy.root/'m.txt').unlink()
    assert {p.stage: p.reason for p in pipeline_status(toy)}['double'] == 'output m.txt missing'
    assert statuses(run_pipeline(toy, echo=None))['double'] == 'ok'


def test_resume_after_a_failure(toy):
    def boom(cells): cells[-1]['source'] = "raise ValueError('bad batch')"
    edit_notebook(toy.root/'stages/double.ipynb', boom)
    run_pipeline(toy, force=True, echo=None)                         # everything ran once more, double failed
    plans = {p.stage: p for p in pipeline_status(toy)}
    assert plans['double'].state == 'failed' and 'failed (error)' in plans['double'].reason
    executed = sorted((toy.root/'runs').glob('*/02_double.ipynb'))[-1]   # the newest run's
    assert 'bad batch' in executed.read_text()                      # the error is in the kept notebook
    def fix(cells): cells[-1]['source'] = "from pathlib import Path\nPath('../m.txt').write_text('fixed')"
    edit_notebook(toy.root/'stages/double.ipynb', fix)
    run = run_pipeline(toy, echo=None)
    assert statuses(run) == {'make': 'reused', 'double': 'ok', 'report': 'reused'}


def test_failure_blocks_dependents_but_not_independent_stages(tmp_path):
    project = toy_project(tmp_path/'toy')
    def boom(cells): cells[-1]['source'] = "raise RuntimeError('no data')"
    edit_notebook(project.root/'stages/make.ipynb', boom)
    (project.root/'n.txt').write_text('1')   # report could run on an old n.txt, but it depends on make: blocked
    run = run_pipeline(project, echo=None)
    assert statuses(run) == {'make': 'error', 'double': 'blocked', 'report': 'blocked'}
    with pytest.raises(Exception, match=r"stage 'make' failed: cell 1 \(In \[\d+\]\) raised RuntimeError: no data"):
        run.raise_for_status()


def test_missing_declared_output_fails_the_stage(tmp_path):
    project = toy_project(tmp_path/'toy')
    def lazy(cells): cells[-1]['source'] = "x = 1"
    edit_notebook(project.root/'stages/make.ipynb', lazy)
    run = run_pipeline(project, echo=None)
    assert run.outcome('make').status == 'error' and 'did not write its declared output n.txt' in run.outcome('make').message
    assert statuses(run)['double'] == 'blocked'


def test_independent_stages_run_concurrently(tmp_path):
    d = tmp_path/'par'; (d/'stages').mkdir(parents=True)
    code = ("import time, json, pathlib\nt0 = time.time(); time.sleep(3)\n"
            "pathlib.Path(f'../{name}.json').write_text(json.dumps([t0, time.time()]))")
    for name in 'ab': (d/f'stages/{name}.ipynb').write_text(_stage_nb(f"name = '{name}'", code))
    (d/'pipeline.yaml').write_text('name: par\nstages:\n  a: {notebook: stages/a.ipynb, outputs: [a.json]}\n'
                                   '  b: {notebook: stages/b.ipynb, outputs: [b.json]}\n')
    run = run_pipeline(load_project(d), jobs=2, echo=None)
    assert statuses(run) == {'a': 'ok', 'b': 'ok'}
    (a0, a1), (b0, b1) = (json.loads((d/f'{n}.json').read_text()) for n in 'ab')
    assert a0 < b1 and b0 < a1, "the two stages' sleeps overlapped"
    assert Path.cwd() != d/'stages'


@pytest.mark.parametrize('yaml_text,message', [
    ("stages:\n  a: {notebook: stages/make.ipynb, needs: [ghost]}\n", "needs 'ghost', which is not a stage"),
    ("stages:\n  a: {notebook: stages/make.ipynb, inputs: [m.txt], outputs: [n.txt]}\n"
     "  b: {notebook: stages/double.ipynb, inputs: [n.txt], outputs: [m.txt]}\n", "cycle: a -> b -> a"),
    ("stages:\n  a: {notebook: stages/nope.ipynb}\n", "names stages/nope.ipynb, which does not exist"),
    ("stages:\n  a: {notebook: stages/make.ipynb, outputs: [n.txt]}\n  b: {notebook: stages/double.ipynb, outputs: [n.txt]}\n",
     "output 'n.txt' is declared by both 'a' and 'b'"),
    ("stages:\n  a: {notebook: stages/make.ipynb, parameters: {count: 3}}\n", "unknown parameter 'count'"),
    ("stages:\n  a: {notebook: stages/make.ipynb, parameters: {n: three}}\n", "must be a int like its default 3"),
])
def test_bad_pipeline_files(tmp_path, yaml_text, message):
    project = toy_project(tmp_path/'toy')
    (project.root/'pipeline.yaml').write_text('name: bad\n' + yaml_text)
    for cmd in ('run', 'status'):
        out = cli(cmd, project.root)
        assert out.returncode == 1, out.stdout
        assert message in out.stderr and 'Traceback' not in out.stderr
    assert not (project.root/'runs').exists()


def test_unknown_stage_on_the_command_line(toy):
    for args in (['--only', 'deploy'], ['--from', 'deploy'], ['-p', 'deploy.x=1']):
        out = cli('run', toy.root, *args)
        assert out.returncode == 1 and "no stage named 'deploy'" in out.stderr


def test_noop_run_via_cli_says_everything_is_up_to_date(toy):
    out = cli('run', toy.root)
    assert out.returncode == 0 and 'Everything is up to date' in out.stdout
    assert len(list((toy.root/'runs').iterdir())) == 1


def test_killed_run_resumes_at_the_interrupted_stage(tmp_path):
    project = toy_project(tmp_path/'toy')
    def slow(cells): cells[-1]['source'] = ("import time, pathlib\npathlib.Path('../started').touch()\n"
                                           "if pathlib.Path('../slow').exists(): time.sleep(120)\n"
                                           "pathlib.Path('../m.txt').write_text('done')")
    edit_notebook(project.root/'stages/double.ipynb', slow)
    (project.root/'slow').touch()
    proc = subprocess.Popen([NEURONB, 'run', str(project.root)], env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        for _ in range(600):
            if (project.root/'started').exists(): break
            time.sleep(0.1)
        assert (project.root/'started').exists(), 'double never started'
    finally:
        os.killpg(proc.pid, signal.SIGKILL); proc.wait(30)
    plans = {p.stage: p for p in pipeline_status(project)}
    assert plans['make'].state == 'fresh'
    assert plans['double'].state == 'failed' and 'interrupted' in plans['double'].reason
    assert not list((project.root/'runs').glob('*/02_double.ipynb'))  # no half-written executed notebook
    (project.root/'slow').unlink()
    run = run_pipeline(project, echo=None)
    assert statuses(run) == {'make': 'reused', 'double': 'ok', 'report': 'ok'}


def test_new_dataset_version_reruns_exactly_its_readers(toy):
    from neuronb.data.versions import add_files, commit
    code = ("from neuronb.pipeline.project import load_project\nfrom neuronb.data.versions import resolve\nfrom neuronb.core import record\n"
            "record('files', resolve(load_project().store(), 'latest', 'raw')['n'])")
    (toy.root/'stages/count.ipynb').write_text(_stage_nb('', code))
    pfile = toy.root/'pipeline.yaml'
    pfile.write_text(pfile.read_text() + '  count: {notebook: stages/count.ipynb, inputs: [dataset:raw]}\n')
    project = load_project(toy.root)
    assert {p.stage: p.reason for p in pipeline_status(project)}['count'] == 'never ran successfully'
    store = project.store()
    (toy.root/'incoming').mkdir(); (toy.root/'incoming/a.txt').write_text('a')
    add_files(store, toy.root/'incoming', progress=False); commit(store, message='one file')
    run = run_pipeline(project, echo=None)
    assert statuses(run) == {'make': 'reused', 'double': 'reused', 'report': 'reused', 'count': 'ok'}
    assert run.outcome('count').metrics == {'files': 1}
    (toy.root/'incoming/b.txt').write_text('b')
    add_files(store, toy.root/'incoming', progress=False); commit(store, message='two files')
    plans = {p.stage: p for p in pipeline_status(project)}
    assert plans['count'].state == 'stale' and plans['count'].reason == 'dataset:raw has a new version'
    run = run_pipeline(project, echo=None)
    assert statuses(run) == {'make': 'reused', 'double': 'reused', 'report': 'reused', 'count': 'ok'}
    assert run.outcome('count').metrics == {'files': 2}
