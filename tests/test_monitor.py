"""Monitoring through a real `neuronb serve`: held-out digits (the same writers as the training data) sent over HTTP raise no alarm in ten windows; 30% inverted
digits make `neuronb monitor --once` fire a retraining whose model the gate promotes only when it is better; new labels
fire one; the schedule condition fires on time under a given clock. Every decision is recorded and shown."""
import io, json, os, re, subprocess, sys
from datetime import timedelta
import numpy as np
import pytest
os.environ['WANDB_MODE'] = 'disabled'
httpx = pytest.importorskip('httpx')
from PIL import Image
from test_serve import Server, _until, MAIN, ENV


def _cli(*args, ok=True):
    r = subprocess.run([sys.executable, '-c', MAIN, *map(str, args)], env=ENV, capture_output=True, text=True, timeout=900)
    if ok: assert r.returncode == 0, r.stdout + r.stderr
    return r


def _set_train(root, **params):
    "Rewrite the train stage's parameters in pipeline.yaml (what a retraining trains with)."
    import yaml
    cfg = yaml.safe_load((root/'pipeline.yaml').read_text())
    cfg['stages']['train']['parameters'].update(params)
    (root/'pipeline.yaml').write_text(yaml.safe_dump(cfg, sort_keys=False))


@pytest.fixture(scope='module')
def project(tmp_path_factory):
    "The digits example on a third of its images (the rest are held-out traffic), a weak first champion, `neuronb serve` serving it."
    import yaml
    root = tmp_path_factory.mktemp('monitor')/'digits'
    _cli('init', root)
    traffic = root.parent/'traffic'
    traffic.mkdir()
    for p in sorted((root/'source').glob('img_?????.png')):   # the same writers on both sides: every third digit is ingested
        if int(p.stem[4:]) % 3: p.rename(traffic/p.name)
    cfg = yaml.safe_load((root/'pipeline.yaml').read_text())
    cfg['stages']['demo']['parameters'] = {'n_samples': 5}
    cfg['stages']['train']['parameters'].update(epochs=1, lr=0.0005, bs=32, workers=0)
    cfg['monitor']['parameters'] = {'window': 200, 'min_requests': 100, 'history': 3}
    cfg['triggers'] = {'retrain': {'when': ['drift', 'new_labels >= 25', {'every': '7d'}]}}
    cfg['promote']['min'] = 0.0    # the weak first model may be champion; every later one must beat it
    (root/'pipeline.yaml').write_text(yaml.safe_dump(cfg, sort_keys=False))
    _cli('run', root)
    server = Server(root, '--log-every', '0.2')
    try: yield root, server
    finally: server.stop()


def _pictures(root, first, n, inverted=0.0, seed=0):
    "Held-out digits `first`.. `first + n` of the pool in a random order (as arriving users, not writer after writer), a share `inverted` of them with light and dark swapped."
    rng, out = np.random.default_rng(seed), []
    pool = sorted((root.parent/'traffic').glob('img_*.png'))
    for i in np.random.default_rng(0).permutation(len(pool))[first:first + n]:
        p = pool[i]
        data = p.read_bytes()
        if rng.random() < inverted:
            buf = io.BytesIO(); Image.fromarray(255 - np.asarray(Image.open(io.BytesIO(data)).convert('L'))).save(buf, 'PNG'); data = buf.getvalue()
        out.append(data)
    return out


def _send(server, store, pictures):
    "POST the pictures to the server twenty at a time; wait until the prediction log holds them all."
    from neuronb.serve import prediction_log
    before = len(prediction_log(store))
    with httpx.Client(base_url=server.url, timeout=60) as c:
        for k in range(0, len(pictures), 20):
            r = c.post('/predict', files=[('file', (f'{k + j}.png', d, 'image/png')) for j, d in enumerate(pictures[k:k + 20])])
            assert r.status_code == 200, r.text
    _until(lambda: len(prediction_log(store)) >= before + len(pictures), 'the prediction log to hold the requests', 60)


def _decisions(root):
    return json.loads(_cli('monitor', root, '--history', '--json').stdout)


def test_clean_traffic_raises_no_alarm_in_ten_windows(project):
    from neuronb.pipeline.project import load_project
    from neuronb.train.registry import aliases
    from neuronb.monitor import reference_frame, drift_report
    from neuronb.serve import prediction_log
    root, server = project
    proj = load_project(root)
    store = proj.store()
    champion = aliases(store)['champion']
    _send(server, store, _pictures(root, 0, 1000))
    log = prediction_log(store)
    log = log[log.model == champion].tail(1000)
    ref = reference_frame(store, champion, dataset=proj.dataset, progress=False)
    verdicts = [drift_report(ref, log.iloc[k:k + 100], min_requests=100) for k in range(0, 1000, 100)]
    assert [v['status'] for v in verdicts] == ['ok'] * 10, [v['reasons'] for v in verdicts]
    r = _cli('monitor', root, '--once')
    assert re.search(r' ok -> no trigger fired \[monitor run \d{8}-\d{6}-\w{4}\]', r.stdout), r.stdout
    d = _decisions(root)[-1]
    assert (d['verdict'], d['requests'], d['fired'], d['action']) == ('ok', 200, [], None), d
    run = d['monitor_run']
    assert (root/'runs'/run/'01_monitor.ipynb').is_file() and (root/'runs'/run/'01_monitor.html').is_file()
    shown = json.loads(_cli('show', run, '--dir', root, '--json').stdout)
    assert shown['stages'][0]['metrics']['verdict'] == 'ok' and shown['monitor'][0]['monitor_run'] == run


def test_drift_retrains_and_the_gate_promotes_only_a_better_model(project):
    from neuronb.pipeline.project import load_project
    from neuronb.train.registry import aliases, lineage
    root, server = project
    store = load_project(root).store()
    weak = aliases(store)['champion']
    _set_train(root, epochs=3, lr=0.01)   # what the next training trains with: better than the first champion
    _send(server, store, _pictures(root, 1000, 200, inverted=0.3))
    r = _cli('monitor', root, '--once')
    d = _decisions(root)[-1]
    assert d['verdict'] == 'drift' and d['fired'] == ['drift'] and d['action'] == 'retrain', d
    assert any('brightness' in why or 'look different' in why for why in d['reasons']), d['reasons']
    assert d['retrain']['outcome'] == 'promoted' and d['retrain']['version'] == aliases(store)['champion'] != weak, d
    better = d['retrain']['version']
    assert lineage(store, better)['metrics']['test_accuracy'] > lineage(store, weak)['metrics']['test_accuracy']
    assert f"promoted {better} to champion" in r.stdout and 'drift -> retraining (fired: drift)' in r.stdout, r.stdout
    _until(lambda: httpx.get(server.url + '/version').json()['version'] == better, 'the server to swap to the new champion', 60)
    shown = _cli('show', d['retrain']['run'], '--dir', root).stdout
    assert 'a retraining the monitor fired:' in shown and f"promoted {better}" in shown, shown

    # a worse training: the gate keeps the champion, and the decision says so
    _set_train(root, epochs=1, lr=0.00001)
    _send(server, store, _pictures(root, 0, 150, inverted=0.5, seed=1))
    _cli('monitor', root, '--once', '-p', 'window=150')
    d = _decisions(root)[-1]
    assert d['verdict'] == 'drift' and d['retrain']['outcome'] == 'kept' and aliases(store)['champion'] == better, d
    assert "does not beat the champion's" in d['retrain']['reason'], d
    lines = _cli('monitor', root, '--history').stdout.splitlines()
    assert len(lines) == len(_decisions(root)) >= 3 and 'kept the champion' in lines[-1], lines


def test_new_labels_fire_a_retraining(project):
    from neuronb.pipeline.project import load_project
    from neuronb.data.prepare import read_index
    from neuronb.label.events import LabelEvent
    from neuronb.label.project import ProjectEvents
    root, _ = project
    proj = load_project(root)
    store = proj.store()
    df, _ = read_index(store, proj.dataset)
    ProjectEvents(store).add_many([LabelEvent(h, 'alice', str(l)) for h, l in zip(df.hash[:24], df.label[:24])])
    d = json.loads(_cli('monitor', root, '--once', '--no-retrain', '--json').stdout)
    assert not any('new labels' in f for f in d['fired']), d   # 24 of the 25 needed
    ProjectEvents(store).add(LabelEvent(df.hash[24], 'alice', str(df.label[24])))
    r = _cli('monitor', root, '--once')
    d = _decisions(root)[-1]
    assert '25 new labels (new_labels >= 25)' in d['fired'] and d['retrain']['outcome'] in ('promoted', 'kept'), d
    assert 'retraining (fired: ' in r.stdout, r.stdout


def test_the_schedule_condition_fires_on_time(project):
    from neuronb.triggers import _time
    root, _ = project
    last = max(_time(d['time']) for d in _decisions(root) if d['action'] == 'retrain')
    early = json.loads(_cli('monitor', root, '--once', '--no-retrain', '--json', '--now', (last + timedelta(days=6, hours=23)).isoformat()).stdout)
    assert not any('old (every 7d)' in f for f in early['fired']), early
    due = json.loads(_cli('monitor', root, '--once', '--no-retrain', '--json', '--now', (last + timedelta(days=7, minutes=1)).isoformat()).stdout)
    assert any(f.startswith("the champion's data is 7.0d old (every 7d)") for f in due['fired']), due
    assert due['action'] == 'none: retraining is off (--no-retrain)' and due['time'].startswith((last + timedelta(days=7)).date().isoformat())


def test_bad_monitor_settings_are_refused(project, tmp_path):
    root, _ = project
    r = _cli('monitor', root, '--once', '-p', 'windw=3', ok=False)
    assert r.returncode == 1 and "unknown parameter 'windw' for stages/07_monitor.ipynb; did you mean 'window'?" in r.stderr, r.stderr
    r = _cli('monitor', root, '--every', 'soon', ok=False)
    assert r.returncode == 1 and "--every is 'soon'; write it as a number and a unit" in r.stderr, r.stderr
    r = _cli('monitor', root, '--cron', '* * *', ok=False)
    assert r.returncode == 1 and 'needs five fields' in r.stderr, r.stderr
    bare = tmp_path/'bare'
    _cli('init', bare)
    text = (bare/'pipeline.yaml').read_text()
    (bare/'pipeline.yaml').write_text(re.sub(r'\nmonitor:\n(  .*\n)+', '\n', text))
    r = _cli('monitor', bare, '--once', ok=False)
    assert r.returncode == 1 and 'has no `monitor:` block' in r.stderr, r.stderr
