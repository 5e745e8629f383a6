"""The monitor stage's wall time on a long prediction log: 100,000 logged predictions of the champion (a week of
traffic, one Parquet file per flush and day, as `neuronb serve` writes them), against the same stage on 1,000, in the
same run on the same project. Each is one `neuronb monitor --once --no-retrain`: the stage's own time (the executed
notebook: reading the log, the tests, the plots) is the value, the command's wall time (Python and kernel start
included) is printed beside it. The champion's reference is built before either is timed.

Rows are real answers: held-out digits answered as the server answers an upload, repeated with new ids and times.

Run: `python bench/monitor_scale.py [--rows 100000] [--project DIR]`. The last line is one JSON object: `value` is the
stage's seconds on --rows (target <= 10); `ratio` is that over the 1,000-row stage.
"""
import argparse, json, shutil, subprocess, sys, tempfile, time, uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
sys.path.insert(0, str(Path(__file__).parent))
from _monitor import ENV, BIN, make_project, traffic, answered, champion_reference


def add_rows(store, rows: list, n: int, start: datetime, span: timedelta, flush_every: int = 5000):
    "Log `n` copies of `rows` (new ids, times spread over `span` from `start`), flushed every `flush_every` rows."
    from neuronb.serve import PredictionLog
    log = PredictionLog(store, every=3600)
    try:
        for i in range(n):
            r = dict(rows[i % len(rows)], id=str(uuid.uuid4()), time=start + span * (i / n))
            log.rows.append(r)
            if len(log.rows) >= flush_every: log.flush()
    finally: log.close()


def monitor_once(root):
    "`(stage seconds, command seconds)` of one monitoring run."
    t0 = time.perf_counter()
    out = subprocess.run([str(BIN/'neuronb'), 'monitor', str(root), '--once', '--no-retrain', '--json'], capture_output=True, text=True, env=ENV)
    wall = time.perf_counter() - t0
    if out.returncode: sys.exit(f"neuronb monitor failed:\n{out.stdout[-2000:]}{out.stderr[-2000:]}")
    d = json.loads(out.stdout)
    show = json.loads(subprocess.run([str(BIN/'neuronb'), 'show', d['monitor_run'], '--dir', str(root), '--json'],
                                     capture_output=True, text=True, env=ENV).stdout)
    return show['stages'][0]['duration'], wall, d


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--rows', type=int, default=100_000)
    ap.add_argument('--project', default=None, help="a project made by bench/_monitor.py's make_project (with traffic/ beside it)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix='nb-monitor-scale-'))
    try:
        root = Path(args.project) if args.project else make_project(tmp)
        store, served, _ = champion_reference(root)   # built before either run is timed
        rows = answered(served, traffic(root)[:500]).to_dict('records')
        now = datetime.now(timezone.utc)
        add_rows(store, rows, 1000, now - timedelta(days=8), timedelta(hours=1))
        small, small_wall, d1 = monitor_once(root)
        print(f"{d1['requests'] or 0:>7} in the window of 1,000 logged: stage {small:.2f} s, command {small_wall:.2f} s", flush=True)
        add_rows(store, rows, args.rows - 1000, now - timedelta(days=7), timedelta(days=7))
        big, big_wall, d2 = monitor_once(root)
        print(f"{d2['requests'] or 0:>7} in the window of {args.rows:,} logged: stage {big:.2f} s, command {big_wall:.2f} s", flush=True)
    finally: shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps({'bench': 'monitor_scale', 'name': 'monitor_scale', 'value': round(big, 2), 'unit': 's',
                      'value_is': f'the monitor stage on {args.rows:,} logged predictions (the executed notebook)', 'target_s': 10,
                      'command_s': round(big_wall, 2), 'baseline_s': round(small, 2), 'baseline_is': 'the same stage on 1,000 logged predictions',
                      'ratio': round(big / small, 2), 'verdict': d2['verdict']}))


if __name__ == '__main__':
    main()
