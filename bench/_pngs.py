"""Shared by the data benchmarks: a folder of many small, distinct PNG files made on the fly."""
import io
from pathlib import Path


def make_pngs(folder, n=10_000, size=28, per_dir=1000, seed=0):
    "Write `n` distinct grayscale noise PNGs into `folder` (sub-folders of `per_dir` files); returns total bytes."
    import numpy as np
    from PIL import Image
    rng, total = np.random.default_rng(seed), 0
    for i in range(n):
        d = Path(folder)/f"part{i // per_dir:03d}"
        if i % per_dir == 0: d.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8)).save(buf, format='PNG')
        (d/f"img{i:05d}.png").write_bytes(buf.getvalue()); total += buf.tell()
    return total
