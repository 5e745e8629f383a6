"""How long a labeler waits for a label to be saved: from the click in the served labeling app to the stored event.

A tiny copy of the digits example (LABELS + 5 rendered digits committed as dataset `digits`) is served with
`serve_labeling` (the gate in front of Voila, one annotator, overlap 1) and labeled in headless Chromium. For each
of LABELS labels the page records the instant of the click (a capture-phase listener, before the widget sees it),
this process polls the event store's folder every 0.5 ms and notes when the new event file
appears; the difference is the latency. The next click waits until the app shows the next item, as a labeler would.

Baseline, measured in the same run: the same `LabelingApp.label` called directly in this process (no browser, no
websocket, no gate, no Voila), i.e. the cost of writing the event and showing the next item alone.

Run: `python bench/label_latency.py`. The last line is one JSON object: `value` is the p95 click-to-event latency
in ms (target <= 150 ms).
"""
import asyncio, json, os, re, shutil, signal, socket, statistics, subprocess, sys, tempfile, time
from pathlib import Path

os.environ.setdefault('WANDB_MODE', 'disabled')
LABELS = 100
CHROMIUM_ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
                 '--disable-component-update', '--disable-sync', '--no-first-run']
SERVE = "import sys; from neuronb.label.serve import serve_labeling; sys.exit(serve_labeling(sys.argv[1], 'bench', overlap=1, port=int(sys.argv[2])))"


def make_project(root):
    from neuronb.pipeline.init import init_project
    from neuronb.data.digits import render_digits
    from neuronb.data.versions import add_files, commit
    p = init_project(root)
    truth = render_digits(root/'raw', n=LABELS + 5)
    add_files(p.store(), root/'raw', dataset='digits', pattern='*.png', cache=False, progress=False)
    commit(p.store(), 'digits', message='bench')
    return p, dict(zip(truth.file, truth.label.astype(str)))


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q / 100 * len(xs) + 0.5) - 1))]


def n_files(folder):
    "Event files under `folder`, at any depth (unfinished writes, dot-named, left out)."
    n, stack = 0, [str(folder)]
    while stack:
        try:
            with os.scandir(stack.pop()) as it:
                for e in it:
                    if e.name.startswith('.'): continue
                    if e.is_dir(): stack.append(e.path)
                    elif e.name.endswith('.json'): n += 1
        except FileNotFoundError: pass
    return n


def wait_new(folder, before, timeout=30):
    "Poll until `folder` holds more than `before` event files; the wall time it was seen."
    end = time.time() + timeout
    while time.time() < end:
        if n_files(folder) > before: return time.time()
        time.sleep(0.0005)
    raise TimeoutError(f'no new event file in {folder} within {timeout} s')


def start_server(root):
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, '-c', SERVE, str(root), str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = []
    while True:
        line = proc.stdout.readline()
        if not line: raise RuntimeError('server stopped:\n' + ''.join(out))
        out.append(line)
        if m := re.search(r'(http://\S+token=\S+)', line): return proc, m.group(1)


async def label_served(link, truth, folder):
    "`(click-to-event ms, call-to-event ms)` for each label, through Chromium, the gate and Voila."
    from playwright.async_api import async_playwright
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path='/usr/bin/chromium', args=CHROMIUM_ARGS)
        page = await browser.new_page()
        t = time.time()
        await page.goto(link, wait_until='domcontentloaded')
        await page.wait_for_selector('.nb-label-app .nb-progress', timeout=120_000)
        page_s = time.time() - t
        await page.evaluate("window.__clicks = []; document.addEventListener('click', () => window.__clicks.push(performance.timeOrigin + performance.now()), true)")
        click_ms, call_ms = [], []
        for i in range(LABELS):
            progress = await page.inner_text('.nb-progress')
            name = (await page.inner_text('.nb-item-name')).strip()
            before = n_files(folder)
            t_call = time.time()
            await page.click(f'.nb-class-{truth[name]}')
            seen = wait_new(folder, before)
            clicked = (await page.evaluate('window.__clicks'))[i] / 1000
            click_ms.append((seen - clicked) * 1000); call_ms.append((seen - t_call) * 1000)
            await page.wait_for_function("([sel, old]) => document.querySelector(sel).innerText !== old", arg=['.nb-progress', progress])
        await browser.close()
    return click_ms, call_ms, page_s


def label_in_process(project, truth):
    "ms per `LabelingApp.label` called directly: the baseline."
    from neuronb.label.app import LabelingApp, dataset_items
    from neuronb.label.events import EventStore
    store = project.store()
    items = dataset_items(store, 'digits')[:LABELS]
    app = LabelingApp(store, items, [str(i) for i in range(10)], EventStore(store), 'baseline')
    out = []
    for name, _ in items:
        t = time.perf_counter(); app.label(truth[name]); out.append((time.perf_counter() - t) * 1000)
    return out


def main():
    tmp = Path(tempfile.mkdtemp(prefix='nb-label-bench-'))
    try:
        project, truth = make_project(tmp/'digits')
        folder = tmp/'digits'/'data'/'labels'/'events'
        base = label_in_process(project, truth)
        proc, link = start_server(tmp/'digits')
        try: click_ms, call_ms, page_s = asyncio.run(label_served(link, truth, folder))
        finally:
            proc.send_signal(signal.SIGTERM); proc.wait(30)
    finally: shutil.rmtree(tmp, ignore_errors=True)
    p95, base95 = pct(click_ms, 95), pct(base, 95)
    print(f"{LABELS} labels, one annotator, python {sys.version.split()[0]}, {os.cpu_count()} CPUs; first page {page_s:.2f} s")
    print(f"{'':40}{'p50 ms':>9}{'p95 ms':>9}{'max ms':>9}")
    for label, xs in [('click -> stored event (served)', click_ms), ('playwright click() -> stored event', call_ms),
                      ('LabelingApp.label in-process (baseline)', base)]:
        print(f"{label:40}{statistics.median(xs):9.1f}{pct(xs, 95):9.1f}{max(xs):9.1f}")
    print(f"served p95 / in-process p95: {p95 / base95:.1f}x")
    print(json.dumps({'bench': 'label_latency', 'name': 'label_latency', 'value': round(p95, 1), 'unit': 'ms',
                      'value_is': 'p95 from the click in the served app (Chromium -> gate -> Voila -> kernel) to the stored event file',
                      'target_ms': 150, 'p50_ms': round(statistics.median(click_ms), 1), 'max_ms': round(max(click_ms), 1),
                      'call_p95_ms': round(pct(call_ms, 95), 1), 'baseline_p95_ms': round(base95, 1),
                      'ratio_to_baseline': round(p95 / base95, 2), 'first_page_s': round(page_s, 2), 'labels': LABELS}))


if __name__ == '__main__':
    main()
