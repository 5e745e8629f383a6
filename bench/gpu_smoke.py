"""Smoke test of neuronb's training path on a GPU: train, score, save and load, count host syncs.

For each setting (bf16 + channels-last, then fp32), `train_classifier` fits the digits at 32 px on `--device` and
the checks are: validation and test accuracy >= 0.9; `save_model` + `load_model` give back a model whose predictions
on the test split (same device) have the same classes and probabilities within 1e-3; the recorder's loss curve is on
the CPU; and, on CUDA, no single place in the code made the host wait for the GPU once per training batch (counted
with torch's sync debug mode, by file and line: a per-batch read-back, such as fastai's recorder copying each loss to
the CPU, syncs at one place at least once per batch; one-off syncs such as moving the model there are fine).

Usage: python bench/gpu_smoke.py [--device cuda] [--epochs 4] [--bs 64] [--precisions bf16,fp32]
Prints one line per check and a JSON last line; exits 1 when any check failed.
"""
import argparse, json, os, sys, tempfile, time, warnings
from collections import Counter
os.environ.setdefault('WANDB_MODE', 'disabled')
import numpy as np
import torch
from neuronb.train.learner import train_classifier, digits_example, mean_std, accuracy_on
from neuronb.train.model import images_to_tensor, save_model, load_model, predict_proba


def make_splits():
    "Normalized train/valid/test tensors of the digits at 32 px, and the model config."
    data = digits_example(32, seed=0)
    mean, std = mean_std(data['train'][0])
    cfg = {'arch': 'simple_cnn', 'n_classes': 10, 'in_channels': 1, 'width': 32,
           'classes': [str(i) for i in range(10)], 'size': 32, 'mean': mean, 'std': std}
    return {k: (images_to_tensor(x, cfg), torch.from_numpy(y)) for k, (x, y) in data.items()}, cfg


def _count_syncs(fn):
    "`fn()`'s result and a Counter of the places ('file:line') where it made the GPU wait (torch's sync debug mode)."
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        torch.cuda.set_sync_debug_mode('warn')
        try: out = fn()
        finally: torch.cuda.set_sync_debug_mode('default')
    return out, Counter(f"{os.path.basename(w.filename)}:{w.lineno}" for w in caught if 'synchroniz' in str(w.message).lower())


def fit_counting_syncs(splits, cfg, device, **kw):
    "`train_classifier` on `device`; the learner, seconds, and the host syncs per place (None off CUDA)."
    (xt, yt), (xv, yv) = splits['train'], splits['valid']
    xt, yt, xv, yv = (t.to(device) for t in (xt, yt, xv, yv))   # resident before the fit, as a GPU user would have them
    fit = lambda: train_classifier(xt, yt, xv, yv, cfg, device=device, progress=False, **kw)
    t0 = time.perf_counter()
    if device.type != 'cuda': return fit(), time.perf_counter() - t0, None
    learn, syncs = _count_syncs(fit)
    torch.cuda.synchronize()
    return learn, time.perf_counter() - t0, syncs


def check_setting(splits, cfg, device, precision, epochs, bs):
    "Run every check for one precision; returns {check: (ok, detail)}."
    channels_last = precision == 'bf16'
    learn, dt, syncs = fit_counting_syncs(splits, cfg, device, epochs=epochs, lr=1e-2, bs=bs, seed=0,
                                          precision=precision, channels_last=channels_last)
    (xv, yv), (xs, ys) = splits['valid'], splits['test']
    xv, xs = xv.to(device), xs.to(device)
    res = {}
    va, ta = accuracy_on(learn.model, xv, yv), accuracy_on(learn.model, xs, ys)
    res['accuracy'] = (va >= 0.9 and ta >= 0.9, f"valid {va:.4f}, test {ta:.4f} after {epochs} epochs, {dt:.2f} s")
    n_batches = epochs * (len(splits['train'][1]) // bs)
    if syncs is not None:   # a per-batch read-back shows up as one place syncing at least once per training batch
        _, probe = _count_syncs(lambda: torch.ones(1, device=device).item())   # the detector itself works
        worst = max(syncs.values(), default=0)
        res['host syncs'] = (worst < n_batches and sum(probe.values()) >= 1,
                             f"{sum(syncs.values())} during the fit ({n_batches} training batches), at most {worst} at one "
                             f"place; busiest places {syncs.most_common(4)}; probe .item() counted {sum(probe.values())}")
    losses = learn.recorder.losses
    res['loss curve on cpu'] = (len(losses) == n_batches and all(l.device.type == 'cpu' for l in losses),
                                f"{len(losses)} values, last {float(losses[-1]):.4f}")
    with tempfile.TemporaryDirectory() as d:
        saved = save_model(learn.model, cfg, d)
        model2, cfg2 = load_model(d)
    p1 = predict_proba(learn.model, cfg, xs)
    p2 = predict_proba(model2.to(device), cfg2, xs)
    p_cpu = predict_proba(model2.cpu(), cfg2, splits['test'][0])
    same, diff = (p1.argmax(1) == p2.argmax(1)).all(), float(np.abs(p1 - p2).max())
    res['save/load round trip'] = (bool(same) and diff < 1e-3 and saved['weights_sha256'] == cfg2['weights_sha256'],
                                   f"same classes {bool(same)}, max prob diff {diff:.2e}; on cpu "
                                   f"{int((p_cpu.argmax(1) == p1.argmax(1)).sum())}/{len(p1)} same classes")
    return res


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--device', default='cuda')
    p.add_argument('--epochs', type=int, default=4)
    p.add_argument('--bs', type=int, default=64)
    p.add_argument('--precisions', default='bf16,fp32')
    a = p.parse_args(argv)
    device = torch.device(a.device)
    if device.type == 'cuda' and not torch.cuda.is_available():
        sys.exit("--device cuda: torch sees no CUDA device here; run on a GPU machine or pass --device cpu")
    gpu_name = torch.cuda.get_device_name(device) if device.type == 'cuda' else None
    print(f"torch {torch.__version__}, device {device}{f' ({gpu_name})' if gpu_name else ''}")
    splits, cfg = make_splits()
    results = {}
    for precision in a.precisions.split(','):
        for name, (ok, detail) in check_setting(splits, cfg, device, precision, a.epochs, a.bs).items():
            results[f"{precision}: {name}"] = ok
            print(f"{'ok  ' if ok else 'FAIL'} {precision}: {name}: {detail}", flush=True)
    failed = [k for k, ok in results.items() if not ok]
    print(json.dumps({'smoke': 'train_on_device', 'device': device.type, 'gpu_name': gpu_name, 'ok': not failed,
                      'failed': failed, 'checks': len(results)}))
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
