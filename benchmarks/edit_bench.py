"""Object removal checked against truth (issue 40): each object of the demo scene removed in turn.

Trains the demo scene (the stages' caches under the data folder), then for every object: its 3D
selection (the click-oracle query through the selection service, lifted from the training views as
`cgc edit --object` without a text model does: `edit.edit_selection`), the edit (`edit.edit_gaussians`, `remove`), and in every test view where the object
shows, the edited model's render against the synthetic truth rendered without that object (same
camera, light and textures: `scene.synthetic.without_objects`):

- `hole_psnr`: PSNR over the pixels the object covered. What was behind it (table and wall) was
  never seen in training from most views, so this measures how plausible the hole is, not an error
  of the edit alone.
- `rest_psnr_drop_db`: PSNR over the rest of the image (outside the object and wherever its
  removal changes the truth: its shadow and reflections), unedited model against the full truth
  minus edited model against the truth without the object. An edit must not damage what it did not select.
- `leftover_share`: the share of the object's pixels still covered (alpha > 0.5) by kept Gaussians
  whose 3D truth (nearest true surface) is that object.

Means over (object, view) pairs. Writes `benchmarks/figures/edit_before_after.png` (one removal:
the model, the edit, the truth without the object), which README shows.

Last line:
    RESULT edits=<n> leftover_share=<x> rest_psnr_drop_db=<x> hole_psnr=<x>
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cgc_core.config import EDIT_VIEW_SHARE, load_config
from cgc_core.edit import edit_gaussians, edit_selection, render_rgb
from cgc_core.evaluate import protocol_queries
from cgc_core.gaussians import load_ply, subset_params
from cgc_core.metrics import psnr
from cgc_core.pipeline import run_scene_stage
from cgc_core.render import Gaussians, feature_renderer, render
from cgc_core.scene.synthetic import read_ground_truth, render_view, without_objects
from cgc_core.selection import Selector

ROOT = Path(__file__).resolve().parent.parent
FIGURE = ROOT / "benchmarks" / "figures" / "edit_before_after.png"


def masked_psnr(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    return psnr(a[mask], b[mask]) if mask.any() else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=str(ROOT / "data" / "bench-edit"))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE")
    parser.add_argument("--grow", type=float, default=0.0, help="edit option, as `cgc edit --grow`")
    parser.add_argument("--floaters", type=float, default=0.0, help="edit option, as `cgc edit --floaters`")
    parser.add_argument("--view-share", type=float, default=EDIT_VIEW_SHARE,
                        help="edit option, as `cgc edit --view-share` (0: each Gaussian by its own feature)")
    args = parser.parse_args()
    cfg = load_config(None, [f"data_dir={args.data_dir}", "synthetic.preset=demo", *args.overrides])
    for stage in ("scene", "calibrate", "masks", "train"):
        scene, result = run_scene_stage(cfg, "synthetic", stage)
    params = load_ply(result.outputs.ply)
    truth_scene = read_ground_truth(scene.root)
    truth_ids, names = scene.object_truth(scene, params["means"].numpy())
    selector = Selector.from_config(cfg)
    train_cameras = [scene.cameras[name] for name in scene.train_names]  # what `cgc edit` lifts from
    queries = protocol_queries("click-oracle", scene, feature_renderer(params, scene, cfg.train.backend), selector)
    background = tuple(cfg.train.background)
    true_camera = {c.image_name: c for c in truth_scene.cameras}
    rows, figure = [], None
    for k, obj in enumerate(truth_scene.objects, start=1):
        if obj.name not in queries:
            continue
        chosen = edit_selection(selector, params, [queries[obj.name]], train_cameras, args.view_share)
        edit = edit_gaussians(params, chosen, "remove",
                              grow_radius=args.grow, floater_opacity=args.floaters, what=repr(obj.name))
        leftover = subset_params(params, torch.as_tensor(edit.kept & (truth_ids == k)))
        hidden = without_objects(truth_scene, [obj.name])
        for view in scene.test_names:
            full, ids, _ = render_view(truth_scene, true_camera[view], cfg.synthetic.supersample)
            gone, _, _ = render_view(hidden, true_camera[view], cfg.synthetic.supersample)
            hole = ids == k
            if hole.sum() < 20:
                continue
            camera = scene.cameras[view]
            before, after = render_rgb(params, camera, cfg.train.backend, background), \
                render_rgb(edit.params, camera, cfg.train.backend, background)
            rest = ~hole & (np.abs(full - gone).max(-1) < 1e-6)
            with torch.no_grad():
                alpha = (render(Gaussians.from_params(leftover), camera, backend=cfg.train.backend).alpha.numpy()
                         if len(leftover["means"]) else np.zeros(hole.shape))
            rows.append({"object": obj.name, "view": view, "hole_psnr": masked_psnr(after, gone, hole),
                         "rest_drop": masked_psnr(before, full, rest) - masked_psnr(after, gone, rest),
                         "leftover": float((alpha[hole] > 0.5).mean()), "removed": int((~edit.kept).sum())})
            if figure is None or hole.sum() > figure[0]:
                figure = (int(hole.sum()), before, after, gone)
    for name in dict.fromkeys(r["object"] for r in rows):
        mine = [r for r in rows if r["object"] == name]
        print(f"{name:<18} {mine[0]['removed']:6d} Gaussians removed, {len(mine)} views: hole PSNR "
              f"{statistics.fmean(r['hole_psnr'] for r in mine):.2f} dB, rest drop "
              f"{statistics.fmean(r['rest_drop'] for r in mine):+.3f} dB, leftover "
              f"{statistics.fmean(r['leftover'] for r in mine):.4f}")
    FIGURE.parent.mkdir(parents=True, exist_ok=True)
    gap = np.ones((figure[1].shape[0], 4, 3))
    strip = np.concatenate([figure[1], gap, figure[2], gap, figure[3]], 1)
    Image.fromarray((strip * 255 + 0.5).astype(np.uint8)).save(FIGURE)
    print(f"figure (model, edited, truth without the object): {FIGURE.relative_to(ROOT)}; "
          f"edit options view_share={args.view_share} grow={args.grow} floaters={args.floaters}; {len(names)} objects")
    print(f"RESULT edits={len({r['object'] for r in rows})} "
          f"leftover_share={statistics.fmean(r['leftover'] for r in rows):.4f} "
          f"rest_psnr_drop_db={statistics.fmean(r['rest_drop'] for r in rows):.3f} "
          f"hole_psnr={statistics.fmean(r['hole_psnr'] for r in rows):.2f}")


if __name__ == "__main__":
    main()
