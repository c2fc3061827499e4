"""Evaluation of a scene with ground truth: click-protocol queries, predicted masks, scores.

`evaluate_scene` works on any feature renderer (a callable from a test image name to its
[H, W, D] feature map), so it runs on a trained model and, in tests, on hand-made feature maps.
Predicted masks are written in the LERF-Mask result layout, `<out>/<scene>/<i>/<prompt>.png`
(i: the test view's index, as in `test_mask/<i>/`), and scored from those files by
`score_predictions`, which any other tool's predictions can go through too.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch import Tensor

from .config import EvaluateConfig
from .metrics import MaskScore, MissingPredictionError, average_scores, read_mask, score_pair
from .query import deepest_pixel, feature_at, select
from .scene.model import Scene

FeatureRenderer = Callable[[str], Tensor]


@dataclass(frozen=True)
class ClickQuery:
    """The click protocol's query for one prompt: where it was taken and the feature."""

    prompt: str
    view: str
    row: int
    col: int
    feature: Tensor


def click_queries(scene: Scene, render_features: FeatureRenderer) -> dict[str, ClickQuery]:
    """Per prompt: the deepest pixel of its ground truth in the first test view that has it.

    The feature at that pixel (of the view's rendered feature map, scaled to the ground truth's
    size) is the query for every test view.
    """
    queries: dict[str, ClickQuery] = {}
    cache: dict[str, Tensor] = {}
    for view in scene.test_names:
        for prompt in sorted(scene.gt_masks.get(view, {})):
            if prompt in queries:
                continue
            gt = scene.load_gt_mask(view, prompt)
            if not gt.any():
                continue
            row, col = deepest_pixel(gt)
            if view not in cache:
                cache[view] = render_features(view)
            fmap = cache[view]
            # Map the ground-truth pixel to the feature map's grid (they may differ in size).
            fr = min(int((row + 0.5) * fmap.shape[0] / gt.shape[0]), fmap.shape[0] - 1)
            fc = min(int((col + 0.5) * fmap.shape[1] / gt.shape[1]), fmap.shape[1] - 1)
            queries[prompt] = ClickQuery(prompt, view, row, col, feature_at(fmap, [(fr, fc)])[0])
    return queries


def prediction_path(out_dir: Path, scene: Scene, view: str, prompt: str) -> Path:
    """`<out>/<scene>/<test index>/<prompt>.png`, the LERF-Mask result layout."""
    return Path(out_dir) / scene.name / str(scene.test_names.index(view)) / f"{prompt}.png"


def predict_masks(scene: Scene, render_features: FeatureRenderer, queries: dict[str, ClickQuery],
                  out_dir: Path, threshold: float) -> list[Path]:
    """Select every queried prompt in every test view that has ground truth; write the PNGs."""
    written = []
    prompts = sorted(queries)
    features = torch.stack([queries[p].feature for p in prompts]) if prompts else None
    for view in scene.test_names:
        wanted = [p for p in prompts if p in scene.gt_masks.get(view, {})]
        if not wanted:
            continue
        masks = select(render_features(view), features, threshold)
        for k, prompt in enumerate(prompts):
            if prompt not in wanted:
                continue
            path = prediction_path(out_dir, scene, view, prompt)
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(masks[k].cpu().numpy().astype(np.uint8) * 255).save(path)
            written.append(path)
    return written


def score_predictions(scene: Scene, pred_dir: Path, cfg: EvaluateConfig) -> list[MaskScore]:
    """Score predicted PNGs (LERF-Mask result layout) against every ground-truth mask of the scene.

    Raises:
        MissingPredictionError: a ground-truth mask has no prediction (unless cfg.missing_as_zero).
    """
    scores = []
    for view in scene.test_names:
        for prompt in sorted(scene.gt_masks.get(view, {})):
            path = prediction_path(pred_dir, scene, view, prompt)
            pred = read_mask(path) if path.is_file() else None
            if pred is None and not cfg.missing_as_zero:
                raise MissingPredictionError(f"{path}: missing prediction for {scene.name}/{view}/{prompt}")
            scores.append(score_pair(pred, scene.load_gt_mask(view, prompt), scene.name, view, prompt,
                                     missing_as_zero=cfg.missing_as_zero, empty_union=cfg.empty_union))
    return scores


def evaluate_scene(scene: Scene, render_features: FeatureRenderer, out_dir: str | Path, cfg: EvaluateConfig,
                   threshold: float) -> tuple[pd.DataFrame, dict]:
    """Click protocol end to end: queries, predicted PNGs, scores, `results.parquet`.

    Returns:
        The per-(scene, view, prompt) rows and the protocol averages (`metrics.average_scores`).
    """
    out_dir = Path(out_dir)
    queries = click_queries(scene, render_features)
    predict_masks(scene, render_features, queries, out_dir / "predictions", threshold)
    scores = score_predictions(scene, out_dir / "predictions", cfg)
    rows = []
    for s in scores:
        q = queries.get(s.prompt)
        rows.append({**asdict(s), "view_index": scene.test_names.index(s.view), "protocol": cfg.protocol,
                     "threshold": threshold, "query_view": q.view if q else None,
                     "query_row": q.row if q else None, "query_col": q.col if q else None})
    table = pd.DataFrame(rows)
    out_dir.mkdir(parents=True, exist_ok=True)
    table.to_parquet(out_dir / "results.parquet", index=False)
    return table, average_scores(scores)
