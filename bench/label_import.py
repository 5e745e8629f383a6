"""Importing a 100,000-row crowdsourcing table into a project's label events and aggregating it.

A project's `digits`-style dataset holds ITEMS small files (text: what matters here is the table); a Toloka results TSV has ANSWERS answers per item from a
pool of workers of varied reliability (100,000 rows). The timed path is what `neuronb label import` plus the label
stage do: `import_labels` (read and check the TSV, match each row to a dataset item by file name, one LabelEvent per
row, one immutable batch file) and then `aggregate` over the project's events (majority vote; Dawid-Skene is timed
too and reported). The baseline, in the same run on the same file: `pandas.read_csv(path, sep='\\t')`, which only
parses the text.

Run: `python bench/label_import.py`. The last line is JSON: `value` = rows per second of import + majority
aggregation; `vs_pandas_read` = that speed against pandas' plain reading speed.
"""
import json, os, statistics, sys, tempfile, time
from pathlib import Path
import numpy as np

os.environ.setdefault('WANDB_MODE', 'disabled')
ITEMS, ANSWERS, WORKERS, RUNS = 20_000, 5, 200, 3


def make_project(root):
    "A project whose `digits` dataset has ITEMS tiny distinct files."
    from neuronb.pipeline.init import init_project
    from neuronb.data.versions import add_files, commit
    project = init_project(root/'proj')
    raw = root/'raw'; raw.mkdir()
    for i in range(ITEMS): (raw/f'img{i:06d}.txt').write_bytes(f'item {i}'.encode())
    add_files(project.store(), raw, dataset='digits', progress=False)
    commit(project.store(), 'digits', 'bench items')
    return project


def make_tsv(path, seed=0):
    "A Toloka-style results TSV: ANSWERS answers per item, workers right with their own probability."
    import pandas as pd
    rng = np.random.default_rng(seed)
    item = np.repeat(np.arange(ITEMS), ANSWERS)
    worker = rng.integers(0, WORKERS, len(item))
    skill = rng.uniform(0.6, 0.98, WORKERS)
    truth = rng.integers(0, 10, ITEMS)
    right = rng.random(len(item)) < skill[worker]
    label = np.where(right, truth[item], (truth[item] + rng.integers(1, 10, len(item))) % 10)
    start = pd.Timestamp('2026-11-01') + pd.to_timedelta(rng.integers(0, 10**6, len(item)), unit='s')
    pd.DataFrame({'INPUT:image': [f'img{i:06d}.txt' for i in item], 'OUTPUT:result': label.astype(str),
                  'ASSIGNMENT:assignment_id': [f'A{i:07d}' for i in range(len(item))],
                  'ASSIGNMENT:worker_id': [f'w{w:03d}' for w in worker], 'ASSIGNMENT:status': 'APPROVED',
                  'ASSIGNMENT:started': start.strftime('%Y-%m-%dT%H:%M:%S'),
                  'ASSIGNMENT:submitted': (start + pd.to_timedelta(rng.integers(2, 30, len(item)), unit='s')).strftime('%Y-%m-%dT%H:%M:%S'),
                  }).to_csv(path, sep='\t', index=False)
    return truth


def main():
    import pandas as pd
    from neuronb.label.project import import_labels, project_events, IMPORTS
    from neuronb.label.events import aggregate
    from neuronb.data.storage import open_store
    root = Path(tempfile.mkdtemp())
    print(f"setting up: {ITEMS} items, {ITEMS * ANSWERS} answers from {WORKERS} workers ...", flush=True)
    project, truth = make_project(root), make_tsv(root/'results.tsv')
    aggregate(project_events(project.store()).head(0), 'majority')  # warm crowd-kit's import
    pandas_s, import_s, agg_s, ds_s = [], [], [], []
    for run in range(RUNS):
        t = time.perf_counter(); pd.read_csv(root/'results.tsv', sep='\t'); pandas_s.append(time.perf_counter() - t)
        store = project.store()
        store.fs.rm(store.path(IMPORTS), recursive=True) if store.exists(IMPORTS) else None  # a fresh import each run
        t = time.perf_counter(); res = import_labels(project, root/'results.tsv'); import_s.append(time.perf_counter() - t)
        t = time.perf_counter(); agg = aggregate(project_events(project.store()), 'majority'); agg_s.append(time.perf_counter() - t)
        print(f"run {run + 1}: pandas read {pandas_s[-1]:.2f}s, import {import_s[-1]:.2f}s ({res['imported']} events), "
              f"aggregate {agg_s[-1]:.2f}s", flush=True)
    t = time.perf_counter(); ds = aggregate(project_events(project.store()), 'dawid-skene'); ds_s.append(time.perf_counter() - t)
    names = {f'img{i:06d}.txt': str(v) for i, v in enumerate(truth)}
    acc = lambda a: float(np.mean([names[n] == l for n, l in zip(a.name, a.label)]))
    rows = ITEMS * ANSWERS
    ours, base = statistics.median(import_s) + statistics.median(agg_s), statistics.median(pandas_s)
    out = {'name': 'label_import', 'value': round(rows / ours, 1), 'unit': 'rows/s', 'target': None,
           'vs_pandas_read': round(base / ours, 3), 'pandas_rows_per_s': round(rows / base, 1),
           'import_s': round(statistics.median(import_s), 3), 'majority_s': round(statistics.median(agg_s), 3),
           'dawid_skene_s': round(ds_s[0], 3), 'rows': rows, 'majority_accuracy': round(acc(agg), 4),
           'dawid_skene_accuracy': round(acc(ds), 4)}
    print(f"import + aggregate: {out['value']:.0f} rows/s; pandas only reading the file: {out['pandas_rows_per_s']:.0f} rows/s "
          f"(ratio {out['vs_pandas_read']}); Dawid-Skene {ds_s[0]:.1f}s, accuracy {out['dawid_skene_accuracy']} vs majority "
          f"{out['majority_accuracy']}")
    print(json.dumps(out))


if __name__ == '__main__':
    sys.exit(main())
