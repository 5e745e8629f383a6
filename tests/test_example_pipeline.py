"""End to end: the built-in example through the real CLI, then its demo served by Voila and used in Chromium."""
import io, json, os, socket, subprocess, sys, time
from pathlib import Path
import pytest
from conftest import DemoServer, stop_server

BIN = Path(sys.executable).parent
ENV = {**os.environ, 'WANDB_MODE': 'disabled'}
TINY = ['-p', 'ingest.limit=600', '-p', 'train.epochs=5', '-p', 'train.bs=32', '-p', 'train.lr=0.01']
STAGES = ['ingest', 'label', 'prepare', 'analyze', 'train', 'demo']


def neuronb(*args, timeout=900, cwd=None):
    return subprocess.run([str(BIN/'neuronb'), *map(str, args)], capture_output=True, text=True, env=ENV,
                          timeout=timeout, cwd=cwd)


@pytest.fixture(scope='module')
def example(tmp_path_factory):
    "A project made by `neuronb init` and run once with tiny settings."
    root = tmp_path_factory.mktemp('e2e')/'digits'
    made = neuronb('init', root)
    assert made.returncode == 0, made.stderr
    run = neuronb('run', root, *TINY)
    return root, run


def test_pipeline_runs_every_stage(example):
    root, run = example
    assert run.returncode == 0, run.stdout + run.stderr
    for i, stage in enumerate(STAGES, 1):
        assert f'[{i}/6] {stage:<10} ok in' in run.stdout
    assert 'Executed notebooks (.ipynb and .html): ' in run.stdout
    assert f'neuronb demo' in run.stdout
    (folder,) = [p for p in (root/'runs').iterdir() if p.is_dir() and p.name != 'wandb']
    record = json.loads((folder/'run.json').read_text())
    assert (folder/'index.html').exists()
    assert record['ok'] and [s['stage'] for s in record['stages']] == STAGES
    for i, stage in enumerate(STAGES, 1):
        status = json.loads((folder/f'{i:02d}_{stage}.status.json').read_text())
        assert status['status'] == 'ok'
        assert (folder/f'{i:02d}_{stage}.html').stat().st_size > 1000
    metrics = {s['stage']: s['metrics'] for s in record['stages']}
    assert metrics['ingest']['files_ingested'] == 599 and metrics['ingest']['rejected'] == 1   # the first 600 files: one is a broken transfer
    assert metrics['label']['mean_agreement'] > 0.8
    assert metrics['prepare']['n_train'] > metrics['prepare']['n_test'] > 0
    assert metrics['train']['test_accuracy'] > 0.85      # 420 training images, 5 epochs
    assert metrics['demo']['sample_accuracy'] >= 0.5
    latest = json.loads((root/'data/models/latest.json').read_text())
    assert latest['version'] == metrics['train']['model_version']
    assert metrics['train']['promoted'] is True   # the first model past the gate's min becomes champion
    assert f"Champion: {latest['version']} (test_accuracy" in run.stdout
    assert f"Serve it over HTTP: neuronb serve " in run.stdout       # `make run` ends with the champion and how to serve it
    assert not list(root.rglob('*.pkl')) and not list(root.rglob('*.pth'))  # weights + JSON, never a pickle


def test_full_example_reaches_95_percent(tmp_path):
    "The example exactly as `make run` runs it: all 1797 digits, the pipeline file's settings."
    assert neuronb('init', tmp_path/'full').returncode == 0
    run = neuronb('run', tmp_path/'full')
    assert run.returncode == 0, run.stdout + run.stderr
    (record,) = (tmp_path/'full/runs').glob('*/run.json')
    metrics = {s['stage']: s['metrics'] for s in json.loads(record.read_text())['stages']}
    assert metrics['ingest']['files_ingested'] == 1797
    assert metrics['train']['test_accuracy'] >= 0.95
    assert metrics['demo']['sample_accuracy'] >= 0.9


def test_stage_notebooks_still_run_with_plain_papermill(example, tmp_path):
    root, _ = example
    nb = root/'stages/04_analyze.ipynb'   # it only reads, so the project stays as the other tests expect it
    out = subprocess.run([str(BIN/'papermill'), str(nb), str(tmp_path/'out.ipynb'), '-p', 'samples_per_class', '2', '--cwd', str(nb.parent)],
                         capture_output=True, text=True, env=ENV, timeout=300)
    assert out.returncode == 0, out.stderr
    assert 'imbalance_ratio' in (tmp_path/'out.ipynb').read_text()


def test_analysis_notebook_has_plots(example):
    root, _ = example
    nb = sorted((root/'runs').glob('*/04_analyze.ipynb'))[0]
    cells = json.loads(nb.read_text())['cells']
    pngs = [o for c in cells for o in c.get('outputs', []) if 'image/png' in o.get('data', {})]
    assert len(pngs) >= 4


def test_second_run_reuses_everything_and_a_train_parameter_reruns_only_train_and_demo(example):
    root, _ = example
    again = neuronb('run', root, *TINY)
    assert again.returncode == 0 and 'Everything is up to date' in again.stdout, \
        [line for line in again.stdout.splitlines() if 'up to date' not in line]   # what ran, and why
    status = neuronb('status', root, )
    assert status.returncode == 0
    assert 'train' in status.stdout and 'stale' in status.stdout  # the pipeline file says epochs 10, the run used 5
    changed = neuronb('run', root, *TINY[:-2], '-p', 'train.lr=0.02')
    assert changed.returncode == 0, changed.stdout + changed.stderr
    for stage in ('ingest', 'label', 'prepare', 'analyze'):
        assert f'{stage:<10} up to date' in changed.stdout
    assert f'{"train":<10} ok in' in changed.stdout
    models = json.loads(neuronb('models', '--dir', root, 'list', '--json').stdout)
    assert len(models) == 2 and 'champion' in models[0]['aliases'] + models[1]['aliases']
    promoted = 'champion' in models[1]['aliases']   # the gate decides; the demo follows the champion only
    assert f'{"demo":<10} {"ok in" if promoted else "up to date"}' in changed.stdout, (promoted, changed.stdout)
    runs = neuronb('runs', root)
    assert runs.returncode == 0 and runs.stdout.count('ok') >= 2
    show = neuronb('show', '--dir', root)
    assert show.returncode == 0 and 'lr' in show.stdout and 'train' in show.stdout
    newest = sorted(p for p in (root/'runs').iterdir() if p.is_dir() and p.name != 'wandb')[-1]
    assert newest.name in show.stdout and (newest/'index.html').exists()


def test_a_bad_training_run_never_becomes_champion(example):
    "One epoch at a tiny learning rate: registered, refused by the gate, the champion and the demo unchanged."
    root, _ = example
    before = json.loads((root/'data/models/champion.json').read_text())['version']
    bad = neuronb('run', root, *TINY[:-4], '-p', 'train.epochs=1', '-p', 'train.lr=1e-6')
    assert bad.returncode == 0, bad.stdout + bad.stderr
    assert f'{"demo":<10} up to date' in bad.stdout and f"Champion: {before}" in bad.stdout
    models = json.loads(neuronb('models', '--dir', root, 'list', '--json').stdout)
    refused = models[-1]
    assert refused['aliases'] == ['challenger'] and 'champion' not in refused['aliases']
    assert "below the gate's min" in refused['decision'] or 'does not beat the champion' in refused['decision'], refused
    shown = neuronb('models', '--dir', root, 'show', refused['version'])
    assert shown.returncode == 0 and 'gate refused' in shown.stdout, shown.stdout
    assert json.loads((root/'data/models/champion.json').read_text())['version'] == before


def test_models_reproduce_rebuilds_the_champion_exactly(example):
    "The champion rebuilt from its run's notebooks, parameters and data version: every metric and its version equal."
    root, _ = example
    champ = json.loads((root/'data/models/champion.json').read_text())['version']
    untouched = lambda: (sorted((root/'runs').iterdir()), sorted((root/'data/models/events').iterdir()))
    before = untouched()
    out = neuronb('models', '--dir', root, 'reproduce', '@champion', '--json')
    assert out.returncode == 0, out.stdout + out.stderr
    r = json.loads(out.stdout)
    assert r['matches'] and r['version'] == champ and r['stages'] == ['label', 'prepare', 'train'], r
    assert r['metrics']['train']['model_version'] == {'original': champ, 'reproduced': champ}   # the same bundle, byte for byte
    acc = r['metrics']['train']['test_accuracy']
    assert acc['original'] == acc['reproduced'] and acc['original'] > 0
    assert untouched() == before                       # the project's runs, models and aliases are not touched
    assert Path(r['folder']) == root/'.neuronb/reproduce'/champ and (Path(r['folder'])/'pipeline.yaml').is_file()
    crowd = root/'crowd/crowd_results.csv'
    text = crowd.read_text()
    try:
        crowd.write_text(text + '\n')                  # an input changed since the run: refused, by name
        out = neuronb('models', '--dir', root, 'reproduce')
        assert out.returncode == 1 and 'crowd/crowd_results.csv (read by label)' in out.stderr and '--anyway' in out.stderr, out.stderr
        assert 'Traceback' not in out.stderr
    finally: crowd.write_text(text)


def test_bad_override_is_refused_before_anything_runs(example):
    root, _ = example
    before = sorted((root/'runs').iterdir())
    assert before
    out = neuronb('run', root, '-p', 'train.epoch=2')
    assert out.returncode == 1
    assert "epoch" in out.stderr and "epochs" in out.stderr and 'Traceback' not in out.stderr
    assert sorted((root/'runs').iterdir()) == before


def test_unknown_stage_is_refused(example):
    root, _ = example
    out = neuronb('run', root, '--only', 'deploy')
    assert out.returncode == 1 and "no stage named 'deploy'" in out.stderr


def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


def _wait_port(port, proc, timeout=60):
    end = time.time() + timeout
    while time.time() < end:
        assert proc.poll() is None, proc.stdout.read()
        with socket.socket() as s:
            if s.connect_ex(('127.0.0.1', port)) == 0: return
        time.sleep(0.2)
    raise TimeoutError(f'nothing listening on {port}')


CHROMIUM_ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
                 '--disable-component-update', '--disable-sync', '--no-first-run']


@pytest.fixture
def demo_server(example):
    root, _ = example
    demo = DemoServer([str(BIN/'neuronb'), 'demo', str(root), '--port', str(_free_port()), '--share', 'qa'], ENV, preheated=True)
    try: yield root, demo
    finally: assert demo.stop() == [], "the demo left processes behind"   # Voila and every kernel gone


def _digit_on_paper(root):
    "A held-out digit as a user would photograph it: dark ink on white, bigger, in colour."
    from PIL import Image, ImageOps
    index = (root/'data/datasets/digits/index.csv').read_text().splitlines()
    header = index[0].split(',')
    rows = [dict(zip(header, line.split(','))) for line in index[1:]]
    row = next(r for r in rows if r['split'] == 'test')
    obj = next((root/'data/objects').rglob(row['hash'] + '*'))
    img = ImageOps.invert(Image.open(obj).convert('L')).resize((96, 96)).convert('RGB')
    buf = io.BytesIO(); img.save(buf, format='PNG')
    return buf.getvalue()


@pytest.mark.browser
def test_demo_predicts_an_uploaded_digit_in_chromium(demo_server, tmp_path):
    from playwright.sync_api import sync_playwright
    from PIL import Image
    from neuronb.train.model import load_model, predict_proba
    root, demo = demo_server
    png = _digit_on_paper(root)
    (tmp_path/'digit.png').write_bytes(png)
    latest = json.loads((root/'data/models/latest.json').read_text())['version']
    model, cfg = load_model(root/'data/models'/latest)
    expected = cfg['classes'][int(predict_proba(model, cfg, [Image.open(io.BytesIO(png))])[0].argmax())]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path='/usr/bin/chromium', args=CHROMIUM_ARGS)
        page = browser.new_page()
        page.goto(demo.link('qa'), wait_until='domcontentloaded')   # `neuronb demo --share qa` printed qa's link
        page.wait_for_selector('.nb-upload', timeout=90_000)
        assert 'test accuracy' in page.inner_text('.nb-model')
        with page.expect_file_chooser() as chooser:
            page.click('.nb-upload')
        chooser.value.set_files(str(tmp_path/'digit.png'))
        page.wait_for_selector('.nb-prediction-value', timeout=30_000)
        assert page.inner_text('.nb-prediction-value').strip() == str(expected)
        assert page.locator('.nb-probs-table > div').count() == 3   # the top three of the ten digits
        page.screenshot(path=str(tmp_path/'demo.png'))
        browser.close()


def test_demo_without_a_model_says_what_to_do(tmp_path):
    made = neuronb('init', tmp_path/'fresh')
    assert made.returncode == 0
    out = neuronb('demo', tmp_path/'fresh', '--port', str(_free_port()))
    assert out.returncode == 1 and 'run the pipeline first' in out.stderr


def test_neuronb_serve_answers_with_an_id_the_prediction_log_keeps(example):
    "`neuronb serve` of the example: an uploaded held-out digit gets the champion's answer, and its id is in the log after SIGTERM."
    import httpx
    from neuronb.pipeline.project import load_project
    from neuronb.serve import prediction_log
    root, _ = example
    champ = json.loads((root/'data/models/champion.json').read_text())['version']
    port = _free_port()
    proc = subprocess.Popen([str(BIN/'neuronb'), 'serve', str(root), '--port', str(port)], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _wait_port(port, proc)
        with httpx.Client(base_url=f'http://127.0.0.1:{port}', timeout=60) as c:
            end = time.time() + 60
            while c.get('/ready').status_code != 200:     # listening; the model may still be loading
                assert time.time() < end and proc.poll() is None, 'the server never became ready'
                time.sleep(0.1)
            r = c.post('/predict', files=[('file', ('digit.png', _digit_on_paper(root), 'image/png'))])
    finally:
        assert stop_server(proc) == [], "the server left processes behind"
    assert r.status_code == 200, r.text
    (pred,) = r.json()['predictions']
    assert r.json()['model'] == champ and pred['label'] in [str(i) for i in range(10)]
    log = prediction_log(load_project(root).store())
    row = log[log.id == pred['id']]
    assert len(row) == 1 and row.iloc[0].model == champ and row.iloc[0].label == pred['label']
