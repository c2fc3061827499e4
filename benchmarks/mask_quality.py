"""How well a weights-free mask generator finds the objects (issue 39; needs no training).

Renders training views of the realistic family's development seeds (instance truth from the ray
caster) and runs two generators on the same images: for every view, level and true object
covering at least `--min-pixels` pixels at the generator's working resolution, the best-matching
segment's IoU. Figures:

- recall50 / recall75: share of (object, view) pairs with a segment of IoU >= 0.5 / 0.75 at some
  level (per level in the table above the last line);
- straddle: share of segments (every level) that straddle, i.e. whose largest part (one object,
  or the background) is under 90 % of the segment, or that hold at least half of an object
  other than that largest part (a cloth segment that swallows a napkin);
- s_per_image: median seconds per image of the generator (this machine, one process);
- loss r50: recall50 of what training's loss reads (`contrastive.mask_levels=1`): each pixel's
  smallest stored mask of at least `--min-pixels` pixels (`MaskStore.read_label_map`);
- with the depth cut (`cut r50`, `cut str`): recall50 and straddle after training's depth cut
  (`train.depth_split`'s settings) of the generator's own levels with the renderer's true depth:
  what geometry adds to each generator's masks, an upper bound for the model's rendered depth;
- `--depth-from D` (the data folder of `heldout_bench.py --family realistic` runs of the same
  seeds): the geometry ingredient with the model's own depth, rendered from the trained model's
  checkpoint nearest training's depth cut (`train.depth_split.at`). Then each generator's levels
  are its levels and the same levels cut at that depth's edges (nested: a cut piece lies inside
  its segment), and every figure of the RESULT line is of those levels (`generator=<name>+depth`;
  the baseline gets the same geometry); s_per_image includes the cut. With
  `--groups`, each cut level's object groups (`masks.depth_split.object_groups`: segments
  standing on the table joined) are levels too.
- `--finer`: the texture generator's whole hierarchy, its finer levels (`FINER_THRESHOLDS`) before
  the stored ones (`masks.texture.thresholds`). Training stores only the coarser three, since its
  loss reads each pixel's finest stored mask (`loss r50`; RESULTS.md, "Which levels to store").

Issue 39's measurement of the generator (fine regions, merged regions, object-like groups):
    mask_quality.py --depth-from D --finer --groups

Settings are chosen on the development seeds only (`FAMILY_DEV_SEEDS`); `--seeds` can name the
held-out ones for a report.

Last line:
    RESULT generator=<name> recall50=<x> recall75=<x> straddle=<x> baseline_recall50=<x> s_per_image=<x>
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cgc_core.calibrate import apply_calibration
from cgc_core.config import DepthSplitConfig, SyntheticConfig, load_config
from cgc_core.masks.depth_split import cut_at_depth_edges, object_groups
from cgc_core.masks.generators import ClassicalGenerator, TextureGenerator, level_masks
from cgc_core.masks.store import nesting_label_maps
from cgc_core.render import Gaussians, render
from cgc_core.scene import Camera, load_scene
from cgc_core.scene.synthetic import FAMILY_DEV_SEEDS, build_scene, render_view


FINER_THRESHOLDS = (0.03, 0.05, 0.08)
"""The texture generator's finer merge levels, below its stored thresholds (RESULTS.md, "Weights-free
masks on patterned cloths": six levels find more objects, and split them into parts at the finest)."""


def object_scores(levels: np.ndarray, ids: np.ndarray, min_pixels: int) -> tuple[dict[int, list[float]], list[bool]]:
    """Per true object (id, >= min_pixels): the best segment IoU at each level; per segment of
    every level: whether it straddles (see the module docstring)."""
    n_ids = int(ids.max()) + 1
    object_area = np.bincount(ids.ravel(), minlength=n_ids)
    objects = [k for k in range(1, n_ids) if object_area[k] >= min_pixels]
    best = {k: [] for k in objects}
    straddles = []
    for labels in levels:
        n_labels = int(labels.max()) + 1
        # overlap[segment, id]: pixels of each object (and the background, id 0) in each segment
        overlap = np.bincount(labels.ravel() * n_ids + ids.ravel(), minlength=n_labels * n_ids).reshape(n_labels, n_ids)
        area = overlap.sum(1)
        for k in objects:
            union = area + object_area[k] - overlap[:, k]
            best[k].append(float((overlap[:, k] / np.maximum(union, 1)).max()))
        for segment in np.nonzero(area)[0]:
            main = int(overlap[segment].argmax())
            swallowed = [k for k in objects if k != main and overlap[segment, k] >= 0.5 * object_area[k]]
            straddles.append(overlap[segment, main] < 0.9 * area[segment] or bool(swallowed))
    return best, straddles


def cut_levels(levels: np.ndarray, depth: np.ndarray, cut: DepthSplitConfig, intrinsics: np.ndarray) -> np.ndarray:
    """[L, H, W] label maps (0-based: every pixel labelled) cut where `depth` jumps (and along its
    concave creases with `cut.crease_angle`), as training's depth cut cuts them."""
    return cut_at_depth_edges(levels + 1, depth, cut, intrinsics)


def resized(values: np.ndarray, height: int, width: int) -> np.ndarray:
    if values.shape == (height, width):
        return values
    return np.asarray(Image.fromarray(values).resize((width, height), Image.Resampling.NEAREST))


def evaluate(generator, views: list[tuple[str, np.ndarray, np.ndarray, np.ndarray, Camera]], min_pixels: int,
             cut: DepthSplitConfig, model_depth: dict[str, np.ndarray] | None = None, groups: bool = False) -> dict:
    """Recall per level and overall, straddle share and seconds per image over rendered views,
    and recall50 and straddle after the depth cut `cut` with the true depth; with `model_depth`
    (view name -> the trained model's depth), the levels are the generator's and their cut at it."""
    best_all, straddles, seconds, cut_best, cut_straddles, loss_best = [], [], [], [], [], []
    for name, rgb, ids, depth, camera in views:
        start = time.perf_counter()
        own = levels = generator.levels(rgb, name)
        height, width = levels.shape[1:]
        intrinsics = camera.scaled(width, height).K
        if model_depth is not None:
            view_depth = resized(model_depth[name], height, width)
            levels = np.concatenate([own, cut_levels(own, view_depth, cut, intrinsics)])
            if groups:  # and each cut level's object groups
                levels = np.concatenate([levels, [object_groups(level, view_depth, intrinsics, cut)
                                                  for level in levels[len(own):]]])
        seconds.append(time.perf_counter() - start)
        ids, depth = resized(ids, height, width), resized(depth, height, width)
        best, straddle = object_scores(levels, ids, min_pixels)
        best_all += best.values()
        straddles += straddle
        # the stored masks of these levels, as `generator.segments` makes them (not segmenting again)
        masks = level_masks(own, generator.config.min_area_fraction, generator.unique)
        kept = np.stack([m for m in masks if m.sum() >= min_pixels])
        best, _ = object_scores(nesting_label_maps(kept, 1), ids, min_pixels)
        loss_best += [v[0] for v in best.values()]
        best, straddle = object_scores(cut_levels(own, depth, cut, intrinsics), ids, min_pixels)
        cut_best += best.values()
        cut_straddles += straddle
    scores, cut_scores = np.array(best_all), np.array(cut_best)  # [pairs, levels]
    overall = scores.max(1)
    return {"pairs": len(scores), "recall50": float((overall >= 0.5).mean()), "recall75": float((overall >= 0.75).mean()),
            "level_recall50": [float(v) for v in (scores >= 0.5).mean(0)], "mean_best_iou": float(overall.mean()),
            "straddle": float(np.mean(straddles)), "s_per_image": statistics.median(seconds),
            "cut_recall50": float((cut_scores.max(1) >= 0.5).mean()), "cut_straddle": float(np.mean(cut_straddles)),
            "loss_recall50": float((np.array(loss_best) >= 0.5).mean())}


def render_views(seeds: list[int], per_seed: int) -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray, Camera]]:
    """`per_seed` evenly spaced training views of each family seed: (name, RGB uint8, instance
    ids, depth, camera)."""
    views = []
    for seed in seeds:
        cfg = SyntheticConfig(preset="realistic-family", seed=seed)
        scene = build_scene(cfg)
        test = set(scene.test_names)
        train = [c for c in scene.cameras if c.image_name not in test]
        for camera in train[:: max(1, len(train) // per_seed)][:per_seed]:
            rgb, ids, depth = render_view(scene, camera, cfg.supersample)
            views.append((f"seed{seed}-{camera.image_name}", (rgb * 255 + 0.5).astype(np.uint8), ids, depth, camera))
    return views


def model_depths(data_dir: Path, views: list, cut: DepthSplitConfig) -> dict[str, np.ndarray]:
    """Each view's depth rendered from its seed's trained model (a `heldout_bench.py --family
    realistic --data-dir data_dir` run) at the checkpoint nearest training's depth cut, in the
    calibrated camera of the same image."""
    depths, seeds = {}, sorted({name.split("-")[0] for name, *_ in views})
    for seed in seeds:
        root = data_dir / f"realistic-family-{seed}" / "synthetic-realistic-family"
        trained = root / "train"
        if not (trained / "train.json").is_file():
            raise SystemExit(f"{trained}: no finished train stage; run heldout_bench.py --family realistic "
                             f"--split dev --data-dir {data_dir} first")
        iterations = json.loads((trained / "train.json").read_text())["steps"]
        checkpoints = sorted(trained.glob("checkpoints/step_*.pt"))
        step_of = {int(p.stem.split("_")[1]): p for p in checkpoints}
        if not step_of:
            raise SystemExit(f"{trained / 'checkpoints'}: no checkpoints to render the model's depth from")
        nearest = min(step_of, key=lambda step: abs(step - cut.at * iterations))
        params = torch.load(step_of[nearest], map_location="cpu", weights_only=True)["params"]
        gaussians = Gaussians.from_params(params)
        scene = apply_calibration(load_scene(root / "scene"), root / "calibrate")
        print(f"{seed}: depth of the model at step {nearest} of {iterations} (the cut is at {cut.at * iterations:.0f})")
        for name, *_ in views:
            if name.startswith(f"{seed}-"):
                with torch.no_grad():
                    depth = render(gaussians, scene.cameras[name.split("-", 1)[1]], sh_degree=0, backend="torch").depth
                depths[name] = depth.numpy().astype(np.float32)
    return depths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", nargs="+", type=int, default=list(FAMILY_DEV_SEEDS))
    parser.add_argument("--views", type=int, default=8, help="training views per seed")
    parser.add_argument("--min-pixels", type=int, default=100, help="objects smaller than this (at the working "
                        "resolution) are not counted: the contrastive loss's segment floor")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="texture.FIELD=VALUE",
                        help="a masks-section override for the generator under test, e.g. texture.window=4 "
                        "(train.depth_split.FIELD=VALUE: the depth cut's settings)")
    parser.add_argument("--depth-from", type=Path, help="the data folder of heldout_bench.py --family realistic "
                        "runs of these seeds: cut the levels at the trained model's depth (see above)")
    parser.add_argument("--groups", action="store_true", help="with --depth-from: object groups as levels too")
    parser.add_argument("--finer", action="store_true", help="the texture generator's finer levels "
                        f"{FINER_THRESHOLDS} too, before its stored thresholds")
    args = parser.parse_args()
    config = load_config(None, [item if item.startswith("train.") else f"masks.{item}" for item in args.overrides])
    if args.finer:
        config.masks.texture.thresholds = sorted({*FINER_THRESHOLDS, *config.masks.texture.thresholds})
    masks, cut = config.masks, config.train.depth_split
    views = render_views(args.seeds, args.views)
    depths = model_depths(args.depth_from, views, cut) if args.depth_from else None
    candidate, baseline = TextureGenerator(masks.texture), ClassicalGenerator(masks.classical)
    results = {gen.name: evaluate(gen, views, args.min_pixels, cut, depths, args.groups) for gen in (baseline, candidate)}
    print(f"{len(views)} views of seeds {args.seeds}; objects >= {args.min_pixels} px")
    print(f"{'generator':<10} {'pairs':>5} {'recall50':>8} {'recall75':>8} {'best IoU':>8} {'straddle':>8} "
          f"{'s/image':>7} {'loss r50':>8} {'cut r50':>7} {'cut str':>7}  recall50 per level")
    for name, r in results.items():
        print(f"{name:<10} {r['pairs']:>5} {r['recall50']:>8.3f} {r['recall75']:>8.3f} {r['mean_best_iou']:>8.3f} "
              f"{r['straddle']:>8.3f} {r['s_per_image']:>7.3f} {r['loss_recall50']:>8.3f} {r['cut_recall50']:>7.3f} {r['cut_straddle']:>7.3f}  "
              f"{' '.join(f'{v:.3f}' for v in r['level_recall50'])}")
    r, b = results[candidate.name], results[baseline.name]
    name = f"{candidate.name}{'+finer' if args.finer else ''}{'+depth' if depths else ''}{'+groups' if depths and args.groups else ''}"
    print(f"RESULT generator={name} recall50={r['recall50']:.4f} recall75={r['recall75']:.4f} "
          f"straddle={r['straddle']:.4f} baseline_recall50={b['recall50']:.4f} s_per_image={r['s_per_image']:.3f}")


if __name__ == "__main__":
    main()
