"""How the stored 2D masks supervise each object of a realistic-family run (issue 38, point 2;
needs no training): for every object, the share of its pixels in the training views whose finest
mask segment is mostly (>= 80 %) that object, and the object (or background) it shares segments
with most. The masks as generated, before training's depth cut.

Reads the data folders `benchmarks/heldout_bench.py --family realistic --data-dir D` leaves
(`D/realistic-family-seed<S>/synthetic-realistic-family/`): the scene's instance maps and the
masks stage's store.

Last line:
    RESULT touching=<mean pure share> thin=<x> mirror=<x> small=<x> in=<x> on=<x> multipart=<x> other=<x>
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from cgc_core.config import SyntheticConfig
from cgc_core.masks.store import MaskStore
from cgc_core.scene.synthetic import FAMILY_DEV_SEEDS, FAMILY_HELDOUT_SEEDS, build_scene, read_synthetic_scene
from cgc_core.train import label_map_at

ROOT = Path(__file__).resolve().parent.parent


def purity(root: Path, seed: int) -> list[tuple[str, str, float, str]]:
    """(object, role, pure share, what it is merged with most) for one family run's folder."""
    objects = dict(enumerate(build_scene(SyntheticConfig(preset="realistic-family", seed=seed)).objects, start=1))
    store = MaskStore(root / "masks" / "store")
    scene = read_synthetic_scene(root / "scene")
    test = set(scene.test_names)
    pure = {k: [0, 0] for k in objects}
    merged: dict[int, dict[int, int]] = {k: {} for k in objects}
    for image in sorted(set(store.images()) - test):
        ids = scene.instance_truth(f"{Path(image).stem}.png").astype(int)
        labels = label_map_at(store, image, *ids.shape)[0].numpy()
        for segment in np.unique(labels[labels > 0]):
            counts = np.bincount(ids[labels == segment], minlength=len(objects) + 1)
            for k in (k for k in objects if counts[k]):
                pure[k][1] += counts[k]
                if counts[k] >= 0.8 * counts.sum():
                    pure[k][0] += counts[k]
                else:
                    rest = counts.copy()
                    rest[k] = -1
                    merged[k][int(rest.argmax())] = merged[k].get(int(rest.argmax()), 0) + counts[k]
    rows = []
    for k, obj in objects.items():
        role = obj.role or ("touching" if obj.name.endswith((" mug", " cube")) else "other")
        top = max(merged[k], key=merged[k].get) if merged[k] else None
        rows.append((obj.name, role, pure[k][0] / max(pure[k][1], 1),
                     "-" if top is None else "background" if top == 0 else objects[top].name))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=str(ROOT / "data" / "bench-heldout"))
    parser.add_argument("--seeds", nargs="+", type=int, default=[*FAMILY_DEV_SEEDS, *FAMILY_HELDOUT_SEEDS])
    args = parser.parse_args()
    by_role: dict[str, list[float]] = {}
    for seed in args.seeds:
        for name, role, share, partner in purity(Path(args.data_dir) / f"realistic-family-seed{seed}" /
                                                 "synthetic-realistic-family", seed):
            by_role.setdefault(role, []).append(share)
            print(f"seed {seed:3d}  {name:<14} {role:<9} pure {share:.2f}  shares segments most with {partner}")
    roles = ("touching", "thin", "mirror", "small", "in", "on", "multipart", "other")
    print("RESULT " + " ".join(f"{r}={np.mean(by_role[r]):.3f}" for r in roles if r in by_role))


if __name__ == "__main__":
    main()
