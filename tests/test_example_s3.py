"""The example pipeline with its project storage on S3: a standalone S3 server (moto) on 127.0.0.1."""
import json, logging, os, subprocess, sys
from pathlib import Path
import pytest

BIN = Path(sys.executable).parent
TINY = ['-p', 'ingest.limit=300', '-p', 'train.epochs=2', '-p', 'demo.n_samples=5']


@pytest.fixture(scope='module')
def s3(tmp_path_factory):
    from moto.server import ThreadedMotoServer
    logging.getLogger('werkzeug').setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address='127.0.0.1', port=0, verbose=False)
    server.start()
    none = tmp_path_factory.mktemp('aws')/'none'
    env = {**os.environ, 'WANDB_MODE': 'disabled', 'AWS_ACCESS_KEY_ID': 'testing', 'AWS_SECRET_ACCESS_KEY': 'testing',
           'AWS_DEFAULT_REGION': 'us-east-1', 'AWS_EC2_METADATA_DISABLED': 'true', 'AWS_CONFIG_FILE': str(none),
           'AWS_SHARED_CREDENTIALS_FILE': str(none), 'AWS_ENDPOINT_URL_S3': f"http://127.0.0.1:{server._server.server_port}"}
    for k in ('AWS_PROFILE', 'AWS_SESSION_TOKEN', 'AWS_ENDPOINT_URL'): env.pop(k, None)
    import s3fs
    s3fs.S3FileSystem(endpoint_url=env['AWS_ENDPOINT_URL_S3'], key='testing', secret='testing', skip_instance_cache=True).mkdir('neuronb')
    try: yield env
    finally: server.stop()


def neuronb(env, *args):
    return subprocess.run([str(BIN/'neuronb'), *map(str, args)], capture_output=True, text=True, env=env, timeout=900)


def project_on(tmp_path, env, storage):
    assert neuronb(env, 'init', tmp_path/'p').returncode == 0
    pfile = tmp_path/'p/pipeline.yaml'
    text = pfile.read_text().replace('storage: data ', f'storage: {storage} ')
    # two epochs on 300 images is a storage test, not a model: its gate takes any first model (the floor is tested elsewhere)
    pfile.write_text(text.replace('promote: {metric: test_accuracy, min: 0.5,', 'promote: {metric: test_accuracy, min: null,'))
    return tmp_path/'p'


def test_example_pipeline_on_s3(s3, tmp_path):
    root = project_on(tmp_path, s3, 's3://neuronb/digits')
    run = neuronb(s3, 'run', root, *TINY)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert not (root/'data').exists()                       # nothing went to local storage
    import s3fs
    fs = s3fs.S3FileSystem(endpoint_url=s3['AWS_ENDPOINT_URL_S3'], key='testing', secret='testing', skip_instance_cache=True)
    latest = json.loads(fs.cat('neuronb/digits/models/latest.json'))
    assert fs.exists(f"neuronb/digits/models/{latest['version']}/model.safetensors")
    assert json.loads(fs.cat('neuronb/digits/models/champion.json'))['version'] == latest['version']
    assert fs.exists(f"neuronb/digits/models/{latest['version']}/lineage.json") and fs.find('neuronb/digits/models/events')
    assert len(fs.find('neuronb/digits/objects')) >= 300
    again = neuronb(s3, 'run', root, *TINY)
    assert again.returncode == 0 and 'Everything is up to date' in again.stdout
    log = neuronb(s3, 'data', '--dir', root, 'log', '-d', 'digits')
    assert log.returncode == 0 and '300 files' in log.stdout
    fs.rm(f"neuronb/digits/models/latest.json")              # an output changed behind neuronb's back: train reruns
    rerun = neuronb(s3, 'run', root, *TINY)
    assert rerun.returncode == 0 and 'train      running (output store:models/latest.json missing)' in rerun.stdout, rerun.stdout


def test_missing_bucket_is_one_clear_message(s3, tmp_path):
    root = project_on(tmp_path, s3, 's3://no-such-bucket/digits')
    out = neuronb(s3, 'run', root)
    assert out.returncode == 1 and "bucket 'no-such-bucket'" in out.stderr and 'create it first' in out.stderr
    assert 'Traceback' not in out.stderr and not (root/'runs').exists()


def test_missing_credentials_is_one_clear_message(s3, tmp_path):
    root = project_on(tmp_path, s3, 's3://neuronb/other')
    env = {k: v for k, v in s3.items() if k not in ('AWS_ACCESS_KEY_ID', 'AWS_SECRET_ACCESS_KEY')}
    out = neuronb(env, 'run', root)
    assert out.returncode == 1 and 'no credentials' in out.stderr and 'AWS_ACCESS_KEY_ID' in out.stderr
