"""Time to interactive of the demo page: from navigation to the first interactive widget (the upload button) in
headless Chromium, through `neuronb demo`'s private link, with preheated pages (`--preheat 2`, the default) against
cold ones (`--preheat 0`: each visit starts a kernel and loads the model), in the same run and on the same project.

Before each preheated visit the bench waits until the pool has refilled (every pooled kernel has run the notebook up
to `wait_for_visitor()`), as it would have between two stakeholders arriving; each visit is a fresh browser context,
closed after it (its page's shutdown request ends its kernel).

Run: `python bench/demo_tti.py [--visits 5] [--project DIR]` (without --project a tiny example project is trained
first, about half a minute). The last line is one JSON object: `value` is the preheated median in seconds (target
<= 1.0); `ratio` is cold / preheated.
"""
import argparse, json, os, re, shutil, statistics, subprocess, sys, tempfile, threading, time
from pathlib import Path

BIN = Path(sys.executable).parent
ENV = {**os.environ, 'WANDB_MODE': 'disabled'}
TINY = ['-p', 'ingest.limit=300', '-p', 'train.epochs=1', '-p', 'train.bs=32', '-p', 'train.lr=0.01', '-p', 'demo.n_samples=5']
CHROMIUM_ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
                 '--disable-component-update', '--disable-sync', '--no-first-run']


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


def make_project(folder: Path) -> Path:
    root = folder/'digits'
    for args in (['init', str(root)], ['run', str(root), *TINY]):
        out = subprocess.run([str(BIN/'neuronb'), *args], capture_output=True, text=True, env=ENV)
        if out.returncode: sys.exit(f"neuronb {' '.join(args)} failed:\n{out.stdout[-2000:]}{out.stderr[-2000:]}")
    return root


def start_demo(root, preheat):
    "`neuronb demo` with one private link; returns (process, link) once it serves (and, preheating, once the pool is ready)."
    cmd = [str(BIN/'neuronb'), 'demo', str(root), '--port', str(free_port()), '--share', 'bench', '--preheat', str(preheat)]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines, link, want, end = [], None, 'Preheated:' if preheat else 'Ctrl-C stops the demo', time.monotonic() + 300
    while not any(want in l for l in lines):
        line = proc.stdout.readline()
        if not line or time.monotonic() > end: sys.exit('the demo stopped before serving:\n' + ''.join(lines))
        lines.append(line)
        if m := re.match(r'\s+bench\s+(http://\S+)', line): link = m.group(1)
    threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
    return proc, link


def pool_ready(root, link, n, timeout=120):
    "Wait until `n` pooled kernels of the server behind `link` say they are ready (a file each in its ready folder)."
    port = re.search(r':(\d+)/', link).group(1)
    ready, end = root/'.neuronb'/'demo'/f'ready-{port}', time.monotonic() + timeout
    while time.monotonic() < end:
        if len(list(ready.iterdir())) >= n: return
        time.sleep(0.1)
    sys.exit(f'the pool did not refill to {n} within {timeout} s')


def visits(root, preheat, n):
    from playwright.sync_api import sync_playwright
    proc, link = start_demo(root, preheat)
    times = []
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path='/usr/bin/chromium', args=CHROMIUM_ARGS)
            for _ in range(n):
                if preheat: pool_ready(root, link, preheat)
                ctx = browser.new_context()
                page = ctx.new_page()
                t0 = time.perf_counter()
                page.goto(link, wait_until='commit')
                page.wait_for_selector('.nb-upload', state='visible', timeout=120_000)
                times.append(time.perf_counter() - t0)
                page.goto('about:blank')   # leaving sends the page's shutdown request, as closing a tab does
                ctx.close()
            browser.close()
    finally:
        proc.terminate(); proc.wait(60)
    return times


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--visits', type=int, default=5)
    ap.add_argument('--project', help='a trained project to serve (default: a tiny example trained first)')
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix='neuronb-tti-'))
    try:
        root = Path(args.project) if args.project else make_project(tmp)
        cold = visits(root, 0, args.visits)
        warm = visits(root, 2, args.visits)
    finally: shutil.rmtree(tmp, ignore_errors=True)
    print(f"{'pages':<12}{'median s':>10}{'min s':>8}{'max s':>8}   ({args.visits} visits each, navigation to the upload button)")
    for name, t in (('cold', cold), ('preheated', warm)):
        print(f"{name:<12}{statistics.median(t):>10.2f}{min(t):>8.2f}{max(t):>8.2f}")
    ratio = statistics.median(cold) / statistics.median(warm)
    print(f"preheated pages are interactive {ratio:.1f}x sooner")
    print(json.dumps({'name': 'demo_tti', 'value': round(statistics.median(warm), 3), 'unit': 's', 'target': '<= 1.0',
                      'cold_s': round(statistics.median(cold), 3), 'ratio': round(ratio, 2),
                      'preheated_all_s': [round(t, 3) for t in warm], 'cold_all_s': [round(t, 3) for t in cold]}))


if __name__ == '__main__':
    main()
