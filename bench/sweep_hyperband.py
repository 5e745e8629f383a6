"""Sweep hyperband: the same random search (same seed, same trials) with and without hyperband early termination.

Every trial is a real training run (`digits_objective`) of up to MAX_EPOCHS epochs; the config's
`early_terminate: {type: hyperband, min_iter: 1, eta: 3}` checks trials after epochs 1, 3 and 9 and stops those
that trail. `value` = epochs trained with hyperband / without; the best validation accuracy of each search is
reported too (target: within 1 point).
Usage: python bench/sweep_hyperband.py [TRIALS]
"""
import json, os, shutil, sys, tempfile, time
os.environ.setdefault('WANDB_MODE', 'disabled')

TRIALS = int(sys.argv[1]) if len(sys.argv) > 1 else 27
MAX_EPOCHS = 9
CFG = {'method': 'random', 'metric': {'name': 'valid_accuracy', 'goal': 'maximize'},
       'parameters': {'lr': {'min': 1e-3, 'max': 0.3, 'distribution': 'log_uniform_values'},
                      'bs': {'values': [32, 64, 128]}, 'width': {'values': [8, 16]},
                      'epochs': {'value': MAX_EPOCHS}, 'size': {'value': 16}}}
HYPERBAND = {'type': 'hyperband', 'min_iter': 1, 'eta': 3, 'max_iter': MAX_EPOCHS}

def main():
    from neuronb.sweep import run_local_sweep, results_table, digits_objective
    digits_objective({'epochs': 1, 'size': 16, 'width': 8}, lambda s, v: False)   # imports and data, before timing
    tmp = tempfile.mkdtemp()
    res = {}
    for name, cfg in [('without', CFG), ('with', {**CFG, 'early_terminate': HYPERBAND})]:
        t0 = time.perf_counter()
        study = run_local_sweep(cfg, digits_objective, n_trials=TRIALS, seed=0, storage=f"sqlite:///{tmp}/{name}.db", study_name=name)
        wall = time.perf_counter() - t0
        df = results_table(study)
        res[name] = {'epochs': int(df.epochs_run.sum()), 'best_valid_accuracy': round(study.best_value, 4),
                     'pruned': int((df.state == 'PRUNED').sum()), 'wall_s': round(wall, 1),
                     'params': [t.params for t in sorted(study.trials, key=lambda t: t.number)]}
        print(f"{name:>7} hyperband: {res[name]['epochs']:4d} epochs, {res[name]['pruned']:2d} trials stopped early, "
              f"best valid accuracy {study.best_value:.4f}, {wall:.1f} s", flush=True)
    shutil.rmtree(tmp)
    assert res['with']['params'] == res['without']['params'], 'the two searches must try the same parameters'
    ratio = res['with']['epochs'] / res['without']['epochs']
    gap = 100 * (res['without']['best_valid_accuracy'] - res['with']['best_valid_accuracy'])
    print(f"epochs with / without hyperband: {ratio:.3f}; best accuracy {gap:+.2f} points lower with hyperband")
    print(json.dumps({'bench': 'sweep_hyperband', 'name': 'sweep_hyperband', 'value': round(ratio, 3), 'unit': 'x', 'target': '<= 0.5',
                      'value_is': 'epochs trained with hyperband / without, same random search',
                      'accuracy_target': 'best within 1 point', 'accuracy_gap_points': round(gap, 2),
                      'best_accuracy_with': res['with']['best_valid_accuracy'], 'best_accuracy_without': res['without']['best_valid_accuracy'],
                      'epochs_with': res['with']['epochs'], 'epochs_without': res['without']['epochs'],
                      'pruned_trials': res['with']['pruned'], 'trials': TRIALS, 'max_epochs': MAX_EPOCHS,
                      'wall_s_with': res['with']['wall_s'], 'wall_s_without': res['without']['wall_s'],
                      'early_terminate': HYPERBAND, 'load_avg_1min': round(os.getloadavg()[0], 2)}))

if __name__ == '__main__':
    main()
