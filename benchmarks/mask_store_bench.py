"""Mask storage: the COCO-RLE Parquet store against one PNG per mask (the layout peers use).

Writes and reads back 1,000 masks of 480×640 (10 images × 100 SAM-like masks: ellipses and
rectangles of many sizes, some overlapping) through `MaskStore`, and, as the baseline in the same
run, as one 8-bit PNG per mask (0/255, as segment-anything's own amg script writes them).
Reports masks per second for write + read-back (median of --repeats), and bytes per mask.

Last line:
    RESULT store_vs_png_speed=<ratio, higher is better> parquet_vs_png_bytes=<ratio, lower is better> store_masks_per_s=<n>
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from cgc_core.masks import MaskStore, records_from_masks

HEIGHT, WIDTH = 480, 640
N_IMAGES, PER_IMAGE = 10, 100


def make_masks(seed: int) -> np.ndarray:
    """[PER_IMAGE, H, W] SAM-like masks: filled ellipses and boxes from tiny to half the image."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:HEIGHT, :WIDTH]
    masks = np.zeros((PER_IMAGE, HEIGHT, WIDTH), dtype=bool)
    for k in range(PER_IMAGE):
        cy, cx = rng.uniform(0, HEIGHT), rng.uniform(0, WIDTH)
        ry, rx = np.exp(rng.uniform(np.log(3), np.log(HEIGHT / 2), size=2))
        if k % 3:
            masks[k] = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        else:
            masks[k] = (np.abs(yy - cy) <= ry) & (np.abs(xx - cx) <= rx)
    return masks


def run_store(images: list[np.ndarray], folder: Path) -> tuple[float, int]:
    start = time.perf_counter()
    store = MaskStore(folder)
    for i, masks in enumerate(images):
        name = f"img_{i:03d}.jpg"
        store.write_image(name, HEIGHT, WIDTH, records_from_masks(name, list(masks), "bench", "0", "x"))
    for i, masks in enumerate(images):
        back = store.read_masks(f"img_{i:03d}.jpg")
        assert back.shape == masks.shape
    elapsed = time.perf_counter() - start
    return elapsed, sum(p.stat().st_size for p in folder.glob("*.parquet"))


def run_png(images: list[np.ndarray], folder: Path) -> tuple[float, int]:
    start = time.perf_counter()
    folder.mkdir(parents=True)
    for i, masks in enumerate(images):
        for k, mask in enumerate(masks):
            Image.fromarray(mask.astype(np.uint8) * 255).save(folder / f"img_{i:03d}_{k:03d}.png")
    for i, masks in enumerate(images):
        back = np.stack([np.asarray(Image.open(folder / f"img_{i:03d}_{k:03d}.png")) > 128 for k in range(len(masks))])
        assert back.shape == masks.shape
    elapsed = time.perf_counter() - start
    return elapsed, sum(p.stat().st_size for p in folder.glob("*.png"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    images = [make_masks(seed) for seed in range(N_IMAGES)]
    n = N_IMAGES * PER_IMAGE
    # correctness once: what the store returns is what went in
    with tempfile.TemporaryDirectory() as tmp:
        store = MaskStore(Path(tmp))
        store.write_image("x.jpg", HEIGHT, WIDTH, records_from_masks("x.jpg", list(images[0]), "b", "0", "x"))
        assert np.array_equal(store.read_masks("x.jpg"), images[0])
    store_times, png_times = [], []
    for r in range(args.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            t, store_bytes = run_store(images, Path(tmp) / "store")
            store_times.append(t)
            t, png_bytes = run_png(images, Path(tmp) / "png")
            png_times.append(t)
    store_s, png_s = statistics.median(store_times), statistics.median(png_times)
    print(f"{n} masks of {HEIGHT}x{WIDTH}, write + read back, median of {args.repeats}:")
    print(f"  parquet store: {store_s:.3f} s ({n / store_s:.0f} masks/s), {store_bytes / n:.0f} bytes/mask")
    print(f"  PNG per mask:  {png_s:.3f} s ({n / png_s:.0f} masks/s), {png_bytes / n:.0f} bytes/mask")
    print(f"RESULT store_vs_png_speed={png_s / store_s:.2f} parquet_vs_png_bytes={store_bytes / png_bytes:.3f} "
          f"store_masks_per_s={n / store_s:.0f}")


if __name__ == "__main__":
    main()
