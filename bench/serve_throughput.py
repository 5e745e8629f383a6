"""Requests/s of `neuronb serve` at 32 concurrent clients against a hand-written FastAPI endpoint (one preprocess and
one forward per request, in FastAPI's thread pool), same model, same client, same machine, in the same run.

The model has the digits example's shape (simple_cnn, width 32, 32x32 gray input, frame_ink), untrained: the
arithmetic is the trained model's. Each client is a keep-alive connection sending the same multipart upload of one
rendered digit in a loop (a light asyncio client: pre-built request bytes, so the client costs little beside the
servers). The servers run one after the other, each started fresh, warmed up for `--warmup` s and then measured for
`--seconds` s; this repeats for `--repeats` rounds, the servers alternating, and each side's best round counts (the
machine may be shared: the best round is the stable statistic; every round is printed).
neuronb serve does more per request than the baseline (an id, input statistics, the embedding, the prediction log,
metrics); it is also measured with `--max-batch 1` (batching off) for the gain from batching, and with `--workers N`
when asked (`--workers 2`). LitServe (the anchor that claims 2x a plain FastAPI endpoint) is measured the same way
when `--litserve PYTHON` names an interpreter that has litserve (and neuronb on its path).

Run: `python bench/serve_throughput.py [--clients 32] [--seconds 8] [--warmup 2] [--repeats 3] [--project DIR] [--workers N] [--litserve PYTHON]`.
The last line is one JSON object: `value` is neuronb's requests/s over the baseline's (target >= 2.0).
"""
import argparse, json, os, shutil, sys, tempfile
from pathlib import Path
sys.path.insert(0, str(Path(__file__).parent))
from _serve import existing_project, baseline_server, free_port, litserve_server, mean_batch, load, make_project, neuronb_server, pct, stop, upload_request


def measure(name, proc_fn, png, args):
    port = free_port()
    proc = proc_fn(port)
    try:
        ok, bad, lat = load(port, upload_request(port, png), args.clients, args.seconds, args.warmup)
        batch = mean_batch(port) if name.startswith('neuronb') else None
    finally: stop(proc)
    rps = ok / args.seconds
    print(f"{name:44}{rps:9.0f}{pct(lat, 50) * 1000:9.1f}{pct(lat, 95) * 1000:9.1f}{bad:8d}{batch or float('nan'):8.1f}", flush=True)
    return {'rps': round(rps, 1), 'p50_ms': round(pct(lat, 50) * 1000, 2), 'p95_ms': round(pct(lat, 95) * 1000, 2), 'errors': bad,
            **({'images_per_forward': round(batch, 1)} if batch else {})}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--clients', type=int, default=32)
    ap.add_argument('--seconds', type=float, default=8.0)
    ap.add_argument('--warmup', type=float, default=2.0)
    ap.add_argument('--repeats', type=int, default=3)
    ap.add_argument('--workers', type=int, default=0, help='also measure neuronb serve --workers N')
    ap.add_argument('--litserve', default=None, help='a Python interpreter with litserve installed: also measure LitServe')
    ap.add_argument('--project', default=None, help="serve this project's @champion (e.g. the digits example after `neuronb run`) instead of an untrained one of its shape")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix='nb-serve-bench-'))
    try:
        root, model, png = existing_project(args.project, tmp) if args.project else make_project(tmp)
        print(f"{args.clients} clients, {args.seconds:g} s each after {args.warmup:g} s warm-up; python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
        print(f"{'':44}{'req/s':>9}{'p50 ms':>9}{'p95 ms':>9}{'errors':>8}{'batch':>8}")
        sides = {'baseline': ('hand-written FastAPI, one forward/request', lambda p: baseline_server(model, p)),
                 'neuronb': ('neuronb serve (max-batch 32, max-wait 5 ms)', lambda p: neuronb_server(root, p)),
                 'unbatched': ('neuronb serve --max-batch 1', lambda p: neuronb_server(root, p, '--max-batch', '1'))}
        if args.workers > 1:
            sides['workers'] = (f'neuronb serve --workers {args.workers}', lambda p: neuronb_server(root, p, '--workers', str(args.workers)))
        if args.litserve:
            sides['litserve'] = ('LitServe (max_batch_size 32, 5 ms)', lambda p: litserve_server(args.litserve, model, p, tmp))
        rounds = {k: [] for k in sides}
        for r in range(args.repeats):
            for k, (name, fn) in sides.items(): rounds[k].append(measure(f"{name} #{r + 1}", fn, png, args))
        res = {k: {**max(v, key=lambda m: m['rps']), 'rounds_rps': [m['rps'] for m in v]} for k, v in rounds.items()}
    finally: shutil.rmtree(tmp, ignore_errors=True)
    ratio = res['neuronb']['rps'] / res['baseline']['rps']
    gain = res['neuronb']['rps'] / res['unbatched']['rps']
    for k, (name, _) in sides.items(): print(f"best of {args.repeats}: {name:44}{res[k]['rps']:9.0f} req/s")
    print(f"neuronb / baseline: {ratio:.2f}x; gain from batching (batched / --max-batch 1): {gain:.2f}x")
    print(json.dumps({'bench': 'serve_throughput', 'name': 'serve_throughput', 'value': round(ratio, 2), 'unit': 'x',
                      'value_is': f'requests/s of neuronb serve over a hand-written FastAPI endpoint, {args.clients} concurrent clients',
                      'target': 2.0, 'batching_gain': round(gain, 2), 'clients': args.clients, 'repeats': args.repeats, 'cpus': os.cpu_count(), **res}))


if __name__ == '__main__':
    main()
