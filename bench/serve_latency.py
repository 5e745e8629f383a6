"""p50 and p95 of single requests to `neuronb serve` at concurrency 1: one keep-alive connection sending a multipart
upload of one rendered digit, the next request only after the answer, timed on the client from the first byte sent to
the last byte received. The model has the digits example's shape (simple_cnn, width 32, 32x32 gray, frame_ink),
untrained. The hand-written FastAPI endpoint of `serve_throughput.py` (one forward per request) is measured the same
way in the same run, for context: at concurrency 1 batching cannot help, so this shows what neuronb's extra work
(ids, input statistics, embedding, prediction log, metrics, the batching queue) costs a lone request.

Run: `python bench/serve_latency.py [--requests 500] [--warmup 50] [--project DIR]`.
The last line is one JSON object: `value` is neuronb's p95 in ms (target <= 10 on the CPU).
"""
import argparse, asyncio, json, os, shutil, statistics, sys, tempfile, time
from pathlib import Path
sys.path.insert(0, str(Path(__file__).parent))
from _serve import existing_project, _exchange, baseline_server, free_port, make_project, neuronb_server, pct, stop, upload_request


async def _sequential(port, request, n, warmup):
    reader, writer = await asyncio.open_connection('127.0.0.1', port)
    lat = []
    try:
        for i in range(warmup + n):
            t = time.perf_counter()
            status, body = await _exchange(reader, writer, request)
            if status != 200: raise RuntimeError(f"answer {status}: {body[:200]!r}")
            if i >= warmup: lat.append((time.perf_counter() - t) * 1000)
    finally: writer.close()
    return lat


def measure(name, proc_fn, png, args):
    port = free_port()
    proc = proc_fn(port)
    try: lat = asyncio.run(_sequential(port, upload_request(port, png), args.requests, args.warmup))
    finally: stop(proc)
    print(f"{name:44}{statistics.median(lat):9.2f}{pct(lat, 95):9.2f}{pct(lat, 99):9.2f}{max(lat):9.2f}", flush=True)
    return {'p50_ms': round(statistics.median(lat), 2), 'p95_ms': round(pct(lat, 95), 2), 'p99_ms': round(pct(lat, 99), 2)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--requests', type=int, default=500)
    ap.add_argument('--warmup', type=int, default=50)
    ap.add_argument('--project', default=None, help="serve this project's @champion (e.g. the digits example after `neuronb run`) instead of an untrained one of its shape")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix='nb-serve-lat-'))
    try:
        root, model, png = existing_project(args.project, tmp) if args.project else make_project(tmp)
        print(f"{args.requests} requests one at a time after {args.warmup} warm-up; python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
        print(f"{'':44}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'max ms':>9}")
        res = {'neuronb': measure('neuronb serve', lambda p: neuronb_server(root, p), png, args),
               'baseline': measure('hand-written FastAPI, one forward/request', lambda p: baseline_server(model, p), png, args)}
    finally: shutil.rmtree(tmp, ignore_errors=True)
    n = res['neuronb']
    print(json.dumps({'bench': 'serve_latency', 'name': 'serve_latency', 'value': n['p95_ms'], 'unit': 'ms',
                      'value_is': 'p95 of single requests to neuronb serve at concurrency 1 (one digit upload, client-side)',
                      'target_ms': 10, 'p50_ms': n['p50_ms'], 'p99_ms': n['p99_ms'], 'baseline': res['baseline'],
                      'requests': args.requests, 'cpus': os.cpu_count()}))


if __name__ == '__main__':
    main()
