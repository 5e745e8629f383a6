"""The labeling app served by Voila and used in Chromium: buttons, keys, undo, boxes, and click-to-stored-event latency."""
import json, os, subprocess, sys, time
from pathlib import Path
import pytest
from test_example_pipeline import CHROMIUM_ARGS, ENV, _free_port, _wait_port

CELL = """from neuronb.data.storage import open_store
from neuronb.label.app import LabelingApp, ReviewApp, dataset_items
store = open_store({store!r})
if {review!r}: app = ReviewApp(store, dataset_items(store, 'digits'), [str(d) for d in range(10)], reviewer={who!r})
else: app = LabelingApp(store, dataset_items(store, 'digits'), [str(d) for d in range(10)], annotator={who!r}, boxes={boxes!r})
app.widget"""


@pytest.fixture(scope='module')
def digits_store(tmp_path_factory):
    "A store with a committed dataset of 8 rendered digits."
    from sklearn.datasets import load_digits
    from neuronb.data.digits import digit_png
    from neuronb.data.storage import open_store
    from neuronb.data.versions import add_files, commit
    tmp = tmp_path_factory.mktemp('label')
    (tmp/'raw').mkdir()
    images = load_digits().images
    for i in range(8): (tmp/'raw'/f'img_{i:05d}.png').write_bytes(digit_png(images[i], 32))
    store = open_store(tmp/'store')
    add_files(store, tmp/'raw', dataset='digits', cache=False, progress=False)
    commit(store, 'digits', 'eight digits')
    return tmp, store


def _notebook(path, store, who, boxes=False, review=False):
    nb = {'cells': [{'cell_type': 'code', 'execution_count': None, 'id': 'app', 'metadata': {}, 'outputs': [],
                     'source': CELL.format(store=str(store.root), who=who, boxes=boxes, review=review)}],
          'metadata': {'kernelspec': {'display_name': 'Python 3', 'language': 'python', 'name': 'python3'}},
          'nbformat': 4, 'nbformat_minor': 5}
    path.write_text(json.dumps(nb))
    return path


def _serve(notebook):
    "Voila on `notebook` alone, with neuronb's settings (its template, its kernel manager), on a free loopback port."
    from neuronb import voila
    port = _free_port()
    conf = notebook.parent/f'voila-conf-{port}'
    conf.mkdir()
    cmd = voila.voila_server_command(notebook, voila.write_config(conf, voila.voila_config(port)))
    proc = subprocess.Popen(cmd, env=voila.voila_env(f'label-app-{port}', extra=ENV), cwd=notebook.parent,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _wait_port(port, proc)
    return proc, port


def _stop(proc):
    proc.terminate()
    try: proc.wait(15)
    except subprocess.TimeoutExpired: proc.kill()


def _wait_text(page, selector, text, timeout=15):
    "Wait until the element's text is `text`; the failure says what it was instead."
    end = time.time() + timeout
    while (got := page.inner_text(selector).strip()) != text:
        assert time.time() < end, f"{selector} shows {got!r}, not {text!r}; the app says: {page.inner_text('.nb-label-app')!r}"
        time.sleep(0.05)


def _count(events, who): return len(events.events(who))


def _wait_count(events, who, n, timeout=10, t0=None):
    "Seconds from `t0` (default now) until the event store holds `n` events of annotator `who`."
    t0 = t0 or time.perf_counter()
    while _count(events, who) < n:
        assert time.perf_counter() - t0 < timeout, f"only {_count(events, who)} of {n} events stored"
        time.sleep(0.002)
    return time.perf_counter() - t0


def _open(p, port, selector):
    "`(browser, page)`: headless Chromium on the served app, once `selector` has appeared."
    browser = p.chromium.launch(executable_path='/usr/bin/chromium', args=CHROMIUM_ARGS)
    page = browser.new_page()
    page.goto(f'http://127.0.0.1:{port}/', wait_until='domcontentloaded')
    page.wait_for_selector(selector, timeout=90_000)
    return browser, page


@pytest.mark.browser
def test_labeling_in_chromium(digits_store):
    from playwright.sync_api import sync_playwright
    from neuronb.label.events import EventStore
    tmp, store = digits_store
    proc, port = _serve(_notebook(tmp/'label.ipynb', store, 'alice'))
    folder = EventStore(store)
    try:
        with sync_playwright() as p:
            browser, page = _open(p, port, '.nb-item-image')
            assert 'alice' in page.inner_text('.nb-annotator')
            assert page.inner_text('.nb-progress').strip() == '0 / 8'
            img = page.locator('img.nb-item-image')
            assert img.evaluate('e => e.naturalWidth') == 32 and img.evaluate('e => e.getBoundingClientRect().width') == 256
            assert img.evaluate('e => getComputedStyle(e).imageRendering') == 'pixelated'
            first = img.get_attribute('src')
            page.click('.nb-class-3')
            _wait_count(folder, 'alice', 1)
            _wait_text(page, '.nb-progress', '1 / 8')
            page.wait_for_function(f"() => document.querySelector('img.nb-item-image').src != {first!r}")
            page.hover('.nb-label-app')  # keys reach the app while the pointer is over it
            page.keyboard.press('5'); _wait_count(folder, 'alice', 2)
            page.keyboard.press('s'); _wait_count(folder, 'alice', 3)
            page.keyboard.press('u'); _wait_count(folder, 'alice', 4)
            _wait_text(page, '.nb-progress', '2 / 8')  # the page has handled every key: no event is still on its way
            df = EventStore(store).events('alice')
            assert list(df.kind) == ['label', 'label', 'skip', 'undo'] and list(df.label[:2]) == ['3', '5'], df[['name', 'kind', 'label', 'ts']]
            assert df.parent.iloc[3] == df.id.iloc[2]
            waits = []
            for k in range(6):  # the rest, by click: time from the click to the stored event (Playwright's own time included)
                n = _count(folder, 'alice')
                t0 = time.perf_counter()
                page.click(f'.nb-class-{k}')
                waits.append(_wait_count(folder, 'alice', n + 1, t0=t0))
            page.wait_for_selector('.nb-done', state='visible', timeout=10_000)
            assert 'All done' in page.inner_text('.nb-done')
            waits.sort()
            print(f"click to stored event: median {waits[len(waits)//2]*1000:.0f} ms, max {waits[-1]*1000:.0f} ms")
            assert waits[-1] < 2.0, waits  # generous: a shared 2-core machine; the benchmark measures p95 properly
            browser.close()
    finally:
        _stop(proc)


@pytest.mark.browser
def test_boxes_in_chromium(digits_store):
    from playwright.sync_api import sync_playwright
    from neuronb.label.events import EventStore
    tmp, store = digits_store
    proc, port = _serve(_notebook(tmp/'boxes.ipynb', store, 'bea', boxes=True))
    try:
        with sync_playwright() as p:
            browser, page = _open(p, port, '.nb-bbox img')
            img = page.locator('.nb-bbox img')
            page.wait_for_function("() => document.querySelector('.nb-bbox img').naturalWidth == 32")
            box = img.bounding_box()
            assert round(box['width']) == 256
            page.click('.nb-class-7')
            # the class of the next box lives in the page: draw once the kernel's choice has arrived (the button lights up)
            page.wait_for_selector('.nb-class-7.mod-info')
            # draw from (4, 4) to (20, 28) in image pixels: 8 screen pixels per image pixel
            page.mouse.move(box['x'] + 32, box['y'] + 32); page.mouse.down()
            page.mouse.move(box['x'] + 100, box['y'] + 150, steps=5); page.mouse.move(box['x'] + 160, box['y'] + 224, steps=5)
            page.mouse.up()
            page.click('.nb-submit')
            _wait_count(EventStore(store), 'bea', 1)
            ev = EventStore(store).events('bea').iloc[0]
            assert ev.label == '7' and len(ev.boxes) == 1, ev.to_dict()
            b = ev.boxes[0]
            assert b['label'] == '7' and abs(b['x'] - 4) <= 1 and abs(b['y'] - 4) <= 1, b
            assert abs(b['width'] - 16) <= 1 and abs(b['height'] - 24) <= 1, b
            browser.close()
    finally:
        _stop(proc)


@pytest.mark.browser
def test_review_in_chromium(digits_store):
    from playwright.sync_api import sync_playwright
    from neuronb.label.app import dataset_items
    from neuronb.label.events import EventStore, LabelEvent
    tmp, store = digits_store
    events = EventStore(store, 'labels/events')
    (n1, h1), (n2, h2) = dataset_items(store, 'digits')[:2]
    for who, a, b in [('ann', '1', '2'), ('ben', '1', '7'), ('cid', '4', '2')]:
        events.add(LabelEvent(h1, who, a, name=n1)); events.add(LabelEvent(h2, who, b, name=n2))
    proc, port = _serve(_notebook(tmp/'review.ipynb', store, 'rita', review=True))
    try:
        with sync_playwright() as p:
            browser, page = _open(p, port, '.nb-review-votes table')
            assert page.inner_text('.nb-progress').strip().endswith('/ 2')
            votes = page.inner_text('.nb-review-votes')
            assert 'ann' in votes and 'ben' in votes and 'cid' in votes
            shown = page.inner_text('.nb-item-name').strip()
            decision = {n1: '1', n2: '2'}[shown]  # a label two of the annotators gave
            page.hover('.nb-label-app'); page.keyboard.press(decision)
            rev = EventStore(store)
            _wait_count(rev, 'rita', 1)
            ev = rev.events('rita').iloc[0]
            assert ev['kind'] == 'review' and ev['label'] == decision and ev['item'] == {n1: h1, n2: h2}[shown]
            parent = events.events().set_index('id').loc[ev['parent']]
            assert parent['label'] == decision and parent['item'] == ev['item']  # the parent is a vote it agrees with
            _wait_text(page, '.nb-progress', '1 / 2')
            browser.close()
    finally:
        _stop(proc)


def test_review_notebook_of_the_example_lists_the_crowd_disputes(tmp_path):
    "The example's labeling/review.ipynb runs in a kernel over imported crowd answers with one dispute."
    from neuronb.pipeline.init import init_project
    from neuronb.pipeline.runner import run_notebook
    from neuronb.data.digits import render_digits
    from neuronb.data.versions import add_files, commit
    from neuronb.label.project import import_labels, project_events
    project = init_project(tmp_path/'p')
    truth = render_digits(tmp_path/'raw', n=6)
    add_files(project.store(), tmp_path/'raw', dataset='digits', progress=False); commit(project.store(), 'digits', 'six')
    rows = [f"{f},w{w},{l if (w or i) else (l + 1) % 10}" for i, (f, l) in enumerate(zip(truth.file, truth.label)) for w in range(2)]
    (tmp_path/'crowd.csv').write_text('task,worker,label\n' + '\n'.join(rows) + '\n')
    import_labels(project, tmp_path/'crowd.csv')
    out = run_notebook(project.root/'labeling/review.ipynb', tmp_path/'out.ipynb', parameters={'reviewer': 'lead'}, cwd=project.root)
    assert out.status == 'ok', out
    text = (tmp_path/'out.ipynb').read_text()
    assert "1 item to review (stakeholders' feedback first, then disagreements)" in text
