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
