"""How many requests the monitor needs to see a drift: 30% of the traffic inverted (light and dark swapped), on the
digits example's champion, with zero false alarms over ten windows of clean held-out traffic of the same size.

The traffic is the example's digits that were never ingested (the project trains on every other one, so both
sides come from the same writers), in a random order, answered as `neuronb serve` answers an upload, so the rows are
what the server logs. For each window size n (25, 50,
75, ...) the drift window is the first n requests of a drifted stream, and the clean windows are ten random
draws of n held-out pictures: the smallest n at which the drift window is called drift while none of the ten clean
windows is, is the value.

The baseline, measured in the same run on the same windows, is Evidently's default rule for a dataset under 1,000
reference rows: a KS test per numeric column (brightness, contrast, confidence) and chi-squared for the predicted
class, each at p < 0.05, and the dataset drifted when at least half of the columns drift.

Run: `python bench/monitor_detection.py [--project DIR]` (without --project the example is trained first, about a
minute). The last line is one JSON object: `value` is neuronb's requests to detection (target <= 500); `ratio` is the
baseline's requests over neuronb's (a lower bound, '> x', when the baseline does not detect it within the stream).
"""
import argparse, json, shutil, sys, tempfile, time
from pathlib import Path
import numpy as np
sys.path.insert(0, str(Path(__file__).parent))
from _monitor import make_project, traffic, inverted, answered, champion_reference


def evidently_rule(ref, win) -> bool:
    "Evidently's default dataset drift under 1,000 reference rows: half of the columns drift at p < 0.05 (KS, chi-squared)."
    from scipy import stats
    ps = [stats.ks_2samp(ref[c].astype(float), win[c].astype(float)).pvalue for c in ('mean', 'std', 'probability')]
    classes = sorted(set(ref.label) | set(win.label))
    ps.append(stats.chi2_contingency([[int((ref.label == c).sum()) for c in classes], [int((win.label == c).sum()) for c in classes]]).pvalue)
    return sum(p < 0.05 for p in ps) >= len(ps) / 2


def detect(name, is_drift, ref, clean, drifted, sizes, rng_seed=0):
    "The smallest window size whose drift window is called drift with no false alarm on ten clean windows of that size."
    for n in sizes:
        rng = np.random.default_rng(rng_seed + n)
        false_alarms = sum(is_drift(ref, clean.iloc[rng.choice(len(clean), n, replace=False)]) for _ in range(10))
        hit = is_drift(ref, drifted.iloc[:n])
        print(f"  {name:10} n={n:4}: drift window {'DRIFT' if hit else 'ok   '}  false alarms {false_alarms}/10", flush=True)
        if hit and not false_alarms: return n, false_alarms
    return None, None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--project', default=None, help="a project made by this bench's make_project before (with traffic/ beside it)")
    ap.add_argument('--share', type=float, default=0.3, help='the share of drifted traffic that is inverted (default 0.3)')
    args = ap.parse_args()
    from neuronb.monitor import drift_report
    tmp = Path(tempfile.mkdtemp(prefix='nb-monitor-det-'))
    try:
        root = Path(args.project) if args.project else make_project(tmp)
        store, served, ref = champion_reference(root)
        pictures, rng = traffic(root), np.random.default_rng(1)
        clean = answered(served, pictures[:len(pictures) // 2])
        stream = pictures[len(pictures) // 2:]
        drifted = answered(served, [inverted(d) if rng.random() < args.share else d for d in stream])
        print(f"reference {len(ref)} held-out rows of {served.version}; clean pool {len(clean)}, drifted stream {len(drifted)} "
              f"({args.share:.0%} inverted)", flush=True)
        sizes = list(range(25, min(len(clean), len(drifted)) + 1, 25))
        t0 = time.perf_counter()
        ours, _ = detect('neuronb', lambda r, w: drift_report(r, w, min_requests=1)['status'] == 'drift', ref, clean, drifted, sizes)
        seconds = time.perf_counter() - t0
        base, _ = detect('evidently', evidently_rule, ref, clean, drifted, sizes)
    finally: shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps({'bench': 'monitor_detection', 'name': 'monitor_detection', 'value': ours, 'unit': 'requests',
                      'value_is': f'requests to detect {args.share:.0%} inverted traffic with no false alarm in 10 clean windows',
                      'target': 500, 'baseline': base or f'not within {sizes[-1]}', 'baseline_is': "Evidently's default rule (half the columns at p < 0.05)",
                      'ratio': (round(base / ours, 2) if base else f'> {sizes[-1] / ours:.1f}') if ours else None, 'reference_rows': len(ref),
                      'seconds_neuronb': round(seconds, 1)}))


if __name__ == '__main__':
    main()
