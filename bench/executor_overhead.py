"""executor_overhead: seconds per stage that the Dask executor (a LocalCluster of 2 worker processes started for the
run) adds over the local executor (warm pooled kernels), on the built-in example with small settings, every stage
forced to run; both measured in the same run, on the same project, alternating, 2 rounds each.

Run: `python bench/executor_overhead.py [--rounds 2]`. The last line is one JSON object: `value` = (dask wall - local
wall) / stages, in seconds; `ratio` = dask wall / local wall.
"""
import argparse, json, os, shutil, statistics, subprocess, sys, tempfile, time
from pathlib import Path

BIN = Path(sys.executable).parent
ENV = {**os.environ, 'WANDB_MODE': 'disabled', 'MPLBACKEND': 'Agg'}
SMALL = ['-p', 'ingest.limit=600', '-p', 'train.epochs=3', '-p', 'train.bs=32', '-p', 'train.lr=0.01']


def neuronb(*args) -> float:
    t0 = time.perf_counter()
    out = subprocess.run([str(BIN/'neuronb'), *map(str, args)], capture_output=True, text=True, env=ENV)
    if out.returncode: sys.exit(f"neuronb {' '.join(map(str, args))} failed:\n{out.stdout[-2000:]}{out.stderr[-2000:]}")
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--rounds', type=int, default=2)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix='nb-executor-'))
    try:
        root = tmp/'example'
        neuronb('init', root)
        neuronb('run', root, *SMALL)   # data in storage, every stage run once: the forced runs below measure the same work
        stages = len([l for l in (root/'pipeline.yaml').read_text().splitlines() if l.startswith('    notebook: stages/')])
        times = {'local': [], 'dask': []}
        for _ in range(args.rounds):
            for name in times: times[name].append(neuronb('run', root, *SMALL, '--force', '--executor', name))
    finally: shutil.rmtree(tmp, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"example pipeline, {stages} stages forced, {args.rounds} rounds (median wall seconds)")
    for k, v in med.items(): print(f"  {k:6} {v:7.2f}s   runs {', '.join(f'{t:.1f}' for t in times[k])}")
    print(json.dumps({'bench': 'executor_overhead', 'name': 'executor_overhead', 'value': round((med['dask'] - med['local']) / stages, 3),
                      'unit': 's/stage', 'value_is': 'the Dask LocalCluster executor (2 workers) over the local executor, per stage',
                      'local_s': round(med['local'], 2), 'dask_s': round(med['dask'], 2), 'ratio': round(med['dask'] / med['local'], 3),
                      'stages': stages}))


if __name__ == '__main__':
    main()
