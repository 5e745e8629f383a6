"""`neuronb label serve`: private links, per-annotator queues with overlap, the gate in front of Voila, the kernel cap,
two labelers at once in headless Chromium."""
import asyncio, http.client, json, os, re, signal, socket, subprocess, sys, time
from collections import Counter
from pathlib import Path
import pytest


ENV = {**os.environ, 'WANDB_MODE': 'disabled'}
N_ITEMS = 12
CHROMIUM_ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
                 '--disable-component-update', '--disable-sync', '--no-first-run']
SERVE = ("import sys; from neuronb.label.serve import serve_labeling; "
         "sys.exit(serve_labeling(sys.argv[1], sys.argv[2], port=int(sys.argv[3]), max_kernels=int(sys.argv[4]) or None))")
KID_RE = re.compile(r'"kernelId":\s*"([0-9a-f-]{36})"')


def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


@pytest.fixture(scope='module')
def project(tmp_path_factory):
    "The digits example with 12 rendered digits committed as dataset `digits` (the ingest stage's work, done directly)."
    from neuronb.pipeline.init import init_project
    from neuronb.data.digits import render_digits
    from neuronb.data.versions import add_files, commit
    root = tmp_path_factory.mktemp('label')/'digits'
    p = init_project(root)
    truth = render_digits(root/'raw', n=N_ITEMS)
    add_files(p.store(), root/'raw', dataset='digits', pattern='*.png', cache=False, progress=False)
    commit(p.store(), 'digits', message='12 digits')
    return root, dict(zip(truth.file, truth.label.astype(str)))


def _marked(job):
    "Processes whose environment carries the job file path: Voila and its kernels."
    from neuronb.label.serve import _processes_with_env, JOB_ENV
    return _processes_with_env(JOB_ENV, str(job))


class Server:
    "`serve_labeling` in a subprocess: its links, port and job file."
    def __init__(self, root, annotators, max_kernels=0):
        self.root, self.port = root, _free_port()
        self.proc = subprocess.Popen([sys.executable, '-c', SERVE, str(root), annotators, str(self.port), str(max_kernels)],
                                     env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.out, self.links = [], {}
        end = time.time() + 120
        while len(self.links) < len(annotators.split(',')):
            line = self.proc.stdout.readline()
            assert line and time.time() < end, 'server stopped before printing its links:\n' + ''.join(self.out)
            self.out.append(line)
            if m := re.match(r'\s+(\S+)\s+\d+ items\s+(http://\S+)', line): self.links[m.group(1)] = m.group(2)
        self.job = root/'.neuronb'/'labeling'/f'job-{self.port}.json'
        self.tokens = {a: l.split('token=')[1] for a, l in self.links.items()}

    def get(self, path, token=None, cookie=None, headers=None, method='GET'):
        "`(status, body)` of a raw request: the path goes out exactly as written (no client-side normalizing)."
        conn = http.client.HTTPConnection('127.0.0.1', self.port, timeout=120)
        h = dict(headers or {})
        if cookie: h['Cookie'] = f'neuronb_label_{self.port}={cookie}'
        conn.request(method, path + (f"{'&' if '?' in path else '?'}token={token}" if token else ''), headers=h)
        r = conn.getresponse()
        body = r.read().decode('utf-8', 'replace')
        conn.close()
        return r.status, body

    def stop(self, sig=signal.SIGTERM):
        self.proc.send_signal(sig)
        try: code = self.proc.wait(30)
        except subprocess.TimeoutExpired: self.proc.kill(); raise
        self.proc.stdout.close()
        return code


@pytest.fixture(scope='module')
def server(project):
    root, _ = project
    s = Server(root, 'alice,bob')
    yield s
    if s.proc.poll() is None: s.stop()


def test_links_job_file_and_queues(server, project):
    root, _ = project
    assert set(server.links) == {'alice', 'bob'} and server.tokens['alice'] != server.tokens['bob']
    text = server.job.read_text()
    job = json.loads(text)
    assert all(t not in text for t in server.tokens.values())           # only token hashes are stored
    assert oct(server.job.stat().st_mode & 0o777) == '0o600'
    queues = {a: [tuple(i) for i in v['queue']] for a, v in job['annotators'].items()}
    assert job['overlap'] == 2 and all(len(q) == N_ITEMS for q in queues.values())  # 2 annotators, overlap 2: all items each


def test_requests_without_a_valid_token_are_refused(server):
    kid = '0b9ad9a4-7a5e-4a0e-9d1b-3c8f2e1a4b5c'
    ws = {'Upgrade': 'websocket', 'Connection': 'Upgrade', 'Sec-WebSocket-Version': '13', 'Sec-WebSocket-Key': 'dGhlIHNhbXBsZSBub25jZQ=='}
    for path in ['/', '/voila/static/voila.js', '/api/kernels', '/api/contents', f'/api/kernels/{kid}', '/login', '/tree']:
        for kw in ({}, {'token': 'wrong'}, {'cookie': 'wrong'}):
            status, body = server.get(path, **kw)
            assert status == 403 and 'This link is not valid' in body, (path, kw, status)
    assert server.get(f'/api/kernels/{kid}/channels', headers=ws)[0] == 403
    assert server.get(f'/api/kernels/{kid}/channels', token='wrong', headers=ws)[0] == 403
    # a good cookie does not excuse a wrong token in the query
    assert server.get('/', token='wrong', cookie=server.tokens['alice'])[0] == 403


def test_voila_behind_the_gate_wants_its_own_secret(server):
    "Voila listens on loopback only and answers nobody without the gate's secret, whatever header they send."
    import psutil
    (pid, cmd), = [(p, c) for p, c in ((p, Path(f'/proc/{p}/cmdline').read_bytes().split(b'\0')) for p in _marked(server.job)) if b'voila' in c]
    assert not any(b'token' in a for a in cmd)                              # the secret is not on the command line
    (listening,) = [c.laddr for c in psutil.Process(pid).net_connections('inet') if c.status == psutil.CONN_LISTEN]
    assert listening.ip == '127.0.0.1'
    upstream = listening.port
    conn = http.client.HTTPConnection('127.0.0.1', upstream, timeout=30)
    conn.request('GET', '/', headers={'X-Neuronb-Annotator': 'alice'})
    r = conn.getresponse()
    assert r.status in (302, 403) and b'nb-label-app' not in r.read()


def test_only_the_labeling_page_is_served(server, project):
    root, _ = project
    secrets_ = [(root/'pipeline.yaml').read_text().splitlines()[-1], '"cells"', 'stages:', 'parameters']
    paths = ['/voila/files/../pipeline.yaml', '/voila/files/pipeline.yaml', '/voila/render/../x', '/voila/render/labeling/label.ipynb',
             '/voila/static/%2e%2e/%2e%2e/pipeline.yaml', '/voila/static/..%2f..%2fpipeline.yaml', '/%2e%2e/pipeline.yaml',
             '/voila/tree', '/voila/tree/stages', '/api/contents', '/api/contents/pipeline.yaml', '/tree', '/pipeline.yaml',
             '/labeling/label.ipynb', '/voila/files/labeling/label.ipynb', '/voila/static//etc/passwd', '/voila/static/.%2e/x',
             '/api/kernels', '/api/sessions', '/api/kernelspecs', '/login', '/voila/templates/../../pipeline.yaml']
    for path in paths:
        status, body = server.get(path, cookie=server.tokens['alice'])
        assert status in (403, 404), (path, status)
        assert not any(s in body for s in secrets_), path
    status, body = server.get('/voila/static/voila.js', cookie=server.tokens['alice'])  # Voila's own assets do pass
    assert status in (200, 404)


def test_a_kernel_answers_only_its_own_annotator(server):
    status, page = server.get('/', token=server.tokens['bob'])
    assert status == 200
    kid = KID_RE.search(page).group(1)
    assert server.get(f'/api/kernels/{kid}', cookie=server.tokens['bob'])[0] == 200
    assert server.get(f'/api/kernels/{kid}', cookie=server.tokens['alice'])[0] == 403
    assert server.get(f'/voila/api/shutdown/{kid}', cookie=server.tokens['alice'], method='POST')[0] == 403
    ws = {'Upgrade': 'websocket', 'Connection': 'Upgrade', 'Sec-WebSocket-Version': '13', 'Sec-WebSocket-Key': 'dGhlIHNhbXBsZSBub25jZQ=='}
    assert server.get(f'/api/kernels/{kid}/channels', cookie=server.tokens['alice'], headers=ws)[0] == 403
    assert server.get(f'/voila/api/shutdown/{kid}', cookie=server.tokens['bob'], method='POST')[0] in (200, 204)


async def _label_all(browser, link, truth, spoof=None):
    "Label the whole queue behind `link` in a fresh browser context; the names shown, in order, and who it said we are."
    ctx = await browser.new_context(extra_http_headers={'X-Neuronb-Annotator': spoof} if spoof else None)
    page = await ctx.new_page()
    await page.goto(link, wait_until='domcontentloaded')
    await page.wait_for_selector('.nb-label-app .nb-progress', timeout=120_000)
    who, shown = await page.inner_text('.nb-annotator'), []
    while not await page.locator('.nb-done').inner_text():
        progress = await page.inner_text('.nb-progress')
        name = (await page.inner_text('.nb-item-name')).strip()
        shown.append(name)
        await page.click(f'.nb-class-{truth[name]}')
        # the next item is on the page once the count has moved and the name changed (or the queue is done)
        await page.wait_for_function("""([old, oldName]) => document.querySelector('.nb-progress').innerText !== old &&
            (document.querySelector('.nb-item-name').innerText.trim() !== oldName || document.querySelector('.nb-done').innerText !== '')""",
            arg=[progress, name], timeout=60_000)
    done = await page.inner_text('.nb-done')
    await ctx.close()
    return shown, who, done


@pytest.mark.browser
def test_two_annotators_label_at_the_same_time_in_chromium(server, project):
    from playwright.async_api import async_playwright
    from neuronb.label.events import EventStore
    from neuronb.pipeline.project import load_project
    root, truth = project
    job = json.loads(server.job.read_text())

    async def both():
        async with async_playwright() as p:
            browser = await p.chromium.launch(executable_path='/usr/bin/chromium', args=CHROMIUM_ARGS)
            try: return await asyncio.gather(_label_all(browser, server.links['alice'], truth, spoof='bob'),
                                             _label_all(browser, server.links['bob'], truth))
            finally: await browser.close()
    (a_shown, a_who, a_done), (b_shown, b_who, b_done) = asyncio.run(both())
    assert 'alice' in a_who and 'bob' not in a_who and 'bob' in b_who     # a forged header changes nothing
    assert 'All done' in a_done and 'All done' in b_done
    for who, shown in (('alice', a_shown), ('bob', b_shown)):
        assert shown == [n for n, _ in job['annotators'][who]['queue']]   # each saw exactly their queue, in order
    df = EventStore(load_project(root).store()).events()
    assert len(df) == len(a_shown) + len(b_shown)                           # every click stored, none lost, none doubled
    assert (df.kind == 'label').all() and set(df.annotator) == {'alice', 'bob'}
    for who in ('alice', 'bob'):
        mine = df[df.annotator == who]
        assert sorted(mine.item) == sorted(h for _, h in job['annotators'][who]['queue'])
        assert all(l == truth[n] for n, l in zip(mine.name, mine.label))
    per_item = Counter(df.item)
    assert set(per_item.values()) == {job['overlap']}                       # overlap respected
    assert all(df[df.item == i].annotator.nunique() == job['overlap'] for i in per_item)


def test_kernel_cap_refuses_a_visit_beyond_it_with_a_page_saying_so(project):
    root, _ = project
    s = Server(root, 'carol,dave', max_kernels=1)
    try:
        status, page = s.get('/', token=s.tokens['carol'])
        assert status == 200 and KID_RE.search(page)
        status, page = s.get('/', token=s.tokens['dave'])
        assert status == 503 and 'No labeling session free' in page and 'All 1 labeling sessions are in use' in page
    finally:
        code = s.stop(signal.SIGINT)
    assert code == 0
    assert _marked(s.job) == []                                             # Voila and every kernel are gone


def test_stopping_the_server_leaves_no_kernels(project):
    root, _ = project
    s = Server(root, 'erin,frank')
    for _ in range(2): assert s.get('/', token=s.tokens['erin'])[0] == 200
    status, page = s.get('/', token=s.tokens['erin'])                       # a third tab: over erin's own cap
    assert status == 503 and 'You already have 2 labeling tabs open' in page
    assert s.get('/', token=s.tokens['frank'])[0] == 200                    # which does not stop frank
    assert len(_marked(s.job)) >= 4                                         # Voila and three kernels
    assert s.stop() == 0
    assert _marked(s.job) == []


def test_bad_annotators_and_overlap_are_refused(project, tmp_path):
    from neuronb.label.serve import serve_labeling
    from neuronb.core import NeuronbError
    root, _ = project
    with pytest.raises(NeuronbError, match='overlap must be a whole number from 1 to the number of annotators'):
        serve_labeling(root, 'solo', overlap=2, port=_free_port())
    with pytest.raises(NeuronbError, match='is not a plain name'):
        serve_labeling(root, 'alice,../x', port=_free_port())
    with socket.socket() as busy:
        busy.bind(('127.0.0.1', 0)); busy.listen()
        with pytest.raises(NeuronbError, match='pick another port with --port'):
            serve_labeling(root, 'alice,bob', port=busy.getsockname()[1])


@pytest.mark.parametrize('sig', [signal.SIGTERM, signal.SIGKILL])
def test_the_real_command_leaves_no_process_behind(project, sig):
    "`neuronb label serve` itself, SIGTERMed (it cleans up) or killed (nothing runs in it: Voila must notice by itself)."
    from conftest import stop_server
    root, _ = project
    port = _free_port()
    proc = subprocess.Popen([str(Path(sys.executable).parent/'neuronb'), 'label', '--dir', str(root), 'serve', '--annotators', 'gina,hal',
                             '--port', str(port)], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out, end = [], time.time() + 120
        while not (m := re.match(r'\s+gina\s+\d+ items\s+http://\S+token=(\S+)', out[-1] if out else '')):
            line = proc.stdout.readline()
            assert line and time.time() < end, 'server stopped before printing its links:\n' + ''.join(out)
            out.append(line)
        conn = http.client.HTTPConnection('127.0.0.1', port, timeout=120)
        conn.request('GET', f'/?token={m.group(1)}')
        assert conn.getresponse().status == 200                             # a kernel is running for gina
        conn.close()
        job = root/'.neuronb'/'labeling'/f'job-{port}.json'
        assert len(_marked(job)) >= 2                                       # Voila and the kernel
    finally:
        left = stop_server(proc, sig)
    assert left == [] and _marked(job) == []
