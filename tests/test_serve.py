"""`neuronb serve` as a real uvicorn process on loopback, driven by httpx: uploads, batches, bad inputs, tokens, 200
concurrent requests with an alias move among them, the prediction log after SIGTERM and after kill -9, several workers,
shadow mode, stored inputs, and schemathesis against the OpenAPI spec."""
import base64, io, os, signal, subprocess, sys, threading, time
from pathlib import Path
import pytest

os.environ['WANDB_MODE'] = 'disabled'
httpx = pytest.importorskip('httpx')
pytest.importorskip('uvicorn'); pytest.importorskip('fastapi')
psutil = pytest.importorskip('psutil')
from neuronb.serve import _png, _tiny_model, prediction_log

MAIN = 'import sys; from neuronb.cli import main; sys.exit(main())'
ENV = {**os.environ, 'WANDB_MODE': 'disabled', 'OMP_NUM_THREADS': '1'}


def _until(cond, what, deadline=60):
    "Wait until `cond()` is true, failing after `deadline` seconds."
    end = time.monotonic() + deadline
    while not (got := cond()):
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.02)
    return got


def _free_port():
    import socket
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


@pytest.fixture(scope='module')
def project(tmp_path_factory):
    "A project made by `neuronb init` whose champion is a tiny untrained simple_cnn, plus a second version to move to."
    from neuronb.pipeline.init import init_project
    root = tmp_path_factory.mktemp('serve')/'proj'
    store = init_project(root).store()
    v1 = _tiny_model(store, root.parent/'m1', seed=0, why='first')
    return root, store, v1


class Server:
    "`neuronb serve` in a subprocess, its output collected by a thread, ready once /ready answers."
    def __init__(self, root, *args, token=None, wait=True):
        self.port = _free_port()
        self.url = f'http://127.0.0.1:{self.port}'
        cmd = [sys.executable, '-c', MAIN, 'serve', str(root), '--port', str(self.port), *args] + (['--token', token] if token else [])
        self.proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines = []
        self._reader = threading.Thread(target=lambda: self.lines.extend(iter(self.proc.stdout.readline, '')), daemon=True)
        self._reader.start()
        if wait: _until(self._ready, f'{self.url}/ready (output so far: {self.lines})', 90)

    def _ready(self):
        assert self.proc.poll() is None, f'the server exited with {self.proc.returncode}:\n' + ''.join(self.lines)
        try: return httpx.get(self.url + '/ready', timeout=5).status_code == 200
        except httpx.TransportError: return False

    def output(self): return ''.join(self.lines)

    def stop(self, sig=signal.SIGTERM):
        "Send `sig` and wait for the exit status; every process the server started must be gone too."
        kids = psutil.Process(self.proc.pid).children(recursive=True)
        self.proc.send_signal(sig)
        try: code = self.proc.wait(60)
        except subprocess.TimeoutExpired: self.proc.kill(); raise
        self._reader.join(10)
        _until(lambda: not [k for k in kids if k.is_running() and k.status() != psutil.STATUS_ZOMBIE], 'the workers to exit', 30)
        return code


def _files(*values): return [('file', (f'd{i}.png', _png(v), 'image/png')) for i, v in enumerate(values)]


def test_predict_uploads_json_info_and_log(project):
    root, store, v1 = project
    s = Server(root, '--log-every', '60')
    try:
        with httpx.Client(base_url=s.url, timeout=30) as c:
            one = c.post('/predict', files=_files(30)).json()
            many = c.post('/predict', files=_files(0, 128, 255)).json()
            js = c.post('/predict', json={'images': [base64.b64encode(_png(7)).decode(),
                                                     'data:image/png;base64,' + base64.b64encode(_png(9)).decode()]}).json()
            ver, health, docs, spec = c.get('/version').json(), c.get('/health'), c.get('/docs'), c.get('/openapi.json').json()
            metrics = c.get('/metrics').text
    finally: code = s.stop()
    assert code == 0, s.output()
    assert [len(r['predictions']) for r in (one, many, js)] == [1, 3, 2]
    assert {r['model'] for r in (one, many, js)} == {v1}
    preds = [p for r in (one, many, js) for p in r['predictions']]
    assert all(p['label'] in [str(i) for i in range(10)] and p['top'][0][0] == p['label'] and len(p['top']) == 5 for p in preds)
    assert (ver['version'], ver['alias'], ver['lineage']['version']) == (v1, 'champion', v1)
    assert health.json() == {'status': 'ok'} and docs.status_code == 200 and 'swagger' in docs.text.lower()
    assert set(spec['paths']['/predict']['post']['requestBody']['content']) == {'multipart/form-data', 'application/json'}
    assert f'neuronb_serve_predictions_total{{model="{v1}"}} 6.0' in metrics
    log = prediction_log(store)   # the log flush every 60 s never came: SIGTERM flushed it
    ids = {p['id'] for p in preds}
    assert ids <= set(log.id), 'predictions missing from the log after SIGTERM'
    row = log[log.id == one['predictions'][0]['id']].iloc[0]
    assert (row.model, row.width, row.height, row['mode'], len(row.embedding), len(row.probabilities)) == (v1, 20, 20, 'L', 32, 10)
    assert abs(row['mean'] - 30 / 255) < 1e-3 and row.latency_ms > 0
    import hashlib
    assert row.input_sha256 == hashlib.sha256(_png(30)).hexdigest()
    import pandas as pd
    assert pd.isna(row.input_ext) and pd.isna(row.shadow_model)   # no --log-inputs, no --shadow: nulls
    assert 'stopped; the prediction log is flushed' in s.output()


def test_bad_inputs_are_json_errors(project):
    root, _, _ = project
    s = Server(root, '--max-mb', '0.05')
    try:
        with httpx.Client(base_url=s.url, timeout=30) as c:
            big = c.post('/predict', files=[('file', ('big.png', b'\0' * 100_000, 'image/png'))])
            chunked = c.post('/predict', content=iter([b'{"images": ["' + b'A' * 30_000] * 4), headers={'content-type': 'application/json'})
            text = c.post('/predict', files=[('file', ('notes.txt', b'just text', 'text/plain'))])
            kind = c.post('/predict', content=b'raw', headers={'content-type': 'text/plain'})
            b64 = c.post('/predict', json={'images': ['@@not base64@@']})
            empty = c.post('/predict', json={'images': []})
            nolist = c.post('/predict', json={'pictures': []})
            missing = c.get('/nope')
    finally: s.stop()
    assert big.status_code == 413 and 'this server takes at most 51 KiB per request' in big.json()['error']
    assert chunked.status_code == 413 and 'the request is over 51 KiB' in chunked.json()['error']   # no Content-Length: counted as read
    assert text.status_code == 415 and "upload 'notes.txt' is not an image" in text.json()['error']
    assert kind.status_code == 415 and 'takes multipart/form-data or application/json, not text/plain' in kind.json()['error']
    assert b64.status_code == 422 and 'images[0] is not valid base64' in b64.json()['error']
    assert empty.status_code == 422 and 'holds no image' in empty.json()['error']
    assert nolist.status_code == 422 and "no 'images' list" in nolist.json()['error']
    assert missing.status_code == 404 and missing.json() == {'error': 'Not Found'}


def test_token_gate(project):
    root, _, _ = project
    s = Server(root, token='s3cret')
    try:
        with httpx.Client(base_url=s.url, timeout=30) as c:
            none, wrong = c.post('/predict', files=_files(1)), c.get('/version', headers={'Authorization': 'Bearer nope'})
            ok = c.post('/predict', files=_files(1), headers={'Authorization': 'Bearer s3cret'})
            probe, metrics = c.get('/health'), c.get('/metrics')
            link = c.get('/docs?token=s3cret')
            spec = c.get('/openapi.json')   # the cookie the link set lets the docs page load its spec
    finally: code = s.stop(signal.SIGINT)
    assert code == 0 and 'stopped; the prediction log is flushed' in s.output()
    assert f'{s.url}/?token=s3cret' in s.output() and f'{s.url}/docs?token=s3cret' in s.output()
    assert none.status_code == 401 and 'requires a token' in none.json()['error']
    assert wrong.status_code == 403 and 'token is wrong' in wrong.json()['error']
    assert ok.status_code == 200 and probe.status_code == 200 and metrics.status_code == 401
    assert link.status_code == 200 and spec.status_code == 200


def test_tampered_model_is_refused(project, tmp_path):
    import shutil
    root, _, v1 = project
    copy = tmp_path/'copy'; shutil.copytree(root, copy)
    cfg = copy/'data'/'models'/v1/'config.json'
    cfg.write_text(cfg.read_text().replace('"width": 8', '"width": 16'))
    res = subprocess.run([sys.executable, '-c', MAIN, 'serve', str(copy), '--port', str(_free_port())], env=ENV,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 1, res.stdout + res.stderr
    assert res.stderr.count('\n') == 1 and 'does not match its SHA-256' in res.stderr and 'Traceback' not in res.stderr


def test_no_champion_yet(tmp_path):
    from neuronb.pipeline.init import init_project
    init_project(tmp_path/'fresh')
    res = subprocess.run([sys.executable, '-c', MAIN, 'serve', str(tmp_path/'fresh'), '--port', str(_free_port())], env=ENV,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 1 and res.stderr.count('\n') == 1, res.stdout + res.stderr
    assert 'no model is champion yet' in res.stderr and 'neuronb models promote' in res.stderr, res.stderr


def test_no_fastai_import(project):
    "Loading, preparing and predicting through the app import nothing of fastai."
    root, _, _ = project
    code = ("import sys, asyncio, httpx\n"
            "from neuronb.serve import ModelServer, serve_app, _png\n"
            "from neuronb.pipeline.project import load_project\n"
            "ms = ModelServer(load_project(sys.argv[1]).store(), watch_every=0, log_every=3600)\n"
            "app = serve_app(ms)\n"
            "async def go():\n"
            "    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url='http://t') as c:\n"
            "        return (await c.post('/predict', files=[('file', ('a.png', _png(3)))])).status_code\n"
            "print(asyncio.run(go()), sorted(m for m in sys.modules if m.split('.')[0] == 'fastai'))\n"
            "ms.close()\n")
    res = subprocess.run([sys.executable, '-c', code, str(root)], env=ENV, capture_output=True, text=True, timeout=120)
    assert res.stdout.split('\n')[0] == '200 []', res.stdout + res.stderr


def test_200_concurrent_requests_and_an_alias_move(project):
    "8 threads x 25+ requests; the champion moves during the load: no request fails and the answers switch version."
    from neuronb.train.registry import move_alias
    root, store, v1 = project
    v2 = _tiny_model(store, root.parent/'m2', seed=1, why='second')
    move_alias(store, 'champion', v1, 'back to the first for this test')
    s = Server(root)
    answers, errors, stop = [[] for _ in range(8)], [], threading.Event()
    def client(out):
        with httpx.Client(base_url=s.url, timeout=60) as c:
            while not stop.is_set() or len(out) < 25:
                try:
                    r = c.post('/predict', files=_files(len(out) % 256))
                    if r.status_code != 200: errors.append((r.status_code, r.text)); continue
                    out.append(r.json()['model'])
                except httpx.HTTPError as e: errors.append(repr(e))
    threads = [threading.Thread(target=client, args=(a,)) for a in answers]
    try:
        for t in threads: t.start()
        _until(lambda: sum(map(len, answers)) >= 80 or errors, '80 answers')
        move_alias(store, 'champion', v2, 'moved during the load')
        _until(lambda: any(v2 in a for a in answers) or errors, f'answers from {v2}', 30)
        done = sum(map(len, answers))
        _until(lambda: sum(map(len, answers)) >= done + 40 or errors, '40 more answers')
        stop.set()
        for t in threads: t.join(60)
        with httpx.Client(base_url=s.url) as c: version, metrics = c.get('/version').json(), c.get('/metrics').text
    finally:
        stop.set(); s.stop()
    total = sum(map(len, answers))
    print(f"{total} requests, {len(errors)} errors; {sum(a.count(v2) for a in answers)} answered by the new champion")
    assert errors == [] and total >= 200
    for a in answers:   # each client sees v1, then v2, never back
        assert a[-1] == v2 and a == sorted(a, key=lambda v: v == v2), a
    assert version['version'] == v2 and 'neuronb_serve_model_swaps_total 1.0' in metrics
    assert f'now serving {v2} (was {v1})' in s.output()
    batches = [l for l in metrics.splitlines() if l.startswith('neuronb_serve_batch_images_count')]
    n_batches, n_images = float(batches[0].split()[-1]), total
    print(f"{n_images} images in {n_batches:.0f} forwards ({n_images / n_batches:.1f} per batch)")


def test_kill_9_loses_at_most_the_last_flush_window(project):
    root, store, _ = project
    every = 1.0
    s = Server(root, '--log-every', str(every))
    answered = []   # (id, monotonic time of the answer)
    with httpx.Client(base_url=s.url, timeout=30) as c:
        start = time.monotonic()
        while time.monotonic() - start < 3.5 * every:
            r = c.post('/predict', files=_files(len(answered) % 256))
            answered.append((r.json()['predictions'][0]['id'], time.monotonic()))
    killed = time.monotonic()
    s.proc.kill(); s.proc.wait(30)
    logged = set(prediction_log(store).id)
    lost = [(pid, killed - t) for pid, t in answered if pid not in logged]
    oldest = max((age for _, age in lost), default=0.0)
    print(f"kill -9 after {len(answered)} predictions: {len(lost)} lost, the oldest answered {oldest:.2f} s before the kill "
          f"(flush window {every} s)")
    assert len(lost) < len(answered), 'nothing was flushed before the kill'
    assert oldest <= every + 0.5, f'lost predictions older than the flush window: {lost[:3]}'


def test_workers_share_metrics_and_stop_cleanly(project):
    root, store, _ = project
    s = Server(root, '--workers', '2', '--log-every', '60')
    ids = []
    try:
        pids = {k.pid for k in psutil.Process(s.proc.pid).children(recursive=True)}
        with httpx.Client(base_url=s.url, timeout=30) as c:
            for i in range(20):
                r = c.post('/predict', files=_files(i), headers={'connection': 'close'})
                assert r.status_code == 200; ids.append(r.json()['predictions'][0]['id'])
            scrapes = [c.get('/metrics', headers={'connection': 'close'}).text for _ in range(6)]
    finally: code = s.stop()
    counts = [sum(float(l.split()[-1]) for l in t.splitlines() if l.startswith('neuronb_serve_predictions_total')) for t in scrapes]
    assert counts == [20.0] * 6, counts   # whichever worker answers the scrape, it counts all of them
    assert code == 0, s.output()
    assert set(ids) <= set(prediction_log(store).id), 'a worker did not flush its log at shutdown'
    assert len(pids) >= 2 and not [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]


def test_shadow_answers_are_logged_never_returned(project):
    "--shadow @challenger --shadow-share 0.5: the caller gets the champion's answers; the rows in the share carry the challenger's, also after it moves."
    import numpy as np
    from neuronb.serve import in_shadow_share, load_served, predict_proba, _prepare_all
    from neuronb.train.registry import move_alias
    root, store, v1 = project
    chall, chall2 = _tiny_model(store, root.parent/'c1', seed=5), _tiny_model(store, root.parent/'c2', seed=6)
    move_alias(store, 'champion', v1, 'back to the first for this test')
    move_alias(store, 'challenger', chall, 'shadowed')
    s = Server(root, '--shadow', '@challenger', '--shadow-share', '0.5', '--log-every', '60')
    values = list(range(0, 256, 8))
    try:
        with httpx.Client(base_url=s.url, timeout=30) as c:
            first = [c.post('/predict', files=_files(v, 255 - v)).json() for v in values]
            ver = c.get('/version').json()
            move_alias(store, 'challenger', chall2, 'a newer challenger')
            _until(lambda: c.get('/version').json()['shadow']['version'] == chall2, 'the shadow to swap')
            after = c.post('/predict', files=_files(*values)).json()
            metrics = c.get('/metrics').text
    finally: code = s.stop()
    assert code == 0, s.output()
    assert ver['version'] == v1 and ver['shadow'] == {'version': chall, 'alias': 'challenger', 'model': '@challenger', 'share': 0.5}
    assert 'also answers 50% of the predictions' in s.output() and f'now shadowing {chall2} (was {chall})' in s.output()
    champ, shadows = load_served(store, v1), {v: load_served(store, v) for v in (chall, chall2)}
    def probs(served, vals): return predict_proba(served.model, served.cfg, _prepare_all([(None, _png(v)) for v in vals], served.cfg)[0])
    for r, vals, shadow in [(r, (v, 255 - v), chall) for r, v in zip(first, values)] + [(after, values, chall2)]:
        assert r['model'] == v1 and all(set(p) == {'id', 'label', 'probability', 'top'} for p in r['predictions'])
        want = probs(champ, vals)   # the champion's answer, whatever the shadow did
        assert [p['label'] for p in r['predictions']] == [champ.classes[i] for i in want.argmax(1)]
        assert np.allclose([p['probability'] for p in r['predictions']], want.max(1), atol=1e-5)
    log = prediction_log(store).set_index('id')
    ids = [p['id'] for r in first + [after] for p in r['predictions']]
    picked = {i for i in ids if in_shadow_share(i, 0.5)}
    assert set(log.loc[ids].index[log.loc[ids].shadow_model.notna()]) == picked   # exactly the share the ids' hashes choose
    assert 0.3 < len(picked) / len(ids) < 0.7
    assert log.loc[list(picked)].shadow_probabilities.map(len).eq(10).all() and log.loc[sorted(set(ids) - picked)].shadow_label.isna().all()
    late = [p['id'] for p in after['predictions']]
    for vals, pids, shadow in [((v, 255 - v), [p['id'] for p in r['predictions']], chall) for r, v in zip(first, values)] + [(values, late, chall2)]:
        want = probs(shadows[shadow], vals)
        for pid, w in zip(pids, want):
            if pid not in picked: continue
            row = log.loc[pid]
            assert row.shadow_model == shadow and row.shadow_label == str(w.argmax()) and np.allclose(row.shadow_probabilities, w, atol=1e-5)
    assert f'neuronb_serve_shadow_predictions_total{{model="{chall}"}}' in metrics


@pytest.mark.parametrize('args, message', [
    (['--shadow', '@challenger', '--shadow-share', '1.5'], '--shadow-share is 1.5; it must be a fraction in (0, 1]'),
    (['--shadow', '@challenger', '--shadow-share', '0'], '--shadow-share is 0.0; it must be a fraction in (0, 1]'),
    (['--shadow-share', '0.2'], '--shadow-share needs --shadow MODEL'),
    (['--shadow', '@nobody'], 'the shadow model @nobody cannot be served: no model is nobody yet'),
    (['--shadow', '0123456789ab'], 'the shadow model 0123456789ab cannot be served: model version'),
])
def test_bad_shadow_settings(project, args, message):
    root, _, _ = project
    res = subprocess.run([sys.executable, '-c', MAIN, 'serve', str(root), '--port', str(_free_port()), *args], env=ENV,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 1 and res.stderr.count('\n') == 1 and 'Traceback' not in res.stderr, res.stdout + res.stderr
    assert message in res.stderr, res.stderr


def test_log_inputs_stores_each_image_content_addressed(project):
    "--log-inputs: every uploaded image lands in the project's object store; the row's input_sha256 names bytes that decode."
    import hashlib
    from neuronb.data.images import decode_image
    from neuronb.serve import _jpeg, logged_input
    root, store, v1 = project
    s = Server(root, '--log-inputs', '--log-every', '60')
    uploads = [_png(17), _jpeg((80, 60), seed=3), _png(17)]
    try:
        with httpx.Client(base_url=s.url, timeout=30) as c:
            multi = c.post('/predict', files=[('file', (f'u{i}', b, 'application/octet-stream')) for i, b in enumerate(uploads)]).json()
            js = c.post('/predict', json={'images': [base64.b64encode(_png(201)).decode()]}).json()
    finally: code = s.stop()
    assert code == 0 and 'inputs are stored' in s.output(), s.output()
    log = prediction_log(store).set_index('id')
    for pred, data in zip(multi['predictions'] + js['predictions'], uploads + [_png(201)]):
        row = log.loc[pred['id']]
        stored = logged_input(store, {'id': pred['id'], **row})
        assert hashlib.sha256(stored).hexdigest() == row.input_sha256 == hashlib.sha256(data).hexdigest() and stored == data
        assert decode_image(stored).size == decode_image(data).size
    assert list(log.loc[[p['id'] for p in multi['predictions']], 'input_ext']) == ['.png', '.jpg', '.png']



def test_openapi_spec_with_schemathesis(project):
    """schemathesis (bounded: 30 derandomized examples per operation) against the live server's /openapi.json: every
    answer has a documented status, content type and body, and none is a 500. (Its pytest loader, `from_fixture`,
    fails under pytest 9, so each operation's strategy is run by hypothesis in this test.)"""
    schemathesis = pytest.importorskip('schemathesis')
    from hypothesis import HealthCheck, given, settings
    from schemathesis.generation.modes import GenerationMode
    from schemathesis.specs.openapi.checks import positive_data_acceptance   # any bytes fit `format: binary`, not every byte string is an image: the 415 is documented
    s = Server(project[0], '--log-every', '60')
    seen = {}
    try:
        schema = schemathesis.openapi.from_url(s.url + '/openapi.json')
        ops = [r.ok() for r in schema.get_all_operations()]
        for op, mode in [(op, m) for op in ops for m in GenerationMode if m == 'positive' or op.method == 'post']:   # fits the spec; then, where there is a body, data that does not
            @given(case=op.as_strategy(mode))
            @settings(max_examples=30, derandomize=True, deadline=None, database=None, suppress_health_check=list(HealthCheck))
            def check(case):
                r = case.call_and_validate(excluded_checks=[positive_data_acceptance])
                seen.setdefault(f'{op.method.upper()} {op.path}', set()).add(r.status_code)
            check()
    finally: code = s.stop()
    assert code == 0, s.output()
    print(seen)
    assert {f'{op.method.upper()} {op.path}' for op in ops} == {'POST /predict', 'GET /health', 'GET /ready', 'GET /version', 'GET /metrics'}
    assert not any(500 in codes for codes in seen.values()) and seen['GET /health'] == {200}
    assert {200, 415, 422} <= seen['POST /predict']   # answers, images refused, malformed requests refused
