"""`neuronb sync`: offline W&B runs, uploads bounded by a timeout, one clear message when it cannot upload."""
import os, socket, subprocess, sys, threading
from pathlib import Path
import pytest

BIN = Path(sys.executable).parent


def cli(env, *args):
    return subprocess.run([str(BIN/'neuronb'), *map(str, args)], capture_output=True, text=True, env=env, timeout=120)


@pytest.fixture
def project(tmp_path):
    env = {**os.environ, 'NETRC': str(tmp_path/'netrc')}
    env.pop('WANDB_API_KEY', None)
    assert cli(env, 'init', tmp_path/'p').returncode == 0
    code = ("import wandb\nr = wandb.init(project='neuronb-test', dir=%r)\nr.log({'acc': 0.5})\nr.finish()" % str(tmp_path/'p/runs'))
    made = subprocess.run([sys.executable, '-c', code], env={**env, 'WANDB_MODE': 'offline', 'WANDB_SILENT': 'true'},
                          capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stderr
    assert list((tmp_path/'p/runs/wandb').glob('offline-run-*'))
    return tmp_path/'p', env


def test_sync_without_an_api_key_says_how_to_log_in(project):
    root, env = project
    out = cli(env, 'sync', root)
    assert out.returncode == 1 and 'wandb login' in out.stderr and 'Traceback' not in out.stderr


def test_sync_to_an_unresponsive_server_stops_at_the_timeout(project):
    root, env = project
    silent = socket.socket(); silent.bind(('127.0.0.1', 0)); silent.listen(16)   # accepts, never answers
    conns = []
    def hold():
        try:
            for _ in range(16): conns.append(silent.accept())
        except OSError: pass   # the socket closed when the test ended
    threading.Thread(target=hold, daemon=True).start()
    env = {**env, 'WANDB_API_KEY': 'x' * 40, 'WANDB_BASE_URL': f'http://127.0.0.1:{silent.getsockname()[1]}'}
    try: out = cli(env, 'sync', root, '--timeout', '5')
    finally: silent.close()
    assert out.returncode == 1, out.stdout
    assert ('within 5s' in out.stderr or '`wandb sync` failed' in out.stderr) and 'Traceback' not in out.stderr
    assert list((root/'runs/wandb').glob('offline-run-*/.neuronb-synced')) == []   # still waiting, nothing marked


TRAIN_ONLINE = """
import sys, time
t0 = time.time()
from neuronb.train.learner import digits_example, mean_std, train_classifier
from neuronb.train.model import images_to_tensor
import torch
data = digits_example(size=8)
mean, std = mean_std(data['train'][0])
cfg = {'arch': 'simple_cnn', 'n_classes': 10, 'width': 4, 'classes': [str(i) for i in range(10)], 'size': 8, 'mean': mean, 'std': std}
t = lambda s, n: (images_to_tensor(data[s][0][:n], cfg), torch.from_numpy(data[s][1][:n]))
learn = train_classifier(*t('train', 128), *t('valid', 64), cfg, epochs=1, bs=64, wandb_project='neuronb-test', wandb_dir=sys.argv[1],
                         progress=False)
print('trained', len(learn.recorder.values), flush=True)
"""


def test_training_online_with_an_unreachable_server_goes_offline_and_says_so(tmp_path):
    "WANDB_MODE=online, an API key, a W&B server that refuses connections: the training runs, offline, with one line saying so."
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); port = s.getsockname()[1]   # closed once the block ends
    env = {**os.environ, 'WANDB_MODE': 'online', 'WANDB_API_KEY': 'k' * 40, 'WANDB_BASE_URL': f'http://127.0.0.1:{port}',
           'WANDB_CONFIG_DIR': str(tmp_path/'wandbcfg'), 'NETRC': str(tmp_path/'netrc')}
    out = subprocess.run([sys.executable, '-c', TRAIN_ONLINE, str(tmp_path/'runs')], capture_output=True, text=True, env=env,
                         timeout=90)   # an online wandb.init alone used to retry for about 90 s and then fail the training
    assert out.returncode == 0 and 'trained 1' in out.stdout, out.stderr
    line = [l for l in out.stderr.splitlines() if l.startswith('WANDB_MODE=online, but')]
    assert len(line) == 1, out.stderr
    assert f'the W&B server http://127.0.0.1:{port} did not answer within 2 s: this run is recorded offline in' in line[0]
    assert '`neuronb sync` uploads it when the server can be reached' in line[0]
    runs = list((tmp_path/'runs'/'wandb').glob('offline-run-*'))
    assert len(runs) == 1 and line[0].split('recorded offline in ')[1].startswith(str(runs[0]))
    assert list((tmp_path/'runs'/'wandb').glob('run-*')) == []   # no online run was begun
    assert list(runs[0].glob('*.wandb')), 'the offline run holds no data'
