"Local sweep engine: config validation, grid coverage, seeded random, hyperband pruning, parallel SQLite workers."
import os
os.environ.setdefault('WANDB_MODE', 'disabled')
import pytest
from neuronb.core import ConfigError
from neuronb.sweep import parse_sweep_config, run_local_sweep, digits_objective, results_table

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
    assert len(pids) == 2 and os.getpid() not in pids
    assert len({t.params['lr'] for t in study.trials}) == 4   # each worker has its own sampler seed

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
