"""A quality floor: the tiny preset trained end to end must select its objects, and weakened runs
(the contrastive term at a tenth of its weight, the label maps shuffled between views, no
contrastive term) must not, so the floor is shown to catch a run at half the quality.

The figures behind the floor come from `benchmarks/quality_floor.py` (per seed and variant;
RESULTS.md, "Quality floor of the tiny preset").
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

# click-oracle mIoU on the tiny preset's test views (192x144, 3 views) after TINY_ITERATIONS, on the
# TINY_MASKS, measured 2026-12-04 on the project's CPU machine with benchmarks/quality_floor.py
# (the segment temperature normalised to 20 segments, the default since then), train seeds 0, 1, 2
# (min / mean / max):
#   default                      0.565 / 0.638 / 0.690
#   cc-tenth-steps               0.311 / 0.378 / 0.431
#   shuffled-labels (far view)   0.421 / 0.436 / 0.453
#   no-contrastive               0.029 / 0.034 / 0.040
#   cc-weight-tenth              0.512 / 0.570 / 0.636   (not asserted, see below)
# The floor sits midway between the weakest default seed (0.565) and the strongest weakened run
# (0.453), 0.056 from each. The contrastive weight alone (contrastive.weight / 10) does not weaken a run:
# only the contrastive term and the regulariser reach the features, and Adam scales each step by
# the gradient's own magnitude, so a tenth of the weight shifts only the contrastive term's balance
# against the regulariser; a tenth of its steps (contrastive.every x 10) is a tenth of its say in training.
QUALITY_FLOOR = 0.51
TINY_ITERATIONS = 800
TINY_MASKS = "classical"
"""The mask generator of the floor's runs. On the texture masks (the synthetic scenes' default) the
label maps shuffled between views still score 0.426-0.564 against the default's 0.571-0.626 (seeds
0-2, 2026-12-04): too close for a floor on this small scene."""
WEAKENED = ("cc-tenth-steps", "shuffled-labels", "no-contrastive")
"""Runs the floor must fail: the contrastive term on a tenth of its steps, label maps shuffled
between views, no contrastive term."""
VARIANTS = ("default", *WEAKENED, "cc-weight-tenth")
"""`cc-weight-tenth` (the contrastive term's weight / 10) is measured, not asserted: see QUALITY_FLOOR."""


class ShuffledLabelStore:
    """A mask store whose label maps belong to another training view, the one half the capture
    away in name order (on an orbit, the far side): segments stay segments, but they no longer
    agree with what the view shows. (The next view's maps were tried first: on a dense orbit they
    nearly agree with the view, and that run scored 0.51-0.60, too close to the default.)"""

    def __init__(self, store, names: list[str]):
        self.store = store
        half = len(names) // 2
        self.other = dict(zip(names, names[half:] + names[:half]))

    def read_label_maps(self, name: str, levels: int = 1) -> np.ndarray:
        return self.store.read_label_maps(self.other[name], levels)


def click_miou_after_training(scene, store, work: Path, variant: str, seed: int = 0,
                              iterations: int = TINY_ITERATIONS) -> tuple[float, dict[str, float]]:
    """Train the tiny scene with one variant and return its click-oracle mIoU and per-prompt IoU."""
    from cgc_core.config import EvaluateConfig, TrainConfig, evolve
    from cgc_core.evaluate import evaluate_scene
    from cgc_core.selection import Selector
    from cgc_core.render import feature_renderer
    from cgc_core.train import train

    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; variants are {VARIANTS}")
    cfg = TrainConfig(iterations=iterations, backend="torch", seed=seed)
    if variant == "cc-weight-tenth":
        cfg = evolve(cfg, contrastive={"weight": cfg.contrastive.weight / 10})
    elif variant == "cc-tenth-steps":
        cfg = evolve(cfg, contrastive={"every": cfg.contrastive.every * 10})
    elif variant == "no-contrastive":
        cfg = evolve(cfg, contrastive={"enabled": False})
    elif variant == "shuffled-labels":
        store = ShuffledLabelStore(store, list(scene.train_names))
    result = train(scene, store, work / "train", cfg)
    _, results = evaluate_scene(scene, feature_renderer(result.params, scene, "torch"), work / "evaluate",
                                EvaluateConfig(protocol="click-oracle"), Selector(threshold=0.7))
    scores = results["click-oracle"]
    per_prompt = {p: round(v["iou"], 3) for p, v in scores["scenes"][scene.name]["prompts"].items()}
    return scores["miou"], per_prompt


@pytest.fixture
def one_thread():
    """Train on one thread, as benchmarks/quality_floor.py measured: a run is then the benchmark's
    run exactly. (With two threads the summation order changes and a run moves by up to about
    0.09: in a full `make test` the shuffled-labels run of seed 0 scored 0.549 against 0.460.)"""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("variant", ("default", *WEAKENED))
def test_only_the_full_training_clears_the_quality_floor(tiny_inputs, tmp_path, variant, one_thread):
    scene, store = tiny_inputs
    miou, per_prompt = click_miou_after_training(scene, store, tmp_path, variant)
    if variant == "default":
        assert miou >= QUALITY_FLOOR, f"click-oracle mIoU {miou:.3f} below the floor {QUALITY_FLOOR}: {per_prompt}"
    else:
        assert miou < QUALITY_FLOOR, f"{variant}: mIoU {miou:.3f} is not below the floor {QUALITY_FLOOR}: {per_prompt}"
