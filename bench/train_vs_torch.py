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
Adam, all default callbacks), the starting point neuronb's path improves on.

Usage: python bench/train_vs_torch.py [--epochs 5] [--bs 128] [--repeats 7] [--no-plain]
The last line printed is one JSON object.
"""
import argparse, json, os, statistics, time
from functools import partial
os.environ.setdefault('WANDB_MODE', 'disabled')
import torch
from torch import nn
from neuronb.train.learner import train_classifier, digits_example, mean_std, accuracy_on
from neuronb.train.model import build_model, images_to_tensor


def make_data():
    "Train/valid tensors and the model config, as the example pipeline's train stage builds them."
    data = digits_example(32, seed=0)
    mean, std = mean_std(data['train'][0])
    cfg = {'arch': 'simple_cnn', 'n_classes': 10, 'in_channels': 1, 'width': 32,
           'classes': [str(i) for i in range(10)], 'size': 32, 'mean': mean, 'std': std}
    tens = lambda k: (images_to_tensor(data[k][0], cfg), torch.from_numpy(data[k][1]))
    return (*tens('train'), *tens('valid'), cfg)


def torch_fit(xt, yt, xv, yv, cfg, epochs, lr, bs, seed=0, wd=0.01, fused=True):
    "The hand-written loop: AdamW + OneCycleLR matching fastai's fit_one_cycle, validation each epoch."
    torch.manual_seed(seed)
    model = build_model(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=wd, fused=fused)   # fused: as neuronb's
    n_batches = len(xt) // bs
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * n_batches, pct_start=0.25,
                                                div_factor=25, final_div_factor=1e5 / 25, base_momentum=0.85,
                                                max_momentum=0.95)
    loss_fn, gen = nn.CrossEntropyLoss(), torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(xt), generator=gen)
        xs, ys = xt[perm], yt[perm]
        for i in range(0, n_batches * bs, bs):
            loss = loss_fn(model(xs[i:i+bs]), ys[i:i+bs])
            loss.backward()
            opt.step(); opt.zero_grad(); sched.step()
        model.eval()
        with torch.no_grad():   # what fastai's validation computes: mean loss and accuracy
            outs = [model(xv[i:i+2*bs]) for i in range(0, len(xv), 2*bs)]
            out = torch.cat(outs)
            valid_loss, valid_acc = loss_fn(out, yv).item(), (out.argmax(1) == yv).float().mean().item()
    return model


def neuronb_fit(xt, yt, xv, yv, cfg, epochs, lr, bs, seed=0, wd=0.01):
    "neuronb's training path, as the train stage calls it (no progress bar: nothing to draw in a benchmark)."
    return train_classifier(xt, yt, xv, yv, cfg, epochs=epochs, lr=lr, bs=bs, seed=seed, wd=wd, progress=False).model


def plain_fastai_fit(xt, yt, xv, yv, cfg, epochs, lr, bs, seed=0, wd=0.01):
    "A plain fastai Learner: fastai's DataLoader over (image, label) items (in-process), fastai's Adam, default callbacks."
    from fastai.data.load import DataLoader
    from fastai.data.core import DataLoaders
    from fastai.learner import Learner
    from fastai.metrics import accuracy
    from fastai.callback.progress import ProgressCallback
    from fastai.torch_core import set_seed
    import fastai.callback.schedule
    set_seed(seed, reproducible=True)
    dls = DataLoaders(DataLoader(list(zip(xt, yt)), bs=bs, shuffle=True, drop_last=True, num_workers=0),
                      DataLoader(list(zip(xv, yv)), bs=2 * bs, num_workers=0), device='cpu')
    learn = Learner(dls, build_model(cfg), loss_func=nn.CrossEntropyLoss(), metrics=accuracy, wd=wd)
    learn.remove_cb(ProgressCallback); learn.logger = lambda *a, **k: None
    learn.fit_one_cycle(epochs, lr)
    return learn.model


def timed(fit, *args):
    "Seconds `fit(*args)` took, and its model."
    t0 = time.perf_counter()
    model = fit(*args)
    return time.perf_counter() - t0, model


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--epochs', type=int, default=5)
    p.add_argument('--bs', type=int, default=128)
    p.add_argument('--lr', type=float, default=3e-3)
    p.add_argument('--repeats', type=int, default=7)
    p.add_argument('--no-plain', action='store_true', help='only the two compared rows')
    a = p.parse_args()
    xt, yt, xv, yv, cfg = make_data()
    sides = {'torch loop': torch_fit, 'neuronb': neuronb_fit}
    if not a.no_plain:
        sides['torch, unfused'] = partial(torch_fit, fused=False)   # what a loop with AdamW's defaults gets
        sides['plain fastai'] = plain_fastai_fit
    for _ in range(2):   # warm-up: imports, lazy initialisation, first-batch costs of every batch shape
        for fit in sides.values(): fit(xt, yt, xv, yv, cfg, 1, a.lr, a.bs)
    times, acc = {k: [] for k in sides}, {}
    for _ in range(a.repeats):
        for name, fit in sides.items():
            dt, model = timed(fit, xt, yt, xv, yv, cfg, a.epochs, a.lr, a.bs)
            times[name].append(dt)
            acc[name] = accuracy_on(model, xv, yv)
    n_img = a.epochs * (len(xt) // a.bs) * a.bs
    img_s = {k: n_img / min(v) for k, v in times.items()}
    print(f"digits 32 px, {len(xt)} train / {len(xv)} valid images, {a.epochs} epochs, bs {a.bs}, "
          f"{torch.get_num_threads()} threads, {a.repeats} rounds (cpu)")
    print(f"{'path':<16}{'best s':>8}{'median s':>10}{'img/s':>9}{'vs torch':>10}{'valid acc':>11}")
    for k, v in times.items():
        print(f"{k:<16}{min(v):>8.3f}{statistics.median(v):>10.3f}{img_s[k]:>9.0f}"
              f"{img_s[k] / img_s['torch loop']:>10.3f}{acc[k]:>11.4f}")
    print(json.dumps({'bench': 'train_vs_torch', 'value': round(img_s['neuronb'] / img_s['torch loop'], 4), 'unit': 'ratio',
                      'neuronb_img_s': round(img_s['neuronb'], 1), 'torch_img_s': round(img_s['torch loop'], 1),
                      'epochs': a.epochs, 'bs': a.bs, 'device': 'cpu',
                      'neuronb_acc': round(acc['neuronb'], 4), 'torch_acc': round(acc['torch loop'], 4)}))


if __name__ == '__main__':
    main()
