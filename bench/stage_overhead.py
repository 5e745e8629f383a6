"""What running a stage through neuronb's runner costs on top of its own compute.

The same small stage (a few cells of numpy work, ~0.5 s, recording figures with `neuronb.core.record`) is run
N times through `run_notebook` (a fresh Jupyter kernel per stage, executed notebook + HTML copy + status file)
and N times as plain Python in this process (`exec` of the same code cells). One untimed warm-up of each comes
first, so the figures are per stage once papermill/nbconvert and numpy are imported (the one-time import cost
of the first stage is printed separately). Figures are medians: other work on a small machine makes single
runs jump.

A pipeline runs stages back to back, so the same stage is also run as a sequence of SEQ stages, once with a
kernel started for each stage and once with a `KernelPool` that starts the next stage's kernel while the
current one runs (pool creation and shutdown inside the timing). Overhead per stage = (sequence wall time -
SEQ x plain) / SEQ.

A third sequence adds `preload` (the pool's kernels import the stage's modules while they wait).

Run: `python bench/stage_overhead.py`. The last line is one JSON object: `value` is the overhead per stage
with the pool, `no_pool_overhead_s` the same without it, `pool_preload_overhead_s` with the pool and
preload, `single_stage_overhead_s` one stage alone on a fresh kernel (this benchmark's `value` before the
pool existed).
"""
import contextlib, io, json, os, shutil, statistics, sys, tempfile, time
from pathlib import Path

os.environ.setdefault('WANDB_MODE', 'disabled')
for var in ('OMP_NUM_THREADS', 'OPENBLAS_NUM_THREADS', 'MKL_NUM_THREADS'):  # one BLAS thread in both (kernels inherit
    os.environ.setdefault(var, '1')                                           # it): less noise on a shared machine
RUNS = 3
SEQ = 4  # stages in a pipeline sequence
CELLS = [
    ("import numpy as np\nfrom neuronb.core import record", []),
    ("reps = 40\nsize = 300\nseed = 0", ['parameters']),
    ("rng = np.random.default_rng(seed)\nvals = []", []),
    ("for _ in range(reps):\n    a = rng.standard_normal((size, size))\n    vals.append(np.linalg.svd(a @ a.T, compute_uv=False).max())", []),
    ("record('top_singular', float(np.mean(vals)))\nrecord('reps', reps)", []),
]


def write_stage(path):
    "The stage notebook as a plain dict, parameters cell tagged."
    cells = [{'cell_type': 'code', 'id': f'c{i}', 'execution_count': None, 'metadata': {'tags': tags}, 'outputs': [], 'source': src}
             for i, (src, tags) in enumerate(CELLS)]
    nb = {'cells': cells, 'metadata': {'kernelspec': {'name': 'python3', 'display_name': 'Python 3', 'language': 'python'}},
          'nbformat': 4, 'nbformat_minor': 5}
    path.write_text(json.dumps(nb))
    return path


def plain_run():
    "The same code cells, executed in this process (what the stage costs without any runner)."
    ns = {}
    with contextlib.redirect_stdout(io.StringIO()):  # `record` prints outside a kernel
        for src, _ in CELLS: exec(compile(src, '<cell>', 'exec'), ns)
    return ns


def timed(fn):
    t = time.perf_counter(); out = fn(); return time.perf_counter() - t, out


PRELOAD = ['numpy', 'neuronb.core']  # what the stage imports


def sequence(stage, folder, pool_kw=None):
    "SEQ stages back to back, as a pipeline runs them; with `pool_kw`, on kernels a KernelPool starts ahead."
    from neuronb.pipeline.kernels import KernelPool
    from neuronb.pipeline.runner import run_notebook
    pool = KernelPool(size=1, cwd=stage.parent, **pool_kw) if pool_kw is not None else None
    try:
        for j in range(SEQ):
            res = run_notebook(stage, folder/f'stage_{j}.ipynb', timeout=120, pool=pool)
            assert res.status == 'ok', res.error
    finally:
        if pool: pool.shutdown()


def main():
    from neuronb.pipeline.runner import run_notebook
    tmp = Path(tempfile.mkdtemp(prefix='nb-bench-'))
    stage = write_stage(tmp/'stage.ipynb')
    runner = lambda i, html=True: run_notebook(stage, tmp/'runs'/f'stage_{i}.ipynb', timeout=120, html=html)
    cold, res = timed(lambda: runner('warmup'))
    assert res.status == 'ok', res.error
    plain_cold, _ = timed(plain_run)
    times = {'nb': [], 'nb_nohtml': [], 'plain': [], 'seq': [], 'seq_pool': [], 'seq_preload': []}
    for i in range(RUNS):  # interleaved, so drift in machine load hits all alike
        for key, fn in [('nb', lambda: runner(i)), ('nb_nohtml', lambda: runner(f'{i}_nohtml', html=False)), ('plain', plain_run),
                        ('seq', lambda: sequence(stage, tmp/f'seq_{i}')), ('seq_pool', lambda: sequence(stage, tmp/f'pool_{i}', {})),
                        ('seq_preload', lambda: sequence(stage, tmp/f'preload_{i}', {'preload': PRELOAD}))]:
            t, res = timed(fn)
            if key.startswith('nb'): assert res.status == 'ok', res.error
            times[key].append(t)
    shutil.rmtree(tmp)
    med = {k: statistics.median(v) for k, v in times.items()}
    nb_s, plain_s = med['nb'], med['plain']
    per = {k: (med[k] - SEQ * plain_s) / SEQ for k in ('seq', 'seq_pool', 'seq_preload')}
    print(f"stage: {len(CELLS)} cells, numpy SVDs; {RUNS} runs each after one warm-up (python {sys.version.split()[0]}, {os.cpu_count()} CPUs)")
    print(f"{'':34}{'median s':>9}{'min s':>9}{'max s':>9}")
    for key, label in [('nb', 'run_notebook (kernel)'), ('nb_nohtml', 'run_notebook, html=False'), ('plain', 'plain Python in-process'),
                       ('seq', f'{SEQ} stages, a kernel each'), ('seq_pool', f'{SEQ} stages, KernelPool(size=1)'),
                       ('seq_preload', f'{SEQ} stages, pool + preload')]:
        print(f"{label:34}{med[key]:9.3f}{min(times[key]):9.3f}{max(times[key]):9.3f}")
    print(f"{'overhead per stage, one stage':34}{nb_s - plain_s:9.3f}   ({nb_s / plain_s:.1f}x the compute)")
    print(f"{'overhead per stage, sequence':34}{per['seq']:9.3f}   (wall {med['seq'] / (SEQ * plain_s):.2f}x the compute)")
    print(f"{'overhead per stage, with pool':34}{per['seq_pool']:9.3f}   (wall {med['seq_pool'] / (SEQ * plain_s):.2f}x the compute)")
    print(f"{'overhead per stage, pool+preload':34}{per['seq_preload']:9.3f}   (wall {med['seq_preload'] / (SEQ * plain_s):.2f}x the compute; preload={PRELOAD})")
    print(f"{'first stage (cold imports)':34}{cold:9.3f}   (plain first run {plain_cold:.3f})")
    print(json.dumps({'bench': 'stage_overhead', 'value': round(per['seq_pool'], 3), 'unit': 's/stage',
                      'value_is': f'overhead per stage in a {SEQ}-stage sequence with a KernelPool',
                      'no_pool_overhead_s': round(per['seq'], 3), 'single_stage_overhead_s': round(nb_s - plain_s, 3),
                      'pool_preload_overhead_s': round(per['seq_preload'], 3),
                      'seq_pool_s': round(med['seq_pool'], 3), 'seq_s': round(med['seq'], 3), 'seq_stages': SEQ,
                      'neuronb_s': round(nb_s, 3), 'plain_s': round(plain_s, 3), 'runs': RUNS}))

if __name__ == '__main__':
    main()
