"""What running a stage through neuronb's runner costs on top of its own compute.

The same small stage (a few cells of numpy work, ~0.5 s, recording figures with `neuronb.core.record`) is run
N times through `run_notebook` (a fresh Jupyter kernel per stage, executed notebook + HTML copy + status file)
and N times as plain Python in this process (`exec` of the same code cells). One untimed warm-up of each comes
first, so the figures are per stage once papermill/nbconvert and numpy are imported (the one-time import cost
of the first stage is printed separately). Figures are medians: other work on a small machine makes single
runs jump.

Run: `python bench/stage_overhead.py`. The last line is one JSON object.
"""
import contextlib, io, json, os, shutil, statistics, sys, tempfile, time
from pathlib import Path

os.environ.setdefault('WANDB_MODE', 'disabled')
for var in ('OMP_NUM_THREADS', 'OPENBLAS_NUM_THREADS', 'MKL_NUM_THREADS'):  # one BLAS thread in both (kernels inherit
    os.environ.setdefault(var, '1')                                           # it): less noise on a shared machine
RUNS = 3
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


def main():
    from neuronb.pipeline.runner import run_notebook
    tmp = Path(tempfile.mkdtemp(prefix='nb-bench-'))
    stage = write_stage(tmp/'stage.ipynb')
    runner = lambda i, html=True: run_notebook(stage, tmp/'runs'/f'stage_{i}.ipynb', timeout=120, html=html)
    cold, res = timed(lambda: runner('warmup'))
    assert res.status == 'ok', res.error
    plain_cold, _ = timed(plain_run)
    times = {'nb': [], 'nb_nohtml': [], 'plain': []}
    for i in range(RUNS):  # interleaved, so drift in machine load hits all alike
        for key, fn in [('nb', lambda: runner(i)), ('nb_nohtml', lambda: runner(f'{i}_nohtml', html=False)), ('plain', plain_run)]:
            t, res = timed(fn)
            if key != 'plain': assert res.status == 'ok', res.error
            times[key].append(t)
    shutil.rmtree(tmp)
    med = {k: statistics.median(v) for k, v in times.items()}
    nb_s, plain_s = med['nb'], med['plain']
    print(f"stage: {len(CELLS)} cells, numpy SVDs; {RUNS} runs each after one warm-up (python {sys.version.split()[0]}, {os.cpu_count()} CPUs)")
    print(f"{'':30}{'median s':>9}{'min s':>9}{'max s':>9}")
    for key, label in [('nb', 'run_notebook (kernel)'), ('nb_nohtml', 'run_notebook, html=False'), ('plain', 'plain Python in-process')]:
        print(f"{label:30}{med[key]:9.3f}{min(times[key]):9.3f}{max(times[key]):9.3f}")
    print(f"{'overhead per stage':30}{nb_s - plain_s:9.3f}   ({nb_s / plain_s:.1f}x the compute)")
    print(f"{'first stage (cold imports)':30}{cold:9.3f}   (plain first run {plain_cold:.3f})")
    print(json.dumps({'bench': 'stage_overhead', 'value': round(nb_s - plain_s, 3), 'unit': 's/stage',
                      'neuronb_s': round(nb_s, 3), 'plain_s': round(plain_s, 3), 'runs': RUNS}))

if __name__ == '__main__':
    main()
