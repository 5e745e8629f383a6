"""Shared by the monitoring benchmarks: the digits example trained on every other digit (the others are never
ingested, so they are held-out traffic from the same writers), and pictures answered exactly as `neuronb serve`
answers an upload."""
import io, os, subprocess, sys
from pathlib import Path
import numpy as np

ENV = {**os.environ, 'WANDB_MODE': 'disabled'}
BIN = Path(sys.executable).parent


def _neuronb(*args):
    out = subprocess.run([str(BIN/'neuronb'), *map(str, args)], capture_output=True, text=True, env=ENV)
    if out.returncode: sys.exit(f"neuronb {' '.join(map(str, args))} failed:\n{out.stdout[-2000:]}{out.stderr[-2000:]}")


def make_project(folder: Path) -> Path:
    "The digits example trained (two quick epochs) on every other digit; the others, in `traffic/` beside it, are never ingested."
    root = folder/'digits'
    _neuronb('init', root)
    (folder/'traffic').mkdir()
    for p in sorted((root/'source').glob('img_?????.png')):   # interleaved: the same writers on both sides
        if int(p.stem[4:]) % 2: p.rename(folder/'traffic'/p.name)
    _neuronb('run', root, '-p', 'train.epochs=2', '-p', 'train.bs=32', '-p', 'train.lr=0.01', '-p', 'demo.n_samples=5')
    return root


def traffic(root: Path) -> list:
    "The held-out digits beside the project, in a random order (users arrive mixed, not writer after writer)."
    pool = sorted((Path(root).parent/'traffic').glob('img_*.png'))
    return [pool[i].read_bytes() for i in np.random.default_rng(0).permutation(len(pool))]


def inverted(data: bytes) -> bytes:
    "The picture with light and dark swapped."
    from PIL import Image
    buf = io.BytesIO(); Image.fromarray(255 - np.asarray(Image.open(io.BytesIO(data)).convert('L'))).save(buf, 'PNG')
    return buf.getvalue()


def answered(served, pictures: list, batch: int = 64):
    "The prediction-log rows `neuronb serve` would write for `pictures`, as a DataFrame."
    import pandas as pd
    from neuronb.serve import answer_files
    rows = []
    for k in range(0, len(pictures), batch):
        rows += answer_files(served, [(f'{k + j}.png', d) for j, d in enumerate(pictures[k:k + batch])])[1]
    return pd.DataFrame(rows)


def champion_reference(root: Path) -> tuple:
    "`(store, served champion, its reference rows)` of the project at `root` (the reference built now if it is not kept yet)."
    from neuronb.pipeline.project import load_project
    from neuronb.monitor import reference_frame
    from neuronb.serve import load_served
    project = load_project(root)
    store = project.store()
    served = load_served(store)
    return store, served, reference_frame(store, served.version, dataset=project.dataset, progress=False)
