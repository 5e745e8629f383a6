"""Training from a folder of JPEGs in project storage: neuronb's image path against a hand-written PyTorch pipeline.

The data: `--images` RGB JPEGs (default 1,500) made with numpy and PIL in a temporary folder, in 4 class folders, each
class its own base colour plus per-pixel noise and a random gradient, sides drawn from `--src-sides` (64..160 px), so
decoding and resizing are real work. They are ingested into a new project store (`ingest_source`, as the ingest stage
does), and the dataset index (hash, label = the folder, split, name) puts ~15% of each class in 'valid'.

neuronb's side is what the train stage runs: `index_images` (a `StoreImages` dataset reading the objects from the store
and decoding them with neuronb's one decoder, `neuronb.data.images.image_array`: Pillow, EXIF orientation, 8-bit RGB,
bilinear resize to `--size`), `channel_stats` for the normalisation, then `train_classifier` (a fastai Learner; the
loader decodes in `--workers` persistent worker processes and normalises each batch on the device).

The hand-written side does the same work with stock PyTorch: a `Dataset` reading each object's file from the store
folder (`objects/<hash[:2]>/<hash><ext>`), decoding it with `torchvision.io.decode_image` (RGB, uint8 C×H×W) and
resizing it with `torchvision.transforms.v2.functional.resize` (bilinear, antialias); a `DataLoader` with the same
number of persistent workers, the same batch size, shuffled, the last partial batch dropped (validation: twice the
batch, in order, as fastai's); the same model (`build_model`), AdamW (fused where available, weight decay 0.01) and
`OneCycleLR` matching fastai's `fit_one_cycle` (25% warm-up from lr/25, cosine, down to lr/1e5; beta1 0.95 -> 0.85 ->
0.95), the batch normalised on the device with the same mean/std, and a validation pass (loss, accuracy) each epoch.

Each side is warmed up first (a one-epoch fit on 8 batches: imports, lazy initialisation, first-batch costs); then the
sides alternate for `--repeats` rounds, each fit timed from the dataset to a trained model (worker start-up included on
both sides: each fit makes its loaders, and its workers are shut down before the clock stops: the hand-written loaders
when the loop returns, neuronb's when `train_classifier` ends the fit). The training process of both sides runs `--threads` torch intra-op threads, by default the CPUs
the decoding workers leave over (at least 1): on a 2-CPU machine torch's own default (one thread per core) on top of
2 decoding workers oversubscribes the CPU, and when anything else runs there too its thread barriers make every step
several times slower and the timings noise (`--threads 0` keeps torch's default). Images/s counts training images
seen; the ratio (`value`) is neuronb's best round ÷ the hand-written pipeline's best round (the machine may be shared:
the minimum is the stable statistic; medians are shown too). Both sides must reach validation accuracy > 0.8 on this easy task, so a broken pipeline cannot report a good ratio.

On a GPU (`--device cuda`, the default when one is visible) both sides pin host memory for the batches, copy them
without blocking, run the forward pass and loss under bfloat16 autocast with `--precision bf16` (neuronb: its
`precision='bf16'`), cudnn's autotuner is on, and the GPU's busy % is sampled (nvidia-smi every 100 ms, else
`torch.cuda.utilization()`) during every timed fit: `gpu_busy_pct` (neuronb) and `torch_gpu_busy_pct` in the JSON.

Usage: python bench/train_images_vs_torch.py [--images 1500] [--size 64] [--bs 64] [--epochs 2] [--workers N]
       [--repeats 3] [--threads N] [--device auto|cpu|cuda] [--arch simple_cnn|resnet18] [--stem small|imagenet]
       [--precision fp32|bf16] [--channels-last] [--src-sides 64 160]
The last line printed is one JSON object.
"""
import argparse, contextlib, gc, json, os, shutil, statistics, subprocess, tempfile, threading, time
from pathlib import Path
os.environ.setdefault('WANDB_MODE', 'disabled')
import numpy as np
import pandas as pd
import torch
from torch import nn
from torchvision.io import decode_image, ImageReadMode   # imported here, so forked DataLoader workers inherit them
from torchvision.transforms.v2.functional import resize

CLASSES = {'red': (200, 40, 40), 'green': (40, 180, 60), 'blue': (40, 60, 200), 'yellow': (210, 200, 40)}


def make_jpegs(folder, n, sides=(64, 160), seed=0):
    "`n` RGB JPEGs in one subfolder per class of `CLASSES`: the class colour, a random gradient and noise. Total bytes."
    from PIL import Image
    rng, folder, total = np.random.default_rng(seed), Path(folder), 0
    names = list(CLASSES)
    for c in names: (folder/c).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        c = names[i % len(names)]
        w, h = (int(v) for v in rng.integers(sides[0], sides[1] + 1, 2))
        ramp = np.linspace(-1, 1, w)[None, :, None] * rng.normal(0, 25, 3) + np.linspace(-1, 1, h)[:, None, None] * rng.normal(0, 25, 3)
        a = np.asarray(CLASSES[c], np.float32) + ramp + rng.normal(0, 35, (h, w, 3))
        p = folder/c/f"{i:05d}.jpg"
        Image.fromarray(np.clip(a, 0, 255).astype(np.uint8), 'RGB').save(p, quality=90)
        total += p.stat().st_size
    return total


def make_index(files, valid_pct=0.15, seed=0):
    "The dataset index of `{name: hash}` (names `class/file.jpg`): hash, label, split, name; ~`valid_pct` of each class valid."
    df = pd.DataFrame({'name': list(files), 'hash': list(files.values())}).sort_values('name', ignore_index=True)
    df['label'] = df.name.str.split('/').str[0]
    rng = np.random.default_rng(seed)
    df['split'] = np.where(rng.random(len(df)) < valid_pct, 'valid', 'train')
    return df[['hash', 'label', 'split', 'name']]


# --- the hand-written PyTorch pipeline ------------------------------------------------------------------------------

class TorchImages(torch.utils.data.Dataset):
    "The stored objects decoded by torchvision: `(uint8 3×S×S tensor, class index)`."
    def __init__(self, root, hashes, exts, targets, size):
        self.paths = [os.path.join(root, 'objects', h[:2], h + e) for h, e in zip(hashes, exts)]
        self.targets, self.size = list(targets), size
    def __len__(self): return len(self.paths)
    def __getitem__(self, i):
        with open(self.paths[i], 'rb') as f: data = torch.frombuffer(bytearray(f.read()), dtype=torch.uint8)
        img = resize(decode_image(data, mode=ImageReadMode.RGB), [self.size, self.size], antialias=True)
        return img, self.targets[i]


def torch_fit(dt, dv, cfg, epochs, lr, bs, workers, device, precision='fp32', channels_last=False, seed=0, wd=0.01):
    "The hand-written loop over `TorchImages` train/valid datasets; `(model, last validation accuracy)`."
    from neuronb.train.model import build_model
    torch.manual_seed(seed)
    mf = torch.channels_last if channels_last else torch.preserve_format
    model = build_model(cfg).to(device, memory_format=mf)
    pin = device.type == 'cuda'
    kw = dict(num_workers=workers, persistent_workers=workers > 0, pin_memory=pin)
    tl = torch.utils.data.DataLoader(dt, batch_size=bs, shuffle=True, drop_last=len(dt) > bs,
                                     generator=torch.Generator().manual_seed(seed), **kw)
    vl = torch.utils.data.DataLoader(dv, batch_size=2 * bs, **kw)
    mean = torch.tensor(cfg['mean'], device=device).view(1, -1, 1, 1)
    std = torch.tensor(cfg['std'], device=device).view(1, -1, 1, 1)
    def prep(x):
        x = x.to(device, non_blocking=True).float().div_(255).sub_(mean).div_(std)
        return x.contiguous(memory_format=torch.channels_last) if channels_last else x
    fused = device.type in ('cpu', 'cuda')
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=wd, fused=fused)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * len(tl), pct_start=0.25,
                                                div_factor=25, final_div_factor=1e5 / 25, base_momentum=0.85,
                                                max_momentum=0.95)
    loss_fn = nn.CrossEntropyLoss()
    amp = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if precision == 'bf16' else contextlib.nullcontext
    acc = None
    for _ in range(epochs):
        model.train()
        for x, y in tl:
            with amp(): loss = loss_fn(model(prep(x)), y.to(device, non_blocking=True))
            loss.backward()
            opt.step(); opt.zero_grad(); sched.step()
        model.eval()
        losses, correct, n = [], 0, 0
        with torch.no_grad(), amp():   # what fastai's validation computes: mean loss and accuracy
            for x, y in vl:
                y = y.to(device, non_blocking=True)
                out = model(prep(x))
                losses.append(loss_fn(out, y) * len(y)); correct += (out.argmax(1) == y).sum(); n += len(y)
        valid_loss, acc = (torch.stack(losses).sum() / n).item(), (correct / n).item()
    return model, acc


# --- neuronb's path -------------------------------------------------------------------------------------------------

def neuronb_fit(dt, dv, cfg, epochs, lr, bs, workers, device, precision='fp32', channels_last=False, seed=0, wd=0.01):
    "neuronb's training path, as the train stage calls it; `(model, last validation accuracy)`."
    from neuronb.train.learner import train_classifier
    learn = train_classifier(dt, None, dv, None, cfg, epochs=epochs, lr=lr, bs=bs, seed=seed, wd=wd, num_workers=workers,
                             progress=False, precision=precision, device=device, channels_last=channels_last)
    return learn.model, float(learn.recorder.values[-1][-1])   # [train_loss, valid_loss, accuracy]; its workers stopped at the fit's end


# --- timing ---------------------------------------------------------------------------------------------------------

class GpuBusy:
    "The GPU's busy % sampled while in the `with` block: nvidia-smi every 100 ms, else `torch.cuda.utilization()`."
    def __init__(self, device):
        self.device, self.samples, self._proc, self._thread, self._stop = device, [], None, None, threading.Event()
    def __enter__(self):
        if self.device.type != 'cuda': return self
        idx = self.device.index if self.device.index is not None else torch.cuda.current_device()
        if shutil.which('nvidia-smi'):   # with one GPU visible, no --id: CUDA's and nvidia-smi's numbering may differ
            ids = [f'--id={idx}'] if torch.cuda.device_count() > 1 else []
            self._proc = subprocess.Popen(['nvidia-smi', *ids, '--query-gpu=utilization.gpu', '--format=csv,noheader,nounits',
                                           '-lms', '100'], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        else:
            def poll():
                while not self._stop.wait(0.1):
                    try: self.samples.append(float(torch.cuda.utilization(idx)))
                    except Exception: return   # no NVML here: no figure
            self._thread = threading.Thread(target=poll, daemon=True); self._thread.start()
        return self
    def __exit__(self, *exc):
        if self._proc is not None:
            self._proc.terminate()
            out, _ = self._proc.communicate(timeout=5)
            self.samples += [float(v) for v in out.split() if v.strip().isdigit()]
        if self._thread is not None: self._stop.set(); self._thread.join()
    @property
    def pct(self): return round(statistics.fmean(self.samples), 1) if self.samples else None


def head(ds, n):
    "The first `n` items of a `StoreImages` or `TorchImages`, as the same kind of dataset."
    from neuronb.train.data import StoreImages
    if isinstance(ds, StoreImages):
        spec = ds.spec()
        return StoreImages(**{**spec, **{k: spec[k][:n] for k in ('hashes', 'exts', 'targets')}})
    out = TorchImages.__new__(TorchImages)
    out.paths, out.targets, out.size = ds.paths[:n], ds.targets[:n], ds.size
    return out


def _sync(device):
    if device.type == 'cuda': torch.cuda.synchronize(device)


def timed(fit, *args, device):
    "Seconds `fit(*args)` took (its queued GPU work included), its validation accuracy and the GPU's busy %."
    _sync(device)
    with GpuBusy(device) as busy:
        t0 = time.perf_counter()
        _, acc = fit(*args)
        _sync(device)
        dt = time.perf_counter() - t0
    gc.collect()   # untimed: the fit's leftovers (fastai's Learner is in reference cycles) go before the next fit
    return dt, acc, busy.pct


def _cpus():
    return len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count() or 1


def parse_args(argv=None):
    from neuronb.train.data import default_workers
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--images', type=int, default=1500, help='JPEGs to make and ingest (about 15%% become the validation split)')
    p.add_argument('--src-sides', type=int, nargs=2, default=(64, 160), metavar=('MIN', 'MAX'),
                   help='the JPEGs\' widths and heights are drawn from MIN..MAX px')
    p.add_argument('--size', type=int, default=None, help='training image side (default: 64 on cpu, 224 on cuda)')
    p.add_argument('--bs', type=int, default=64)
    p.add_argument('--epochs', type=int, default=2)
    p.add_argument('--workers', type=int, default=default_workers(), help='decoding processes, both sides '
                   f'(default: neuronb\'s default_workers(), here {default_workers()})')
    p.add_argument('--repeats', type=int, default=3)
    p.add_argument('--device', choices=['auto', 'cpu', 'cuda'], default='auto', help='auto: cuda when available')
    p.add_argument('--arch', choices=['simple_cnn', 'resnet18'], default='simple_cnn')
    p.add_argument('--stem', choices=['small', 'imagenet'], default=None,
                   help='resnet18\'s stem (default: imagenet from 128 px up, else small)')
    p.add_argument('--precision', choices=['fp32', 'bf16'], default='fp32', help='bf16: forward pass and loss under bfloat16 autocast, both sides')
    p.add_argument('--channels-last', action='store_true', help='model and batches in channels-last order, both sides')
    p.add_argument('--threads', type=int, default=None, help='torch\'s intra-op threads in the training process, both '
                   'sides (default: the CPUs left over by the workers, at least 1; 0: torch\'s own, one per core)')
    p.add_argument('--lr', type=float, default=3e-3)
    a = p.parse_args(argv)
    if a.threads is None: a.threads = max(1, _cpus() - a.workers)
    if a.threads: torch.set_num_threads(a.threads)
    a.threads = torch.get_num_threads()
    if a.device == 'auto': a.device = 'cuda' if torch.cuda.is_available() else 'cpu'
    if a.device == 'cuda' and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device here; run on a GPU machine or pass --device cpu")
    if a.size is None: a.size = 224 if a.device == 'cuda' else 64
    if a.stem is None: a.stem = 'imagenet' if a.size >= 128 else 'small'
    return a


def main(argv=None):
    a = parse_args(argv)
    from neuronb.data.versions import ingest_source, version_files
    from neuronb.data.storage import open_store
    from neuronb.data.prepare import item_exts
    from neuronb.train.data import index_images, channel_stats
    dev = torch.device(a.device)
    gpu_name = torch.cuda.get_device_name(dev) if dev.type == 'cuda' else None
    if dev.type == 'cuda': torch.backends.cudnn.benchmark = True   # fixed shapes: let cudnn pick its fastest kernels
    work = Path(tempfile.mkdtemp(prefix='neuronb-bench-'))
    try:
        t0 = time.perf_counter()
        nbytes = make_jpegs(work/'src', a.images, tuple(a.src_sides))
        t1 = time.perf_counter()
        rep, _ = ingest_source(work/'store', work/'src', dataset='images', cache=False, progress=False)
        t2 = time.perf_counter()
        files = version_files(work/'store', 'latest', 'images')
        assert len(files) == a.images and not rep.rejected, rep
        df = make_index(files)
        store, classes = open_store(work/'store'), sorted(CLASSES)
        ds_train = index_images(store, df, classes, a.size, channels=3, split='train')
        ds_valid = index_images(store, df, classes, a.size, channels=3, split='valid')
        mean, std = channel_stats(ds_train)
        cfg = {'arch': a.arch, 'n_classes': len(classes), 'in_channels': 3, 'width': 32, 'classes': classes,
               'size': a.size, 'mean': mean, 'std': std, **({'stem': a.stem} if a.arch == 'resnet18' else {})}
        def tv(split):   # the hand-written side reads the object files of the local store folder itself
            d = df[df.split == split]
            return TorchImages(store.root, d.hash.tolist(), item_exts(d), [classes.index(l) for l in d.label], a.size)
        tt_train, tt_valid = tv('train'), tv('valid')
        assert os.path.exists(tt_train.paths[0]), f"no object file at {tt_train.paths[0]}: the store layout changed"
        print(f"made {a.images} JPEGs ({nbytes / 1e6:.1f} MB) in {t1 - t0:.1f} s, ingested in {t2 - t1:.1f} s; "
              f"{len(ds_train)} train / {len(ds_valid)} valid", flush=True)
        opts = dict(precision=a.precision, channels_last=a.channels_last)
        sides = {'torch': (torch_fit, tt_train, tt_valid), 'neuronb': (neuronb_fit, ds_train, ds_valid)}
        t3 = time.perf_counter()
        for fit, dt, dv in sides.values():   # warm-up on 8 batches: imports, lazy initialisation, first-batch costs
            fit(head(dt, 8 * a.bs), head(dv, 2 * a.bs), cfg, 1, a.lr, a.bs, a.workers, dev, **opts)
            gc.collect()
        print(f"channel stats in {t3 - t2:.1f} s, warm-up in {time.perf_counter() - t3:.1f} s", flush=True)
        times, acc, busy = {k: [] for k in sides}, {}, {k: [] for k in sides}
        for _ in range(a.repeats):
            for name, (fit, dt, dv) in sides.items():
                s, acc[name], b = timed(lambda *x: fit(*x, **opts), dt, dv, cfg, a.epochs, a.lr, a.bs, a.workers, dev, device=dev)
                times[name].append(s)
                if b is not None: busy[name].append(b)
                print(f"  {name:<8} {s:7.2f} s  valid acc {acc[name]:.4f}" + (f"  GPU busy {b:.0f}%" if b is not None else ''), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    n_steps = a.epochs * (len(ds_train) // a.bs if len(ds_train) > a.bs else 1)
    n_img = n_steps * a.bs if len(ds_train) > a.bs else a.epochs * len(ds_train)
    img_s = {k: n_img / min(v) for k, v in times.items()}
    ratio = img_s['neuronb'] / img_s['torch']
    where = f"{gpu_name}, {a.precision}" if gpu_name else f"cpu, {a.threads} threads, {a.precision}"
    print(f"{a.arch}, {len(ds_train)} train / {len(ds_valid)} valid JPEGs ({a.src_sides[0]}..{a.src_sides[1]} px) at {a.size} px, "
          f"{a.epochs} epochs, bs {a.bs}, {a.workers} workers, {a.repeats} rounds ({where})")
    print(f"{'path':<10}{'best s':>8}{'median s':>10}{'img/s':>9}{'vs torch':>10}{'valid acc':>11}"
          + (f"{'GPU busy':>10}" if dev.type == 'cuda' else ''))
    for k, v in times.items():
        print(f"{k:<10}{min(v):>8.2f}{statistics.median(v):>10.2f}{img_s[k]:>9.0f}{img_s[k] / img_s['torch']:>10.3f}{acc[k]:>11.4f}"
              + (f"{statistics.fmean(busy[k]):>9.0f}%" if busy[k] else '  n/a' if dev.type == 'cuda' else ''))
    bad = {k: v for k, v in acc.items() if not v > 0.8}
    assert not bad, f"validation accuracy must exceed 0.8 on this easy task; got {bad}: a pipeline is broken"
    gpu = lambda k: round(statistics.fmean(busy[k]), 1) if busy[k] else None
    print(f"neuronb trains at {img_s['neuronb']:.0f} images/s, the hand-written torchvision pipeline at {img_s['torch']:.0f}: "
          f"ratio {ratio:.3f}")
    print(json.dumps({'bench': 'train_images_vs_torch', 'value': round(ratio, 4), 'unit': 'ratio',
                      'neuronb_img_s': round(img_s['neuronb'], 1), 'torch_img_s': round(img_s['torch'], 1),
                      'neuronb_s': round(min(times['neuronb']), 3), 'torch_s': round(min(times['torch']), 3),
                      'neuronb_median_s': round(statistics.median(times['neuronb']), 3),
                      'torch_median_s': round(statistics.median(times['torch']), 3),
                      'arch': a.arch, 'size': a.size, 'bs': a.bs, 'epochs': a.epochs, 'workers': a.workers,
                      'images': a.images, 'train_images': len(ds_train), 'valid_images': len(ds_valid),
                      'src_sides': list(a.src_sides), 'cpus': _cpus(), 'threads': a.threads,
                      'repeats': a.repeats, 'device': dev.type, 'gpu_name': gpu_name, 'precision': a.precision,
                      'channels_last': a.channels_last, 'neuronb_acc': round(acc['neuronb'], 4),
                      'torch_acc': round(acc['torch'], 4),
                      **({'gpu_busy_pct': gpu('neuronb'), 'torch_gpu_busy_pct': gpu('torch')} if dev.type == 'cuda' else {})}))


if __name__ == '__main__':
    main()
