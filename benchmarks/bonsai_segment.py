"""A real capture end to end: the 42 bonsai photos of ../shared/data/bonsai through `cgc segment`
on the CPU at reduced resolution (SfM, classical masks, the default short schedule, clusters).

Last line:
    RESULT registered=<share of photos SfM registered> clusters=<n> minutes=<wall minutes of cgc segment>
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from PIL import Image

from cgc_core.config import load_config
from cgc_core.pipeline import run_scene_stage

ROOT = Path(__file__).resolve().parent.parent
PHOTOS = Path(os.environ.get("CGC_SHARED", ROOT.parent / "shared")) / "data" / "bonsai"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=str(ROOT / "data" / "bench-bonsai"))
    parser.add_argument("--max-side", type=int, default=480, help="photos are downscaled to this long side")
    parser.add_argument("--figure", default=str(ROOT / "benchmarks" / "figures" / "bonsai_segment.png"),
                        help="where the figure of the result goes (the README shows it)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE")
    args = parser.parse_args()
    if not PHOTOS.is_dir():
        sys.exit(f"{PHOTOS}: the bonsai photos are not there (../shared is not checked out beside this repo)")
    capture = Path(args.data_dir) / "capture" / "bonsai"
    if not capture.is_dir():
        tmp = capture.with_name("bonsai.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / "images").mkdir(parents=True)
        for photo in sorted(PHOTOS.glob("*.JPG")):
            image = Image.open(photo)
            if max(image.size) <= args.max_side:  # as shot: a re-encoded JPEG registers differently
                shutil.copy(photo, tmp / "images" / photo.name)
                continue
            image.thumbnail((args.max_side, args.max_side))
            image.save(tmp / "images" / f"{photo.stem}.jpg", quality=95)
        tmp.rename(capture)
    command = [str(Path(sys.executable).parent / "cgc"), "segment", str(capture), "--set", f"data_dir={args.data_dir}",
               "--set", "masks.generator=classical", *[x for o in args.overrides for x in ("--set", o)]]
    start = time.perf_counter()
    subprocess.run(command, check=True)
    minutes = (time.perf_counter() - start) / 60
    # The finished stages, read back through the cache (nothing recomputes).
    cfg = load_config(None, [f"data_dir={args.data_dir}", "masks.generator=classical", *args.overrides])
    _, calibrated = run_scene_stage(cfg, str(capture), "calibrate")
    scene, trained = run_scene_stage(cfg, str(capture), "train")
    _, clustered = run_scene_stage(cfg, str(capture), "cluster")
    figure = draw_figure(cfg, scene, trained.outputs, clustered.outputs, Path(args.figure))
    share, clusters = calibrated.manifest.info["registered_share"], clustered.outputs.summary["n_clusters"]
    print(f"figure: {figure}")
    print(f"RESULT registered={share:.3f} clusters={clusters} minutes={minutes:.2f}")


def draw_figure(cfg, scene, trained, clustered, path: Path) -> Path:
    """One view of the capture: the photo, the view painted by 3D cluster, and what one
    click at the image centre selects (cosine >= query.threshold), side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from cgc_core.gaussians import load_ply
    from cgc_core.selection import Selector
    from cgc_core.render import feature_renderer

    view = clustered.summary["palette_view"]
    photo = scene.load_image(view)
    height, width = photo.shape[:2]
    params = load_ply(trained.ply)
    selector = Selector.from_config(cfg)
    features = feature_renderer(params, scene, cfg.train.backend)(view)
    click = (height // 2, width // 2)
    selected = selector.union_mask(features, [selector.click(features, [click], view)]).numpy()
    overlay = photo * 0.35 + selected[..., None] * np.array([1.0, 0.2, 0.2]) * 0.65
    panels = [("photo", photo), ("3D clusters, painted", plt.imread(clustered.palette)),
              (f"one click (+): {selected.mean():.0%} of the view", overlay)]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    for ax, (title, image) in zip(axes, panels):
        ax.imshow(np.clip(image, 0, 1))
        ax.set_title(title, fontsize=10)
        ax.axis("off")
    axes[2].plot([click[1]], [click[0]], "w+", markersize=14, markeredgewidth=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path

if __name__ == "__main__":
    main()
