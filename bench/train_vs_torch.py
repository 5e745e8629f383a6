"""Training throughput: neuronb's `train_classifier` (a fastai Learner) against a hand-written PyTorch loop.

Both sides train the same model (`build_model`), on the same tensors (scikit-learn's digits rendered at 32 px,
normalized), with the same batch size, epochs, optimizer (torch's fused AdamW, weight decay 0.01) and one-cycle schedule
(lr warm-up for 25% of the steps then cosine decay, momentum 0.95 -> 0.85 -> 0.95), the same shuffled batches
(one gather per epoch, the last partial batch dropped) and a validation pass (loss and accuracy) after every
epoch. Each side is warmed up first (imports, first-batch costs); then the sides alternate for `--repeats`
rounds and each fit is timed from tensors in memory to a trained model. Images/s counts training images
seen; the ratio uses each side's fastest round (the machine may be shared, so the minimum is the stable
statistic; medians are shown too). Two more rows give context: the same hand-written loop with AdamW's
default (unfused) implementation, and plain fastai (its own DataLoader collating items in-process, its own
Adam, all default callbacks; bf16 through fastai's `MixedPrecision`), the starting point neuronb's path improves on.

On a GPU (`--device cuda`, the default when one is visible) the data live in GPU memory before the clock starts,
the model is in channels-last memory order and the forward pass and loss run under bfloat16 autocast on both sides,
cudnn's autotuner is on, the batch is 512 and the training split is repeated 16 times (1,257 images are 2 batches
of 512: far too little work to time a GPU with). Every choice can be overridden; the CPU defaults are the
original benchmark's (fp32, 128 per batch, one copy of the data, contiguous memory).

`--arch` picks the model: `simple_cnn` (the example pipeline's, the default), `resnet18` (torchvision's, adapted
for 32 px: the DESIGN baseline on a GPU) or `linear` (a single linear layer registered by this script: the arithmetic
is nearly free, so the time per step is the training loop's own overhead; use it with a small batch, e.g. `--bs 8`,
to measure how many microseconds per step neuronb's loop costs beyond the hand-written one: `overhead_us_per_step`).

Usage: python bench/train_vs_torch.py [--arch simple_cnn|resnet18|linear] [--device auto|cpu|cuda]
       [--precision fp32|bf16] [--epochs 5] [--bs N] [--copies N] [--images N] [--[no-]channels-last]
       [--repeats 7] [--no-plain]
The last line printed is one JSON object.
"""
import argparse, contextlib, json, os, statistics, time
from functools import partial
os.environ.setdefault('WANDB_MODE', 'disabled')
import torch
from torch import nn
from neuronb.train.learner import train_classifier, digits_example, mean_std, accuracy_on
from neuronb.train.model import ARCHS, build_model, images_to_tensor

ARCHS.setdefault('linear', lambda n_classes=10, in_channels=1, size=32, **_:   # the overhead probe: almost no arithmetic
                 nn.Sequential(nn.Flatten(), nn.Linear(in_channels * size * size, n_classes)))


def make_data(arch='simple_cnn'):
    "Train/valid tensors and the model config, as the example pipeline's train stage builds them."
    data = digits_example(32, seed=0)
    mean, std = mean_std(data['train'][0])
    cfg = {'arch': arch, 'n_classes': 10, 'in_channels': 1, 'width': 32,
           'classes': [str(i) for i in range(10)], 'size': 32, 'mean': mean, 'std': std}
    tens = lambda k: (images_to_tensor(data[k][0], cfg), torch.from_numpy(data[k][1]))
    return (*tens('train'), *tens('valid'), cfg)


def _model(cfg, device, channels_last):
    "`build_model(cfg)` on `device`, in channels-last memory order if asked."
    return build_model(cfg).to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format)


def torch_fit(xt, yt, xv, yv, cfg, epochs, lr, bs, seed=0, wd=0.01, fused=True, precision='fp32', channels_last=False):
    "The hand-written loop: AdamW + OneCycleLR matching fastai's fit_one_cycle, validation each epoch."
    torch.manual_seed(seed)
    model = _model(cfg, xt.device, channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=wd, fused=fused)   # fused: as neuronb's
    n_batches = len(xt) // bs
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * n_batches, pct_start=0.25,
                                                div_factor=25, final_div_factor=1e5 / 25, base_momentum=0.85,
                                                max_momentum=0.95)
    loss_fn, gen = nn.CrossEntropyLoss(), torch.Generator().manual_seed(seed)
    amp = (lambda: torch.autocast(xt.device.type, dtype=torch.bfloat16)) if precision == 'bf16' else contextlib.nullcontext
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(xt), generator=gen).to(xt.device)
        xs, ys = xt[perm], yt[perm]
        for i in range(0, n_batches * bs, bs):
            with amp(): loss = loss_fn(model(xs[i:i+bs]), ys[i:i+bs])
            loss.backward()
            opt.step(); opt.zero_grad(); sched.step()
        model.eval()
        with torch.no_grad(), amp():   # what fastai's validation computes: mean loss and accuracy
            outs = [model(xv[i:i+2*bs]) for i in range(0, len(xv), 2*bs)]
            out = torch.cat(outs)
            valid_loss, valid_acc = loss_fn(out, yv).item(), (out.argmax(1) == yv).float().mean().item()
    return model


def neuronb_fit(xt, yt, xv, yv, cfg, epochs, lr, bs, seed=0, wd=0.01, precision='fp32', channels_last=False):
    "neuronb's training path, as the train stage calls it (no progress bar: nothing to draw in a benchmark)."
    return train_classifier(xt, yt, xv, yv, cfg, epochs=epochs, lr=lr, bs=bs, seed=seed, wd=wd, progress=False,
                            precision=precision, channels_last=channels_last).model


def plain_fastai_fit(xt, yt, xv, yv, cfg, epochs, lr, bs, seed=0, wd=0.01, precision='fp32', channels_last=False):
    "A plain fastai Learner: fastai's DataLoader over (image, label) items (in-process), fastai's Adam, default callbacks."
    from fastai.data.load import DataLoader
    from fastai.data.core import DataLoaders
    from fastai.learner import Learner
    from fastai.metrics import accuracy
    from fastai.callback.progress import ProgressCallback
    from fastai.torch_core import set_seed
    import fastai.callback.schedule, fastai.callback.fp16
    cudnn = torch.backends.cudnn
    flags = cudnn.deterministic, cudnn.benchmark
    set_seed(seed, reproducible=True)
    cudnn.deterministic, cudnn.benchmark = flags   # reproducible=True turns cudnn's autotuner off for every later fit
    dls = DataLoaders(DataLoader(list(zip(xt, yt)), bs=bs, shuffle=True, drop_last=True, num_workers=0),
                      DataLoader(list(zip(xv, yv)), bs=2 * bs, num_workers=0), device=xt.device)
    learn = Learner(dls, _model(cfg, xt.device, channels_last), loss_func=nn.CrossEntropyLoss(), metrics=accuracy, wd=wd)
    if precision == 'bf16' and xt.device.type == 'cuda': learn.to_bf16()   # fastai's MixedPrecision autocasts CUDA only
    learn.remove_cb(ProgressCallback); learn.logger = lambda *a, **k: None
    learn.fit_one_cycle(epochs, lr)
    return learn.model


def _sync(device):
    "Wait for the GPU's queued work, so a timer measures it."
    if device.type == 'cuda': torch.cuda.synchronize(device)


def timed(fit, *args):
    "Seconds `fit(*args)` took, its queued GPU work included, and its model."
    _sync(args[0].device)
    t0 = time.perf_counter()
    model = fit(*args)
    _sync(args[0].device)
    return time.perf_counter() - t0, model


def settings(a):
    "Fill the device-dependent defaults of the parsed arguments `a` in place."
    if a.device == 'auto': a.device = 'cuda' if torch.cuda.is_available() else 'cpu'
    if a.device == 'cuda' and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device here; run on a GPU machine or pass --device cpu")
    gpu = a.device == 'cuda'
    if a.precision is None: a.precision = 'bf16' if gpu else 'fp32'
    if a.bs is None: a.bs = 512 if gpu else 128
    if a.copies is None: a.copies = 16 if gpu else 1
    if a.channels_last is None: a.channels_last = gpu
    return a


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--arch', choices=['simple_cnn', 'resnet18', 'linear'], default='simple_cnn',
                   help='linear: a nearly free model, so the timings are the loops\' per-step overhead')
    p.add_argument('--device', choices=['auto', 'cpu', 'cuda'], default='auto', help='auto: cuda when available')
    p.add_argument('--precision', choices=['fp32', 'bf16'], default=None, help='default: bf16 on cuda, fp32 on cpu')
    p.add_argument('--epochs', type=int, default=5)
    p.add_argument('--bs', type=int, default=None, help='default: 512 on cuda, 128 on cpu')
    p.add_argument('--copies', type=int, default=None, help='train on this many copies of the training split '
                   '(default: 16 on cuda, 1 on cpu)')
    p.add_argument('--images', type=int, default=None, help='use only the first N training (before the copies) and '
                   'validation images: a quick run of a big model on a CPU')
    p.add_argument('--channels-last', action=argparse.BooleanOptionalAction, default=None,
                   help='model and images in channels-last memory order (default: on cuda only)')
    p.add_argument('--lr', type=float, default=3e-3)
    p.add_argument('--repeats', type=int, default=7)
    p.add_argument('--no-plain', action='store_true', help='only the two compared rows')
    return settings(p.parse_args(argv))


def main(argv=None):
    a = parse_args(argv)
    dev = torch.device(a.device)
    gpu_name = torch.cuda.get_device_name(dev) if dev.type == 'cuda' else None
    if dev.type == 'cuda': torch.backends.cudnn.benchmark = True   # fixed shapes: let cudnn pick its fastest kernels
    xt, yt, xv, yv, cfg = make_data(a.arch)
    if a.images: xt, yt, xv, yv = xt[:a.images], yt[:a.images], xv[:a.images], yv[:a.images]
    xt, yt = xt.repeat(a.copies, 1, 1, 1), yt.repeat(a.copies)
    if a.channels_last: xt, xv = (x.contiguous(memory_format=torch.channels_last) for x in (xt, xv))
    xt, yt, xv, yv = (t.to(dev) for t in (xt, yt, xv, yv))   # resident on the device before any clock starts
    opts = dict(precision=a.precision, channels_last=a.channels_last)
    sides = {'torch loop': partial(torch_fit, **opts), 'neuronb': partial(neuronb_fit, **opts)}
    if not a.no_plain:
        sides['torch, unfused'] = partial(torch_fit, fused=False, **opts)   # what a loop with AdamW's defaults gets
        sides['plain fastai'] = partial(plain_fastai_fit, **opts)
    for _ in range(2):   # warm-up: imports, lazy initialisation, first-batch costs of every batch shape
        for fit in sides.values(): fit(xt, yt, xv, yv, cfg, 1, a.lr, a.bs)
    times, acc = {k: [] for k in sides}, {}
    for _ in range(a.repeats):
        for name, fit in sides.items():
            dt, model = timed(fit, xt, yt, xv, yv, cfg, a.epochs, a.lr, a.bs)
            times[name].append(dt)
            acc[name] = accuracy_on(model, xv, yv)
    n_steps = a.epochs * (len(xt) // a.bs)
    n_img = n_steps * a.bs
    img_s = {k: n_img / min(v) for k, v in times.items()}
    where = f"{gpu_name}, {a.precision}{', channels_last' if a.channels_last else ''}" if gpu_name else \
            f"cpu, {torch.get_num_threads()} threads, {a.precision}{', channels_last' if a.channels_last else ''}"
    overhead_us = 1e6 * (min(times['neuronb']) - min(times['torch loop'])) / n_steps
    print(f"{a.arch}, digits 32 px, {len(xt)} train ({a.copies} x {len(xt) // a.copies}) / {len(xv)} valid images, {a.epochs} epochs, "
          f"bs {a.bs}, {n_steps} steps, {a.repeats} rounds ({where})")
    print(f"{'path':<16}{'best s':>8}{'median s':>10}{'ms/step':>9}{'img/s':>10}{'vs torch':>10}{'valid acc':>11}")
    for k, v in times.items():
        print(f"{k:<16}{min(v):>8.3f}{statistics.median(v):>10.3f}{1e3 * min(v) / n_steps:>9.3f}{img_s[k]:>10.0f}"
              f"{img_s[k] / img_s['torch loop']:>10.3f}{acc[k]:>11.4f}")
    print(f"neuronb's loop costs {overhead_us:+.1f} us/step beyond the hand-written one (best rounds)")
    print(json.dumps({'bench': 'train_vs_torch', 'value': round(img_s['neuronb'] / img_s['torch loop'], 4), 'unit': 'ratio',
                      'arch': a.arch, 'overhead_us_per_step': round(overhead_us, 1),
                      'neuronb_img_s': round(img_s['neuronb'], 1), 'torch_img_s': round(img_s['torch loop'], 1),
                      'epochs': a.epochs, 'bs': a.bs, 'device': dev.type, 'gpu_name': gpu_name,
                      'precision': a.precision, 'channels_last': a.channels_last, 'train_images': len(xt),
                      'neuronb_acc': round(acc['neuronb'], 4), 'torch_acc': round(acc['torch loop'], 4)}))


if __name__ == '__main__':
    main()
