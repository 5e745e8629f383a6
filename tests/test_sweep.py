"""Sweeps: config validation, grid coverage, seeded random, hyperband pruning, parallel SQLite workers, the engine choice,
the W&B engine's wiring, offline trial runs, writing the best parameters back, and the sweep notebook under papermill."""
import os, re
os.environ.setdefault('WANDB_MODE', 'disabled')
import socket, sys, time, types
import pytest
from neuronb.core import ConfigError, ParameterError
from neuronb.sweep import (parse_sweep_config, run_local_sweep, digits_objective, results_table, choose_engine, server_reachable,
                           sweep, apply_best)

METRIC = {'name': 'loss', 'goal': 'minimize'}

def toy(params, report):
    "A quadratic with its minimum at x = 2, reported over three steps."
    for step in range(3):
        if report(step, (params['x'] - 2) ** 2 + 3 - step):
            import optuna
            raise optuna.TrialPruned()
    return (params['x'] - 2) ** 2

@pytest.mark.parametrize('cfg,msg', [
    ({'method': 'hyperband', 'metric': METRIC, 'parameters': {'x': {'value': 1}}}, "sweep method 'hyperband' is unknown; set method to one of grid, random, bayes"),
    ({'method': 'grid', 'parameters': {'x': {'value': 1}}}, "no 'metric'; add e.g. metric: {name:"),
    ({'method': 'grid', 'metric': {'goal': 'maximize'}, 'parameters': {'x': {'value': 1}}}, "metric needs a 'name'"),
    ({'method': 'grid', 'metric': {'name': 'a', 'goal': 'max'}, 'parameters': {'x': {'value': 1}}}, "metric.goal 'max' is unknown; use maximize or minimize"),
    ({'method': 'random', 'metric': METRIC}, "no 'parameters'"),
    ({'method': 'random', 'metric': METRIC, 'parameters': {'lr': {'min': 0.1, 'max': 1.0, 'distribution': 'normal'}}},
     "sweep parameter 'lr': distribution 'normal' is not supported by the local engine; use one of uniform"),
    ({'method': 'random', 'metric': METRIC, 'parameters': {'lr': {'min': 0.0, 'max': 1.0, 'distribution': 'log_uniform_values'}}},
     "'lr': log_uniform_values needs min > 0"),
    ({'method': 'random', 'metric': METRIC, 'parameters': {'lr': {'min': 1.0, 'max': 0.1}}}, "'lr': 'min' (1.0) must be below 'max' (0.1); swap them"),
    ({'method': 'random', 'metric': METRIC, 'parameters': {'lr': {'max': 0.1}}}, "'lr': give 'values: [...]'"),
    ({'method': 'random', 'metric': METRIC, 'parameters': {'bs': {'values': []}}}, "'bs': 'values' must be a non-empty list"),
    ({'method': 'random', 'metric': METRIC, 'parameters': {'bs': 32}}, "'bs': expected a mapping"),
    ({'method': 'grid', 'metric': METRIC, 'parameters': {'lr': {'min': 0.1, 'max': 1.0}}}, "'lr': grid search needs a list of choices"),
    ({'method': 'grid', 'metric': METRIC, 'parameters': {'x': {'value': 1}}, 'early_terminate': {'type': 'envelope'}},
     "early_terminate: only {type: hyperband"),
    ({'method': 'grid', 'metric': METRIC, 'parameters': {'x': {'value': 1}}, 'early_terminate': {'type': 'hyperband', 'eta': 1}},
     "early_terminate.eta must be an integer >= 2"),
    ({'metod': 'grid', 'method': 'grid', 'metric': METRIC, 'parameters': {'x': {'value': 1}}}, "unknown sweep config key(s) 'metod'"),
    ('/nonexistent/sweep.yaml', "sweep config '/nonexistent/sweep.yaml' not found"),
    ('method: [grid', 'not valid YAML'),
])
def test_invalid_config_messages(cfg, msg):
    with pytest.raises(ConfigError) as e: parse_sweep_config(cfg)
    assert msg in str(e.value), str(e.value)

def test_yaml_file(tmp_path):
    p = tmp_path/'sweep.yaml'
    p.write_text("method: bayes\nmetric: {name: acc, goal: maximize}\nparameters:\n  lr: {min: 0.001, max: 0.1, distribution: log_uniform_values}\n"
                 "  depth: {min: 1, max: 3}\nearly_terminate: {type: hyperband, min_iter: 2}\n")
    sc = parse_sweep_config(p)
    assert (sc.method, sc.metric, sc.goal) == ('bayes', 'acc', 'maximize')
    assert sc.parameters['depth'].kind == 'int_uniform' and sc.early_terminate == {'type': 'hyperband', 'min_iter': 2, 'max_iter': None, 'eta': 3}

def test_grid_covers_every_combination_once(tmp_path):
    cfg = {'method': 'grid', 'metric': METRIC, 'parameters': {'x': {'values': [0, 1, 2, 3]}, 'y': {'values': ['a', 'b', 'c']}, 'z': {'value': 7}}}
    study = run_local_sweep(cfg, toy, storage=f"sqlite:///{tmp_path}/g.db")
    combos = [(t.params['x'], t.params['y']) for t in study.trials]
    assert sorted(combos) == sorted((x, y) for x in [0, 1, 2, 3] for y in 'abc')
    assert len(combos) == len(set(combos)) == 12
    assert study.best_params['x'] == 2 and all(t.user_attrs['z'] == 7 for t in study.trials)

def test_random_with_seed_is_reproducible(tmp_path):
    cfg = {'method': 'random', 'metric': METRIC, 'parameters': {'x': {'min': -5.0, 'max': 5.0}, 'lr': {'min': 1e-4, 'max': 1e-1, 'distribution': 'log_uniform_values'},
                                                                'bs': {'values': [16, 32, 64]}, 'q': {'min': 0.0, 'max': 1.0, 'distribution': 'q_uniform', 'q': 0.25}}}
    runs = [[t.params for t in run_local_sweep(cfg, toy, n_trials=6, storage=f"sqlite:///{tmp_path}/r{i}.db", seed=seed).trials]
            for i, seed in enumerate((3, 3, 4))]
    assert runs[0] == runs[1] and runs[0] != runs[2]
    assert all(1e-4 <= p['lr'] <= 1e-1 and p['q'] in (0, .25, .5, .75, 1.0) for p in runs[0])

def test_hyperband_prunes_bad_trials(tmp_path):
    epochs, n = 4, 16
    cfg = {'method': 'random', 'metric': {'name': 'valid_accuracy', 'goal': 'maximize'},
           'parameters': {'lr': {'min': 1e-3, 'max': 30.0, 'distribution': 'log_uniform_values'},   # most of this range diverges
                          'epochs': {'value': epochs}, 'size': {'value': 16}, 'width': {'value': 8}},
           'early_terminate': {'type': 'hyperband', 'min_iter': 1, 'max_iter': epochs, 'eta': 3}}
    study = run_local_sweep(cfg, digits_objective, n_trials=n, storage=f"sqlite:///{tmp_path}/h.db", seed=0)
    df = results_table(study)
    print(df.to_string())
    assert (df.state == 'PRUNED').sum() >= 1
    assert df.epochs_run.sum() < n * epochs   # without pruning every trial runs all its epochs
    assert (df[df.state == 'COMPLETE'].epochs_run == epochs).all()

def test_two_workers_share_one_sqlite_study(tmp_path):
    cfg = {'method': 'random', 'metric': {'name': 'valid_accuracy', 'goal': 'maximize'},
           'parameters': {'lr': {'min': 1e-3, 'max': 3e-2, 'distribution': 'log_uniform_values'},
                          'epochs': {'value': 1}, 'size': {'value': 16}, 'width': {'value': 8}}}
    study = run_local_sweep(cfg, digits_objective, n_trials=4, workers=2, storage=f"sqlite:///{tmp_path}/w.db", study_name='par', seed=0)
    pids = {t.user_attrs['worker_pid'] for t in study.trials}
    assert len(study.trials) == 4 and all(t.state.name == 'COMPLETE' for t in study.trials)
    assert len(pids) <= 2   # this process and one spawned worker; the spawned one may start too late to get a trial
    assert len({t.params['lr'] for t in study.trials}) == 4   # each worker has its own sampler seed


def slow_toy(params, report):
    "`toy`, taking a second per trial: long enough for a spawned worker to start and claim trials."
    time.sleep(1.0)
    return (params['x'] - 2) ** 2


def test_this_process_and_the_spawned_worker_share_exactly_the_trials_asked_for(tmp_path):
    cfg = {'method': 'random', 'metric': METRIC, 'parameters': {'x': {'min': 0.0, 'max': 4.0}}}
    study = run_local_sweep(cfg, slow_toy, n_trials=12, workers=2, storage=f"sqlite:///{tmp_path}/s.db", study_name='share', seed=0)
    pids = [t.user_attrs['worker_pid'] for t in study.trials]
    assert len(study.trials) == 12 and all(t.state.name == 'COMPLETE' for t in study.trials)   # no more, no fewer
    assert set(pids) - {os.getpid()} and pids.count(os.getpid()) >= 2   # both worked, this one from the start

def test_default_storage_in_project(tmp_path, monkeypatch):
    (tmp_path/'pipeline.yaml').write_text('stages: {}\n')
    (tmp_path/'sub').mkdir()
    monkeypatch.chdir(tmp_path/'sub')
    cfg = {'method': 'random', 'metric': METRIC, 'parameters': {'x': {'min': 0.0, 'max': 4.0}}}
    study = run_local_sweep(cfg, toy, study_name='defaults', n_trials=2)
    assert (tmp_path/'.neuronb'/'sweeps.db').is_file() and len(study.trials) == 2
    again = run_local_sweep(cfg, toy, study_name='defaults', n_trials=1)   # load_if_exists: the same study grows
    assert len(again.trials) == 3

def test_bad_storage_and_workers(tmp_path):
    cfg = {'method': 'grid', 'metric': METRIC, 'parameters': {'x': {'values': [1]}}}
    with pytest.raises(ConfigError, match='cannot open sweep storage'): run_local_sweep(cfg, toy, storage='nosuchdb://x')
    with pytest.raises(ConfigError, match='workers must be a positive integer'): run_local_sweep(cfg, toy, workers=0, storage=f"sqlite:///{tmp_path}/b.db")
    with pytest.raises(ConfigError, match='define it at the top level of an importable module'):
        run_local_sweep(cfg, lambda p, r: 0.0, workers=2, storage=f"sqlite:///{tmp_path}/c.db")



# --- one study shared through a real PostgreSQL server (the `postgres_url` fixture starts one of the tests' own)

SWEEPER = """
import os, sys, time
from pathlib import Path
from neuronb.sweep import run_local_sweep
url, tmp, n = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
def toy(params, report): return (params['x'] - 2) ** 2
(tmp/f'ready-{os.getpid()}').touch()
while not (tmp/'go').exists(): time.sleep(0.001)   # both create the study and claim trials at the same moment
cfg = {'method': 'random', 'metric': {'name': 'loss', 'goal': 'minimize'}, 'parameters': {'x': {'min': 0.0, 'max': 4.0}}}
run_local_sweep(cfg, toy, n_trials=n, storage=url, study_name='shared', seed=os.getpid())
"""

def test_postgres_study_shared_by_two_processes(postgres_url, tmp_path):
    "Two processes (as on two machines) create one study at once in PostgreSQL and add their trials: all of them, numbered once."
    import optuna, subprocess
    procs = [subprocess.Popen([sys.executable, '-c', SWEEPER, postgres_url, str(tmp_path), '15'], stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    deadline = time.time() + 60
    while len(list(tmp_path.glob('ready-*'))) < 2:
        assert time.time() < deadline and all(p.poll() is None for p in procs), 'sweep processes did not start'
        time.sleep(0.01)
    (tmp_path/'go').touch()
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    study = optuna.load_study(study_name='shared', storage=postgres_url)
    assert len(optuna.get_all_study_names(postgres_url)) == 1   # one study, not one per process
    assert sorted(t.number for t in study.trials) == list(range(30)) and {t.state.name for t in study.trials} == {'COMPLETE'}
    assert {t.user_attrs['worker_pid'] for t in study.trials} == {p.pid for p in procs}
    assert results_table(study).shape[0] == 30 and study.best_value == min(t.value for t in study.trials)

def test_postgres_study_with_spawned_workers_and_pruning(postgres_url):
    "This process and a spawned worker share a hyperband study in PostgreSQL: every trial asked for, each step's value kept."
    cfg = {'method': 'random', 'metric': METRIC, 'parameters': {'x': {'min': 0.0, 'max': 4.0}},
           'early_terminate': {'type': 'hyperband', 'min_iter': 1, 'max_iter': 3, 'eta': 3}}
    study = run_local_sweep(cfg, toy, n_trials=6, workers=2, storage=postgres_url, study_name='spawned', seed=0)
    # the spawned worker loads the study from PostgreSQL before it looks for a trial to claim: a failure there fails the sweep
    assert len(study.trials) == 6 and {t.state.name for t in study.trials} <= {'COMPLETE', 'PRUNED'}
    assert all(len(t.intermediate_values) == (3 if t.state.name == 'COMPLETE' else t.last_step + 1) for t in study.trials)
    again = run_local_sweep(cfg, toy, n_trials=2, storage=postgres_url, study_name='spawned')   # load_if_exists: it grows
    assert len(again.trials) == 8

def test_postgres_storage_not_running_says_so(tmp_path):
    "A sweep storage URL whose server is not there: one line naming it (password masked) and what to pass."
    pytest.importorskip('psycopg')
    cfg = {'method': 'grid', 'metric': METRIC, 'parameters': {'x': {'values': [1]}}}
    with pytest.raises(ConfigError) as e: run_local_sweep(cfg, toy, storage=f'postgresql+psycopg://u:secret@/db?host={tmp_path}')
    msg = str(e.value)
    assert msg.startswith("cannot open sweep storage 'postgresql+psycopg://u:***@/db") and 'secret' not in msg, msg
    assert 'Is the server running' not in msg and '\n' not in msg, msg   # the driver's first line only


# --- choosing the engine: no network here, so every case must pick the local engine, and fast

def closed_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]

@pytest.fixture
def wandb_env(monkeypatch, tmp_path):
    "No W&B settings from this machine: no key, no netrc, no saved host."
    for k in ('WANDB_MODE', 'WANDB_API_KEY', 'WANDB_BASE_URL'): monkeypatch.delenv(k, raising=False)
    (tmp_path/'netrc').write_text('')
    monkeypatch.setenv('NETRC', str(tmp_path/'netrc'))
    monkeypatch.setenv('WANDB_CONFIG_DIR', str(tmp_path/'wandbcfg'))
    return monkeypatch

@pytest.mark.parametrize('env,why', [
    ({'WANDB_MODE': 'offline', 'WANDB_API_KEY': 'k' * 40}, 'WANDB_MODE=offline: no W&B server is used'),
    ({'WANDB_MODE': 'disabled', 'WANDB_API_KEY': 'k' * 40}, 'WANDB_MODE=disabled: no W&B server is used'),
    ({}, 'W&B has no API key here'),
    ({'WANDB_MODE': 'online'}, 'W&B has no API key here'),
    ({'WANDB_MODE': 'online', 'WANDB_API_KEY': 'k' * 40, 'WANDB_BASE_URL': 'closed'}, 'did not answer within 2 s'),
    ({'WANDB_API_KEY': 'k' * 40, 'WANDB_BASE_URL': 'closed'}, 'did not answer within 2 s'),
])
def test_engine_choice_picks_local_without_a_server(wandb_env, env, why):
    for k, v in env.items(): wandb_env.setenv(k, f"http://127.0.0.1:{closed_port()}" if v == 'closed' else v)
    t0 = time.time()
    name, reason = choose_engine(timeout=2)
    assert name == 'local' and why in reason, reason
    assert time.time() - t0 < 2.5

def test_server_probe_is_bounded_by_its_timeout():
    with socket.socket() as silent:   # accepts connections and never replies
        silent.bind(('127.0.0.1', 0)); silent.listen()
        t0 = time.time()
        assert not server_reachable(f"http://127.0.0.1:{silent.getsockname()[1]}", timeout=1.0)
        assert time.time() - t0 < 1.6
    t0 = time.time()
    assert not server_reachable(f"http://127.0.0.1:{closed_port()}", timeout=2.0)
    assert time.time() - t0 < 1.0   # refused at once: no waiting for the timeout

def test_server_probe_counts_any_http_answer():
    import http.server, threading
    class NotFound(http.server.BaseHTTPRequestHandler):
        def do_GET(self): self.send_response(404); self.end_headers()
        def log_message(self, *a): pass
    srv = http.server.HTTPServer(('127.0.0.1', 0), NotFound)
    th = threading.Thread(target=srv.serve_forever, daemon=True); th.start()
    try: assert server_reachable(f"http://127.0.0.1:{srv.server_port}", timeout=2)
    finally: srv.shutdown(); srv.server_close()

def test_engine_line_and_forced_engines(wandb_env, tmp_path, capsys):
    wandb_env.setenv('WANDB_MODE', 'disabled')
    cfg = {'method': 'grid', 'metric': METRIC, 'parameters': {'x': {'values': [1, 2]}, 'c': {'value': 5}}}
    res = sweep(cfg, toy, storage=f"sqlite:///{tmp_path}/e.db")
    out = capsys.readouterr().out
    assert out.splitlines()[0] == 'sweep engine: local (WANDB_MODE=disabled: no W&B server is used); objective: toy'
    assert (res.engine, res.best_params, res.best_value) == ('local', {'x': 2, 'c': 5}, 0)
    with pytest.raises(ConfigError, match="the W&B sweep engine was asked for, but WANDB_MODE=disabled"): sweep(cfg, toy, engine='wandb')
    with pytest.raises(ConfigError, match="unknown sweep engine 'optuna'; use auto or one of local, wandb"): sweep(cfg, toy, engine='optuna')


# --- the W&B engine, against a stand-in for the wandb module (no W&B server here)

class FakeRun:
    def __init__(self, config): self.config, self.summary, self.history = dict(config), {}, []
    def log(self, row): self.history.append(row)
    def __enter__(self): return self
    def __exit__(self, *a): pass

def fake_wandb(monkeypatch):
    "A wandb stand-in: a server that samples x from the grid's values and records each run."
    w = types.SimpleNamespace(calls=[], runs=[])
    def sweep_(config, project=None, entity=None): w.calls.append(('sweep', config['method'], project)); return 'sw123'
    def agent(sweep_id, function=None, project=None, entity=None, count=None):
        w.calls.append(('agent', sweep_id, project, count))
        for i in range(count):
            w.current = FakeRun({'x': [0, 2, 3][i % 3], 'c': 5}); function()
            w.current.name, w.current.state = f"run-{len(w.runs)}", 'finished'; w.runs.append(w.current)
    w.sweep, w.agent, w.init = sweep_, agent, lambda **kw: w.current
    api = types.SimpleNamespace(default_entity='me', sweep=lambda path: (w.calls.append(('api', path)), types.SimpleNamespace(runs=w.runs))[1])
    w.Api = lambda: api
    monkeypatch.setitem(sys.modules, 'wandb', w)
    monkeypatch.setattr('neuronb.sweep.choose_engine', lambda timeout=2.0: ('wandb', 'the W&B server http://test answered'))
    return w

def test_wandb_engine_runs_wandb_sweep_and_agent(monkeypatch, capsys):
    w = fake_wandb(monkeypatch)
    cfg = {'method': 'grid', 'metric': METRIC, 'parameters': {'x': {'values': [0, 2, 3]}, 'c': {'value': 5}}, 'project': 'digits'}
    res = sweep(cfg, toy, n_trials=3)
    assert capsys.readouterr().out.startswith('sweep engine: wandb (the W&B server http://test answered)')
    assert w.calls == [('sweep', 'grid', 'digits'), ('agent', 'sw123', 'digits', 3), ('api', 'me/digits/sw123')]
    assert w.runs[0].history == [{'loss': 7.0, 'epoch': 0}, {'loss': 6.0, 'epoch': 1}, {'loss': 5.0, 'epoch': 2}]   # per epoch
    assert [r.summary['loss'] for r in w.runs] == [4, 0, 1]
    assert (res.engine, res.study_name, res.best_params, res.best_value) == ('wandb', 'sw123', {'x': 2, 'c': 5}, 0)
    assert list(res.table['loss']) == [0, 1, 4]
    w.calls.clear()
    sweep(cfg, toy, n_trials=1, study_name='sw999', project='other', show=False)   # join: no new sweep
    assert w.calls[0] == ('agent', 'sw999', 'other', 1)


# --- offline W&B runs for local trials

def test_local_trials_are_offline_wandb_runs(tmp_path, monkeypatch):
    (tmp_path/'pipeline.yaml').write_text('stages: {}\n')
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv('WANDB_MODE', 'offline')
    monkeypatch.setenv('WANDB_SILENT', 'true')
    cfg = {'method': 'grid', 'metric': METRIC, 'parameters': {'x': {'values': [1, 2]}}, 'project': 'toys'}
    res = sweep(cfg, toy, show=False)
    runs = sorted((tmp_path/'runs'/'wandb').glob('offline-run-*'))
    assert res.engine == 'local' and len(runs) == 2


# --- writing the best parameters back into pipeline.yaml

@pytest.fixture
def project(tmp_path):
    from neuronb.pipeline.init import init_project
    return init_project(tmp_path/'p')

def test_apply_best_keeps_comments_and_other_stages(project):
    f = project.root/'pipeline.yaml'
    before = f.read_text()
    kept = {'epochs': 10, 'frame_ink': True, 'wandb_project': 'neuronb-digits'}   # the example's own train parameters
    assert apply_best(project.root/'stages', {'lr': 0.02, 'bs': 64}) == {**kept, 'lr': 0.02, 'bs': 64}
    after = f.read_text()
    added = [l for l in after.splitlines() if l not in before.splitlines()]
    assert added == ['      lr: 0.02', '      bs: 64']
    assert [l for l in before.splitlines() if l not in after.splitlines()] == []
    apply_best(project.root, {'lr': 3e-05, 'epochs': 4})
    from neuronb.pipeline.project import load_project
    assert load_project(project.root).stage('train').parameters == {**kept, 'epochs': 4, 'lr': 3e-05, 'bs': 64}
    assert len(f.read_text().splitlines()) == len(after.splitlines())

def test_apply_best_flow_style_and_missing_block(project):
    from neuronb.pipeline.project import load_project
    f = project.root/'pipeline.yaml'
    text = f.read_text()
    block = re.search(r'  train:\n(?:    .*\n)*?(    parameters:\n(?:      .*\n)+)', text).group(1)   # the train stage's parameters
    f.write_text(text.replace(block, '    parameters: {epochs: 3}   # quick runs\n'))
    apply_best(project.root, {'width': 8})
    assert '    parameters:   # quick runs\n      epochs: 3\n      width: 8\n' in f.read_text()
    f.write_text(text.replace(block, ''))
    apply_best(project.root, {'width': 8})
    assert load_project(project.root).stage('train').parameters == {'width': 8}
    assert load_project(project.root).stage('demo').parameters == {}

@pytest.mark.parametrize('params,stage,err,msg', [
    ({'lr': 0.01, 'depth': 3, 'gamma': 16}, 'train', ConfigError,
     "stage 'train' (stages/05_train.ipynb) has no parameter(s) 'depth', 'gamma'; its parameters are epochs, lr, bs, arch, width, size"),
    ({'depth': 3}, 'train', ConfigError, ": leave those out of the sweep's best parameters, or add them to the notebook's parameters cell"),
    ({'bs': 'big'}, 'train', ParameterError, "bs"),
    ({'lr': 0.01}, 'trian', ConfigError, "no stage named 'trian'"),
])
def test_apply_best_refusals_leave_the_file_alone(project, params, stage, err, msg):
    f = project.root/'pipeline.yaml'
    before = f.read_text()
    with pytest.raises(err) as e: apply_best(project.root, params, stage)
    assert msg in str(e.value), str(e.value)
    assert f.read_text() == before

def test_apply_best_refuses_a_one_line_stage(project):
    import json, yaml
    f = project.root/'pipeline.yaml'
    lines = f.read_text().splitlines()
    i = j = lines.index('  analyze:')
    while lines[j + 1].startswith('    '): j += 1
    lines[i:j + 1] = ['  analyze: ' + json.dumps(yaml.safe_load('\n'.join(l[4:] for l in lines[i + 1:j + 1])))]   # one flow line
    f.write_text('\n'.join(lines) + '\n')
    with pytest.raises(ConfigError, match="stage 'analyze' must be written as a block"): apply_best(project.root, {}, 'analyze')


# --- the sweep notebook of the digits example, under papermill

def test_sweep_notebook_runs_and_applies(project):
    import papermill as pm, json
    (project.root/'tiny.yaml').write_text('name: tiny\nmethod: random\nmetric: {name: valid_accuracy, goal: maximize}\nparameters:\n'
                                          '  lr: {min: 0.003, max: 0.03, distribution: log_uniform_values}\n  width: {values: [8, 16]}\n'
                                          '  epochs: {value: 1}\n')
    before = (project.root/'pipeline.yaml').read_text()
    out = project.root/'runs'/'sweep.ipynb'
    out.parent.mkdir(exist_ok=True)
    t0 = time.time()
    pm.execute_notebook(project.root/'sweeps'/'sweep.ipynb', out, cwd=project.root/'sweeps', kernel_name='python3', progress_bar=False,
                        parameters={'config': 'tiny.yaml', 'trials': 2, 'seed': 0, 'apply': True}, execution_timeout=120)
    print(f"papermill: {time.time() - t0:.1f} s")
    nb = json.loads(out.read_text())
    outputs = [o for c in nb['cells'] for o in c.get('outputs', [])]
    text = ''.join(''.join(o.get('text', '')) + ''.join(o.get('data', {}).get('text/plain', '')) for o in outputs)
    assert 'engine: local' in text and 'valid_accuracy' in text
    assert any('image/png' in o.get('data', {}) for o in outputs)   # the parallel-coordinates plot
    from neuronb.pipeline.project import load_project
    params = load_project(project.root).stage('train').parameters
    assert set(params) == {'epochs', 'lr', 'width', 'frame_ink', 'wandb_project'} and params['epochs'] == 1 and 0.003 <= params['lr'] <= 0.03
    after = (project.root/'pipeline.yaml').read_text()
    assert [l for l in after.splitlines() if '#' in l] == [l for l in before.splitlines() if '#' in l]
    assert (project.root/'.neuronb'/'sweeps.db').is_file()
