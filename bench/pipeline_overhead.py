"""pipeline_overhead: seconds per stage that `neuronb run` adds to the example pipeline's own compute (target <= 1.5).

Measured in one run, on the built-in example with small settings, every stage forced to run:
- neuronb: `neuronb run --force` (each stage in its own Jupyter kernel, executed notebooks, HTML, registry);
- plain:   the same stage notebooks' code cells executed in order in one plain Python process, with the same
           parameters and working directory (the compute itself, imports paid once);
- papermill: bare sequential `papermill` commands, one per stage, as a team without neuronb would chain them.
value = (neuronb wall - plain wall) / stages.
"""
import json, os, shutil, statistics, subprocess, sys, tempfile, textwrap, time
from pathlib import Path

BIN = Path(sys.executable).parent
ENV = {**os.environ, 'WANDB_MODE': 'disabled', 'MPLBACKEND': 'Agg'}
PARAMS = {'ingest': {'limit': 600}, 'train': {'epochs': 3, 'bs': 32, 'lr': 0.01}}

PLAIN = textwrap.dedent('''
    import json, os, sys, time
    from pathlib import Path
    root, params = Path(sys.argv[1]), json.loads(sys.argv[2])
    from neuronb.pipeline.project import load_project, check_parameters
    project = load_project(root)
    merged = check_parameters(project, params)
    t0 = time.perf_counter()
    for s in project.stages:
        nb = json.loads((root/s.notebook).read_text())
        os.chdir((root/s.notebook).parent)
        ns = {'__name__': '__main__'}
        exec(''.join(f"{k} = {v!r}\\n" for k, v in merged[s.name].items()), ns)
        for cell in nb['cells']:
            if cell['cell_type'] == 'code' and 'parameters' not in cell['metadata'].get('tags', []):
                exec(compile(''.join(cell['source']), s.notebook, 'exec'), ns)
    print(json.dumps({'plain_s': time.perf_counter() - t0}))
''')


def run(cmd, cwd=None):
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, env=ENV, cwd=cwd)
    if out.returncode: raise SystemExit(f"{' '.join(map(str, cmd))} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return time.perf_counter() - t0, out.stdout


def overrides():
    return [a for st, ps in PARAMS.items() for k, v in ps.items() for a in ('-p', f'{st}.{k}={v}')]


def papermill_chain(root, out):
    sys.path.insert(0, str(BIN.parent))
    from neuronb.pipeline.project import load_project
    t0 = time.perf_counter()
    for s in load_project(root).stages:
        nb = root/s.notebook
        args = [a for k, v in PARAMS.get(s.name, {}).items() for a in ('-p', k, str(v))]
        run([BIN/'papermill', str(nb), str(out/f'{s.name}.ipynb'), '--cwd', str(nb.parent), '--no-progress-bar', *args])
    return time.perf_counter() - t0


def main(repeats=2):
    work = Path(tempfile.mkdtemp(prefix='neuronb-bench-'))
    try:
        root = work/'digits'
        run([BIN/'neuronb', 'init', root])
        run([BIN/'neuronb', 'run', root, *overrides()])                      # warm-up: file caches, .pyc
        n = len([l for l in (root/'pipeline.yaml').read_text().splitlines() if l.startswith('    notebook:')])
        rows = {'neuronb': [], 'plain': [], 'papermill': []}
        for _ in range(repeats):
            rows['neuronb'].append(run([BIN/'neuronb', 'run', root, '--force', *overrides()])[0])
            rows['plain'].append(json.loads(run([sys.executable, '-c', PLAIN, str(root), json.dumps(PARAMS)])[1].splitlines()[-1])['plain_s'])
            (work/'pm').mkdir(exist_ok=True)
            rows['papermill'].append(papermill_chain(root, work/'pm'))
        med = {k: statistics.median(v) for k, v in rows.items()}
        over, pm_over = (med['neuronb'] - med['plain']) / n, (med['papermill'] - med['plain']) / n
        print(f"example pipeline, {n} stages, {repeats} rounds (median wall seconds)")
        for k in rows: print(f"  {k:<10} {med[k]:7.2f}s   overhead/stage {(med[k]-med['plain'])/n:5.2f}s")
        print(json.dumps({'bench': 'pipeline_overhead', 'value': round(over, 3), 'unit': 's/stage', 'stages': n,
                          'neuronb_s': round(med['neuronb'], 2), 'plain_compute_s': round(med['plain'], 2),
                          'papermill_s': round(med['papermill'], 2), 'papermill_overhead_s': round(pm_over, 3),
                          'target_s': 1.5}))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == '__main__':
    main()
