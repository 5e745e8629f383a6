"""Sweep scaling: trials per minute with 2 local workers against 1, the same config and trial count.

Every trial is a real short training run (`digits_objective`: a small CNN on the digits example). With 1 worker
the trials run in this process with all cores as torch threads; with 2, `run_local_sweep` starts 2 worker processes
with cores/2 threads each, so on a 2-core machine both use the same cores. Throughput is counted from the trials'
own completion times, per worker, from its first trial's end to its last trial's end (a new worker's first trial
also pays its imports and data loading: that start-up is reported separately as the wall-clock ratio). The two
settings alternate for ROUNDS rounds and each is summarised by its median, so a load change on a shared machine
hits both. Usage: python bench/sweep_scaling.py [TRIALS] [ROUNDS]
"""
import json, os, shutil, sys, tempfile, time
os.environ.setdefault('WANDB_MODE', 'disabled')

import statistics
TRIALS = int(sys.argv[1]) if len(sys.argv) > 1 else 16
ROUNDS = int(sys.argv[2]) if len(sys.argv) > 2 else 3
CFG = {'method': 'random', 'metric': {'name': 'valid_accuracy', 'goal': 'maximize'},
       'parameters': {'lr': {'min': 3e-3, 'max': 3e-2, 'distribution': 'log_uniform_values'},
                      'epochs': {'value': 8}, 'size': {'value': 16}, 'width': {'value': 16}, 'bs': {'value': 64}}}

def steady_rate(study) -> float:
    "Trials per minute: per worker, trials completed after its first one over the time they took; summed."
    ends = {}
    for t in study.trials:
        if t.state.name == 'COMPLETE': ends.setdefault(t.user_attrs['worker_pid'], []).append(t.datetime_complete.timestamp())
    return sum(60 * (len(e) - 1) / (max(e) - min(e)) for e in ends.values() if len(e) > 1)

def main():
    import torch
    from neuronb.sweep import run_local_sweep, digits_objective, _cores
    cores = _cores()
    torch.set_num_threads(cores)   # one worker: all the cores
    digits_objective({'epochs': 1, 'size': 16, 'width': 16}, lambda s, v: False)   # imports and data, before timing
    tmp = tempfile.mkdtemp()
    runs = {1: [], 2: []}
    for r in range(ROUNDS):
        for workers in (1, 2):
            t0 = time.perf_counter()
            study = run_local_sweep(CFG, digits_objective, n_trials=TRIALS, workers=workers, seed=0,
                                    storage=f"sqlite:///{tmp}/w{workers}_{r}.db", study_name=f"w{workers}")
            wall = time.perf_counter() - t0
            assert sum(t.state.name == 'COMPLETE' for t in study.trials) == TRIALS
            runs[workers].append((wall, steady_rate(study)))
            print(f"round {r + 1}, {workers} worker(s): {wall:6.1f} s wall, {runs[workers][-1][1]:6.1f} trials/min steady, "
                  f"{60 * TRIALS / wall:6.1f} trials/min wall (start-up included)", flush=True)
    shutil.rmtree(tmp)
    res = {w: {'wall_s': round(statistics.median(x[0] for x in v), 2),
               'steady_trials_per_min': round(statistics.median(x[1] for x in v), 2),
               'steady_trials_per_min_each_round': [round(x[1], 2) for x in v]} for w, v in runs.items()}
    speedup = res[2]['steady_trials_per_min'] / res[1]['steady_trials_per_min']
    wall_speedup = res[1]['wall_s'] / res[2]['wall_s']
    print(f"speed-up with 2 workers: {speedup:.2f}x steady, {wall_speedup:.2f}x wall ({TRIALS} trials x {ROUNDS} rounds, {cores} cores, "
          f"{os.getloadavg()[0]:.1f} load)")
    print(json.dumps({'bench': 'sweep_scaling', 'name': 'sweep_scaling', 'value': round(speedup, 3), 'unit': 'x', 'target': '>= 1.6',
                      'value_is': 'trials per minute with 2 local workers / with 1 (steady state, same config and trials)',
                      'wall_speedup': round(wall_speedup, 3), 'trials': TRIALS, 'rounds': ROUNDS, 'cores': cores,
                      'one_worker': res[1], 'two_workers': res[2], 'trial': '8 epochs, digits 16 px, width 16, bs 64',
                      'load_avg_1min': round(os.getloadavg()[0], 2)}))

if __name__ == '__main__':
    main()
