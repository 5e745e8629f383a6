"""Stages on a Dask cluster: the example on a LocalCluster of two worker processes with its storage on the moto S3
server (the project shipped to the workers as to a remote cluster), a second run that does nothing, two independent
stages at once on different workers, and a worker killed mid-stage: the stage fails naming it, and the run resumes."""
import json, os, signal, subprocess, sys, threading, time
from pathlib import Path
import pytest
os.environ['WANDB_MODE'] = 'disabled'
pytest.importorskip('distributed')
from conftest import until

MAIN = 'import sys; from neuronb.cli import main; sys.exit(main())'
ENV = {**os.environ, 'WANDB_MODE': 'disabled', 'OMP_NUM_THREADS': '1'}


def _cli(*args, env=None, ok=True):
    r = subprocess.run([sys.executable, '-c', MAIN, *map(str, args)], env=env or ENV, capture_output=True, text=True, timeout=900)
    if ok: assert r.returncode == 0, r.stdout + r.stderr
    return r


def _cluster():
    "A LocalCluster of two worker processes (one thread each) on loopback, started with this process's environment."
    from distributed import LocalCluster
    import logging
    return LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, host='127.0.0.1', silence_logs=logging.ERROR)


def test_the_example_on_a_dask_cluster_with_s3_storage(tmp_path, s3_endpoint, aws_env):
    import s3fs, yaml
    fs = s3fs.S3FileSystem(endpoint_url=s3_endpoint, key='testing', secret='testing', skip_instance_cache=True)
    fs.mkdir('runs-bucket')
    aws_env.setenv('AWS_ENDPOINT_URL_S3', s3_endpoint)   # before the workers start: their stages open storage with it
    env = {**ENV, **{k: v for k, v in os.environ.items() if k.startswith('AWS_')}}
    with _cluster() as cluster: _example_on(cluster, tmp_path, env, fs)


def _example_on(cluster, tmp_path, env, fs):
    import yaml
    root = tmp_path/'digits'
    _cli('init', root, env=env)
    cfg = yaml.safe_load((root/'pipeline.yaml').read_text())
    cfg['storage'] = 's3://runs-bucket/digits'
    cfg['executor'] = {'dask': {'address': cluster.scheduler_address}}
    cfg['stages']['ingest']['parameters']['limit'] = 200
    cfg['stages']['train']['parameters'].update(epochs=2, bs=32, lr=0.01, workers=0)
    cfg['promote']['min'] = 0.0   # a quick model on 200 images: the gate's floor is not what this tests
    cfg['stages']['demo']['parameters'] = {'n_samples': 3}
    (root/'pipeline.yaml').write_text(yaml.safe_dump(cfg, sort_keys=False))
    first = _cli('run', root, env=env)
    assert 'Pipeline finished' in first.stdout, first.stdout
    run = json.loads(_cli('show', '--dir', root, '--json', env=env).stdout)
    assert [s['status'] for s in run['stages']] == ['ok'] * 6, run['stages']
    assert (root/run['stages'][-1]['notebook']).is_file() and (root/run['stages'][-1]['html']).is_file()   # executed notebooks come back to runs/
    assert fs.exists('runs-bucket/digits/models/champion.json') and not (root/'data').exists()
    again = _cli('run', root, env=env)
    assert 'Everything is up to date' in again.stdout, again.stdout


def _toy(root, stages: dict, executor):
    "A project whose stages are the given code (each a notebook with `wait` as its one parameter)."
    from neuronb.pipeline.engine import _stage_nb
    (root/'stages').mkdir(parents=True)
    lines = ['stages:']
    for name, code in stages.items():
        (root/'stages'/f'{name}.ipynb').write_text(_stage_nb('wait = 60', code))
        lines.append(f'  {name}: {{notebook: stages/{name}.ipynb, outputs: [{name}.txt]}}')
    lines.append(f'executor: {json.dumps(executor)}')
    (root/'pipeline.yaml').write_text('\n'.join(lines) + '\n')


WHO = ("import os, time\nfrom pathlib import Path\nfrom neuronb.core import record\n"
       "Path('../{me}.pid').write_text(str(os.getppid()))   # the kernel's parent: the Dask worker\n"
       "end = time.monotonic() + wait\n"
       "while not Path('../{other}.pid').exists():   # both must be running at once\n"
       "    assert time.monotonic() < end, 'the other stage never started'\n"
       "    time.sleep(0.05)\n"
       "Path('../{me}.txt').write_text('done')\nrecord('worker_pid', os.getppid())")


def test_two_independent_stages_run_at_once_on_different_workers(tmp_path):
    root = tmp_path/'toy'
    _toy(root, {'a': WHO.format(me='a', other='b'), 'b': WHO.format(me='b', other='a')}, {'dask': {'workers': 2}})
    r = _cli('run', root, '--jobs', '2')
    run = json.loads(_cli('show', '--dir', root, '--json').stdout)
    pids = {s['stage']: s['metrics']['worker_pid'] for s in run['stages']}
    assert set(pids) == {'a', 'b'} and pids['a'] != pids['b'], (pids, r.stdout)
    assert 'Everything is up to date' in _cli('run', root, '--jobs', '2', '--executor', 'dask').stdout


def test_a_worker_killed_mid_stage_fails_the_stage_and_the_run_resumes(tmp_path):
    root = tmp_path/'toy'
    code = ("import os, time\nfrom pathlib import Path\n"
            "Path('../victim.pid').write_text(str(os.getppid()))\n"
            "end = time.monotonic() + wait\n"
            "while not Path('../go').exists():\n"
            "    assert time.monotonic() < end, 'never told to go on'\n"
            "    time.sleep(0.05)\n"
            "Path('../slow.txt').write_text('done')")
    _toy(root, {'slow': code}, {'dask': {'workers': 1}})
    proc = subprocess.Popen([sys.executable, '-c', MAIN, 'run', str(root)], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = []
    reader = threading.Thread(target=lambda: out.extend(iter(proc.stdout.readline, '')), daemon=True); reader.start()
    pid = int(until(lambda: (root/'victim.pid').exists() and (root/'victim.pid').read_text(), 'the stage to start on the worker', 120))
    os.kill(pid, signal.SIGKILL)
    assert proc.wait(120) == 1
    reader.join(10)
    text = ''.join(out)
    assert 'slow       dead' in text and 'the Dask worker running it died' in text, text
    (root/'victim.pid').unlink(); (root/'go').write_text('')
    again = _cli('run', root)
    assert 'slow       running (' in again.stdout and (root/'slow.txt').read_text() == 'done', again.stdout
