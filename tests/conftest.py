"""Fixtures shared by the storage tests: a real S3-protocol server (moto's standalone server) on 127.0.0.1."""
import logging
import pytest


@pytest.fixture(scope='module')
def s3_endpoint():
    "The URL of a moto S3 server on a free loopback port, stopped when the module's tests are done."
    pytest.importorskip('moto.server'); pytest.importorskip('s3fs')
    from moto.server import ThreadedMotoServer
    logging.getLogger('werkzeug').setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address='127.0.0.1', port=0, verbose=False)
    server.start()
    try: yield f"http://127.0.0.1:{server._server.server_port}"
    finally: server.stop()


@pytest.fixture
def aws_env(monkeypatch, tmp_path):
    "Test credentials and nothing else from the machine's AWS configuration."
    for k in ('AWS_PROFILE', 'AWS_SESSION_TOKEN', 'AWS_ENDPOINT_URL', 'AWS_ENDPOINT_URL_S3'): monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv('AWS_ACCESS_KEY_ID', 'testing'); monkeypatch.setenv('AWS_SECRET_ACCESS_KEY', 'testing')
    monkeypatch.setenv('AWS_DEFAULT_REGION', 'us-east-1'); monkeypatch.setenv('AWS_EC2_METADATA_DISABLED', 'true')
    monkeypatch.setenv('AWS_CONFIG_FILE', str(tmp_path/'none')); monkeypatch.setenv('AWS_SHARED_CREDENTIALS_FILE', str(tmp_path/'none'))
    return monkeypatch


def stop_server(proc, sig=None, timeout=60):
    "Signal a server we started (SIGTERM by default) and wait until it and every process it started are gone; the ones left."
    import signal, psutil
    try: family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess: family = []
    if proc.poll() is None: proc.send_signal(sig or signal.SIGTERM)
    _, alive = psutil.wait_procs(family, timeout=timeout)
    left = []
    for p in alive:   # never leave them to the next test: name them, then end them
        try: left.append(' '.join(p.cmdline()[:4])); p.kill()
        except psutil.NoSuchProcess: pass
    proc.wait(10)
    return left
