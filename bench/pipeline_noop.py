"""pipeline_noop: wall seconds of `neuronb run` on the unchanged example pipeline (target <= 0.5 s).

Runs the built-in example once (tiny settings), then times `neuronb run` again as a user would type it:
a new process each time, nothing to do. DVC-style and plain-papermill baselines are timed only if their
commands are installed; otherwise only neuronb's figure is printed.
"""
import json, os, shutil, statistics, subprocess, sys, tempfile, time
from pathlib import Path

BIN = Path(sys.executable).parent
ENV = {**os.environ, 'WANDB_MODE': 'disabled'}
TINY = ['-p', 'ingest.limit=300', '-p', 'train.epochs=1']


def timed(cmd, cwd=None):
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, env=ENV, cwd=cwd)
    if out.returncode: raise SystemExit(f"{' '.join(map(str, cmd))} failed:\n{out.stdout}\n{out.stderr}")
    return time.perf_counter() - t0, out.stdout


def main(repeats=7):
    work = Path(tempfile.mkdtemp(prefix='neuronb-bench-'))
    try:
        root = work/'digits'
        timed([BIN/'neuronb', 'init', root])
        first, _ = timed([BIN/'neuronb', 'run', root, *TINY])
        noop = []
        for _ in range(repeats):
            s, out = timed([BIN/'neuronb', 'run', root, *TINY])
            assert 'Everything is up to date' in out, out
            noop.append(s)
        python_start, _ = timed([sys.executable, '-c', 'pass'])
        baselines = {}
        if shutil.which('dvc'): baselines['dvc'] = 'installed, not set up for this project: not timed'
        if shutil.which('papermill'):
            nb = root/'stages/03_prepare.ipynb'
            s, _ = timed([shutil.which('papermill'), str(nb), str(work/'out.ipynb'), '--cwd', str(nb.parent)])
            baselines['papermill_one_stage_s'] = round(s, 3)   # plain papermill has no caching: it always reruns
        print(f"example pipeline, first run {first:.1f}s; no-op re-run over {repeats} runs: "
              f"median {statistics.median(noop):.3f}s, best {min(noop):.3f}s (python start alone {python_start:.3f}s)")
        for k, v in baselines.items(): print(f"baseline {k}: {v}")
        print(json.dumps({'bench': 'pipeline_noop', 'value': round(statistics.median(noop), 3), 'unit': 's',
                          'best_s': round(min(noop), 3), 'first_run_s': round(first, 1),
                          'python_start_s': round(python_start, 3), 'target_s': 0.5, **baselines}))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == '__main__':
    main()
