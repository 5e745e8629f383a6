"Training (neuronb.train): data-parallel training in 2 CPU processes, resuming an interrupted fit, lr finder, top losses."
import json, os, re
import pytest
import torch

os.environ.setdefault('WANDB_MODE', 'disabled')
from neuronb.core import ModelError, ParameterError
from neuronb.train.learner import (digits_example, mean_std, train_classifier, last_checkpoint, load_checkpoint,
                                   find_lr, top_losses, accuracy_on)
from neuronb.train.model import images_to_tensor, load_model
from neuronb.train.distributed import train_distributed, read_result

KW = dict(epochs=4, lr=1e-2, bs=64, seed=0)


@pytest.fixture(scope='module')
def digits():
    "The digits at 16 px, a small CNN config, and the tensors of the train and valid splits."
    data = digits_example(size=16)
    mean, std = mean_std(data['train'][0])
    cfg = {'arch': 'simple_cnn', 'n_classes': 10, 'width': 8, 'classes': [str(i) for i in range(10)], 'size': 16,
           'mean': mean, 'std': std}
    t = lambda s: (images_to_tensor(data[s][0], cfg), torch.from_numpy(data[s][1]))
    return cfg, (*t('train'), *t('valid'))


@pytest.fixture(scope='module')
def single(digits):
    "One process, one torch thread, the settings the 2-process run uses."
    cfg, data = digits
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try: return train_classifier(*data, cfg, progress=False, **KW)
    finally: torch.set_num_threads(threads)


def test_two_cpu_processes_save_one_model_as_accurate_as_one_process(digits, single, tmp_path):
    cfg, data = digits
    run = train_distributed(*data, cfg, nproc=2, folder=tmp_path/'job', threads=1, timeout=500, **KW)
    # rank 0 alone wrote the model and the history; every rank logged, none failed
    assert run.history['saved_by_rank'] == 0 and run.history['world_size'] == 2
    assert sorted(p.name for p in (tmp_path/'job/model').iterdir()) == ['config.json', 'manifest.json', 'model.safetensors']
    assert sorted(p.name for p in (tmp_path/'job').iterdir()) == ['data.safetensors', 'history.json', 'job.json', 'logs', 'model']
    assert sorted(p.name for p in (tmp_path/'job/logs').iterdir()) == ['launcher-node0.log', 'rank0.log', 'rank1.log']
    assert 'rank 1/2: done' in (tmp_path/'job/logs/rank1.log').read_text()
    # the validation metrics are those of the whole validation split, summed over both ranks' shards
    acc_ddp, acc_one = run.history['values'][-1][2], float(single.recorder.values[-1][2])
    assert abs(acc_ddp - acc_one) <= 0.03, (acc_ddp, acc_one)
    assert acc_ddp > 0.85
    assert 'rank 0/2: done' in (tmp_path/'job/logs/rank0.log').read_text()
    # the saved model is the trained one and loads through the safe path
    model, saved = load_model(tmp_path/'job/model')
    assert saved['metrics']['accuracy'] == pytest.approx(acc_ddp)
    assert accuracy_on(model, data[2], data[3]) == pytest.approx(acc_ddp, abs=0.02)   # rank 0's batch-norm statistics
    assert read_result(tmp_path/'job').history == run.history


def test_a_failing_worker_names_its_rank_and_log(digits, tmp_path):
    cfg, data = digits
    (tmp_path/'not-a-folder').write_text('')   # rank 0 alone writes checkpoints: it fails, rank 1 is left waiting
    with pytest.raises(ModelError) as e:
        train_distributed(*data, cfg, nproc=2, folder=tmp_path/'job', threads=1, timeout=500,
                          checkpoint_dir=str(tmp_path/'not-a-folder'), **{**KW, 'epochs': 2})
    msg = str(e.value)
    assert 'distributed training failed on rank 0: FileExistsError' in msg, msg
    assert f"Its log: {tmp_path/'job/logs/rank0.log'}" in msg and 'launcher-node0.log' in msg
    assert 'Traceback' in (tmp_path/'job/logs/rank0.error').read_text()
    assert not (tmp_path/'job/model').exists()


def test_bad_launch_arguments_are_refused_before_anything_starts(digits, tmp_path):
    cfg, data = digits
    for kw, msg in [(dict(nproc=0), 'at least 1'), (dict(nproc=2, nnodes=2), 'needs rdzv_endpoint'),
                    (dict(nproc=3), 'does not split evenly over 3 processes'), (dict(nproc=2, epoch=3), "unknown training arguments ['epoch']")]:
        with pytest.raises(ParameterError, match=re.escape(msg)): train_distributed(*data, cfg, folder=tmp_path/'j', **{**KW, **kw})
    assert not (tmp_path/'j'/'logs').exists()


def test_resume_after_an_interruption_matches_an_uninterrupted_fit(digits, tmp_path):
    from fastai.callback.core import Callback
    cfg, data = digits
    class Crash(Callback):
        def before_epoch(self):
            if self.epoch == 2: raise KeyboardInterrupt   # as if the job were stopped after epoch 2 of 4
    full = train_classifier(*data, cfg, progress=False, **KW)
    with pytest.raises(KeyboardInterrupt): train_classifier(*data, cfg, progress=False, checkpoint_dir=tmp_path, cbs=[Crash()], **KW)
    assert last_checkpoint(tmp_path).name == 'epoch-0002'
    assert json.loads((last_checkpoint(tmp_path)/'meta.json').read_text())['finished'] is False
    resumed = train_classifier(*data, cfg, progress=False, checkpoint_dir=tmp_path, resume=True, **KW)
    assert resumed.recorder.values == full.recorder.values
    assert all(torch.equal(a, b) for a, b in zip(resumed.model.state_dict().values(), full.model.state_dict().values()))
    assert sorted(p.name for p in tmp_path.iterdir()) == ['epoch-0004']   # older checkpoints removed, no temporary folders
    assert not list(tmp_path.rglob('*.pt*')) and not list(tmp_path.rglob('*.pkl'))   # tensors and JSON only
    with pytest.raises(ModelError, match=r'different fit \(epochs 4 -> 5\)'):
        train_classifier(*data, cfg, progress=False, checkpoint_dir=tmp_path, resume=True, **{**KW, 'epochs': 5})


def test_find_lr_and_top_losses(digits, single):
    cfg, data = digits
    lr, fig = find_lr(*data, cfg, bs=64, num_it=30)
    assert 1e-5 < lr < 1 and fig is not None
    idx, losses, preds = top_losses(single.model, data[2], data[3], k=5)
    assert len(idx) == 5 and bool((losses[:-1] >= losses[1:]).all())
    assert (preds != data[3][idx]).sum() >= 1   # the worst-predicted images include mistakes


def test_example_train_stage_with_two_processes_and_the_lr_finder(tmp_path):
    "The example pipeline's train stage with nproc=2 and find_lr: the path `neuronb train --nproc 2` takes."
    import subprocess, sys
    from pathlib import Path
    bin_ = Path(sys.executable).parent/'neuronb'
    env = {**os.environ, 'WANDB_MODE': 'disabled'}
    run = lambda *a: subprocess.run([str(bin_), *map(str, a)], capture_output=True, text=True, env=env, timeout=900)
    assert run('init', tmp_path/'p').returncode == 0
    out = run('run', tmp_path/'p', '-p', 'ingest.limit=600', '-p', 'train.epochs=4', '-p', 'train.bs=32',
              '-p', 'train.nproc=2', '-p', 'train.find_lr=true', *[a for s in ('ingest', 'label', 'prepare', 'train') for a in ('--only', s)])
    assert out.returncode == 0, out.stdout + out.stderr
    (record,) = (tmp_path/'p/runs').glob('*/run.json')
    metrics = {s['stage']: s['metrics'] for s in json.loads(record.read_text())['stages']}
    assert metrics['train']['test_accuracy'] > 0.8 and 1e-5 < metrics['train']['found_lr'] < 1
    cfg = json.loads((tmp_path/'p/data/models'/metrics['train']['model_version']/'config.json').read_text())
    assert cfg['nproc'] == 2
    assert last_checkpoint(tmp_path/'p/.neuronb/checkpoints/train') is not None
