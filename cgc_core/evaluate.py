"""Evaluation of a scene with ground truth under named protocols: queries, predicted masks, scores.

Protocols (`evaluate.protocol`, one or a list; `auto` picks per scene):

- `text` — the paper's: for each prompt, in its grounding view (the first test view that has the
  prompt's ground truth, as the public LERF-Mask evaluations do), Grounding DINO's top box for the
  prompt, SAM's mask of that box, and the query is the mean unit rendered feature inside the mask
  (or the one at its deepest pixel, `query.box_query_mode`); every test view is thresholded. A
  prompt that is not detected predicts empty masks (IoU 0, counted and flagged), never a
  skipped row.
- `box-oracle` — as `text`, with the ground truth's bounding box in place of the detector's: for
  users with SAM but no detector, and to tell detector misses from feature quality.
- `click-oracle` — the rendered feature at the deepest pixel of the ground truth: an upper bound
  (the query comes from the answer), not comparable with published numbers.
- `click-oracle-steps` — the click-oracle's click, then coarser steps up the hierarchy of the
  Gaussians' clusters (`hierarchy.ClusterTree`) while the IoU with the ground truth in the grounding
  view rises (a user who looks at the result and asks for more of the object), the same step in
  every test view: an upper bound on one click plus steps; the paper's row stays one click.
- `ovs-argmax` — the 3D-OVS dataset's own metric: in each view every pixel takes the class whose
  query it is most similar to; per-class IoU; mean over classes per view, then over views.

`evaluate_scene` works on any feature renderer (test image name -> [H, W, D] feature map), so it
runs on a trained model and, in tests, on hand-made feature maps. Predictions are written in the
LERF-Mask result layout, `<out>/predictions/<protocol>/<scene>/<i>/<prompt>.png`, and scored from
those files by `score_predictions`, which any other tool's predictions can go through too.
"""

from __future__ import annotations

import functools
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch import Tensor

from .config import EVALUATION_PROTOCOLS, CgcConfig, EvaluateConfig
from .hierarchy import ClusterTree
from .metrics import (MaskScore, MissingPredictionError, average_scores, iou, psnr, read_mask, resize_nearest,
                      score_pair)
from .query import deepest_pixel
from .scene.model import Scene, SceneError
from .selection import Query, Selector
from .render import Gaussians, render
from .stage import SUMMARY, StageOutputs
from .render import feature_renderer

FeatureRenderer = Callable[[str], Tensor]
ImageRenderer = Callable[[str], np.ndarray]

# The layouts whose benchmarks publish text-protocol numbers.
TEXT_PROTOCOL_LAYOUTS = ("lerf_mask", "ovs3d")
# What each protocol needs loaded: SAM for a box's mask, Grounding DINO for text.
NEEDS_SAM = ("text", "box-oracle")
RESULTS_TABLE = "results.parquet"
"""Every (protocol, scene, test view, prompt) row of an evaluation, in its output folder."""


@dataclass(frozen=True)
class EvaluateOutputs(StageOutputs):
    """The evaluate stage's files: `results_table` (every row, Parquet), `predictions` (per protocol,
    the LERF-Mask result layout: `prediction_path`) and `summary` (mIoU, mBIoU per protocol, test PSNR)."""

    results_table = property(lambda self: self.folder / RESULTS_TABLE)
    predictions = property(lambda self: self.folder / "predictions")


NEEDS_DETECTOR = ("text",)


class EvaluationSetupError(RuntimeError):
    """The chosen protocols cannot run with this config (missing weights); says which key and file."""


def resolve_protocols(protocol: str | list[str], layout: str, ovs_queries: str = "text") -> list[str]:
    """The concrete protocols for a scene: `auto` -> `text` for LERF-Mask and 3D-OVS scenes,
    `click-oracle` otherwise; duplicates dropped, order kept."""
    wanted = [protocol] if isinstance(protocol, str) else list(protocol)
    out: list[str] = []
    for p in wanted:
        p = ("text" if layout in TEXT_PROTOCOL_LAYOUTS else "click-oracle") if p == "auto" else p
        if p not in EVALUATION_PROTOCOLS:
            raise ValueError(f"unknown evaluation protocol {p!r}; protocols are {list(EVALUATION_PROTOCOLS)} or auto")
        if p not in out:
            out.append(p)
    return out


def _query_source(protocol: str, ovs_queries: str) -> str:
    """The query-making protocol behind `protocol` (`ovs-argmax` borrows `ovs_queries`',
    `click-oracle-steps` the click-oracle's)."""
    return {"ovs-argmax": ovs_queries, "click-oracle-steps": "click-oracle"}.get(protocol, protocol)


def _query_sources(protocols: list[str], ovs_queries: str) -> list[str]:
    """The query-making protocols behind `protocols`."""
    return sorted({_query_source(p, ovs_queries) for p in protocols})


def check_protocol_weights(cfg: CgcConfig, scene: Scene) -> list[str]:
    """Check, before any stage computes, that the weights the scene's protocols need are configured
    and exist. Returns the protocols; a scene without ground truth needs none.

    Raises:
        EvaluationSetupError: naming the missing file or unset key, the protocol that needs it,
            and that `click-oracle` needs no weights.
    """
    if not any(scene.gt_masks.values()):
        return []
    protocols = resolve_protocols(cfg.evaluate.protocol, scene.layout, cfg.evaluate.ovs_queries)
    sources = _query_sources(protocols, cfg.evaluate.ovs_queries)
    hint = ("; evaluate.protocol=click-oracle needs no weights (an upper bound with a ground-truth query, not "
            "comparable with published numbers)")
    problems = []
    if any(p in NEEDS_SAM for p in sources):
        sam = cfg.query.sam
        who = "/".join(p for p in sources if p in NEEDS_SAM)
        if sam.checkpoint is None and not sam.allow_random_weights:
            problems.append(f"protocol {who} needs SAM: query.sam.checkpoint is not set")
        elif sam.checkpoint is not None and not Path(sam.checkpoint).is_file():
            problems.append(f"{sam.checkpoint}: SAM checkpoint file not found (query.sam.checkpoint, needed by "
                            f"protocol {who})")
    if any(p in NEEDS_DETECTOR for p in sources):
        q = cfg.query
        if q.gdino_checkpoint is None and not q.allow_random_weights:
            problems.append("protocol text needs Grounding DINO: query.gdino_checkpoint is not set")
        elif q.gdino_checkpoint is not None and not Path(q.gdino_checkpoint).is_file():
            problems.append(f"{q.gdino_checkpoint}: Grounding DINO checkpoint file not found "
                            "(query.gdino_checkpoint, needed by protocol text)")
        if q.text_encoder is not None and not Path(q.text_encoder).is_dir():
            problems.append(f"{q.text_encoder}: BERT text-encoder folder not found (query.text_encoder)")
    if problems:
        raise EvaluationSetupError(f"{scene.name}: " + "; ".join(problems) + hint)
    return protocols


def selection_protocol(cfg: CgcConfig, scene: Scene) -> str:
    """The query-making protocol whose queries stand for the scene's prompts outside evaluation
    (the cluster stage's objects/*.ply, `cgc export --object`): the first configured one."""
    protocols = resolve_protocols(cfg.evaluate.protocol, scene.layout, cfg.evaluate.ovs_queries)
    return _query_source(protocols[0], cfg.evaluate.ovs_queries)


def grounding_view(scene: Scene, prompt: str) -> str | None:
    """The first test view (in test order) whose ground truth for `prompt` is not empty."""
    found = _grounding(scene, prompt)
    return found[0] if found else None


def _grounding(scene: Scene, prompt: str) -> tuple[str, np.ndarray] | None:
    """The grounding view of `prompt` and its ground-truth mask there, or None."""
    for view in scene.test_names:
        if prompt in scene.gt_masks.get(view, {}):
            gt = scene.load_gt_mask(view, prompt)
            if gt.any():
                return view, gt
    return None


def grounding_masks(scene: Scene) -> dict[str, tuple[str, np.ndarray] | None]:
    """Per prompt of the scene: its grounding view and ground-truth mask there (None when the
    ground truth is empty in every view), read once for every protocol."""
    return {prompt: _grounding(scene, prompt) for prompt in _scene_prompts(scene)}


def _scene_prompts(scene: Scene) -> list[str]:
    return sorted({p for masks in scene.gt_masks.values() for p in masks})


def _to_grid(row: int, col: int, source: tuple[int, int], target: tuple[int, int]) -> tuple[int, int]:
    """A pixel of a `source`-sized image mapped to the `target` grid (pixel centres)."""
    return (min(int((row + 0.5) * target[0] / source[0]), target[0] - 1),
            min(int((col + 0.5) * target[1] / source[1]), target[1] - 1))


def protocol_queries(protocol: str, scene: Scene, render_features: FeatureRenderer, selector: Selector,
                     grounding_image: ImageRenderer | None = None,
                     grounding: dict[str, tuple[str, np.ndarray] | None] | None = None) -> dict[str, Query]:
    """One query per prompt of the scene under a query-making protocol (`text`, `box-oracle`,
    `click-oracle`). A text prompt that is not detected gets a Query whose feature is None.

    Args:
        protocol: The protocol.
        scene: The scene with ground truth.
        render_features: Test view name -> [H, W, D] rendered features.
        selector: The selection service (threshold, SAM, detector).
        grounding_image: Test view name -> [H, W, 3] uint8 image the detector and SAM see
            (default: the test photo).
        grounding: `grounding_masks(scene)`, when the caller has it already.
    """
    if grounding_image is None:
        def grounding_image(view: str) -> np.ndarray:
            return (scene.load_image(view) * 255 + 0.5).astype(np.uint8)

    features = _cached(render_features)
    queries: dict[str, Query] = {}
    for prompt, found in (grounding if grounding is not None else grounding_masks(scene)).items():
        if found is None:
            continue  # ground truth empty in every view: nothing to query, every row is an empty union
        view, gt = found
        fmap = features(view)
        if protocol == "click-oracle":
            row, col = _to_grid(*deepest_pixel(gt), gt.shape, tuple(fmap.shape[:2]))
            queries[prompt] = selector.click(fmap, [(row, col)], view, require_rendered=False)
        elif protocol in ("box-oracle", "text"):
            image = grounding_image(view)
            if protocol == "text":
                queries[prompt] = selector.text(fmap, image, prompt, view)
            else:
                rows, cols = np.nonzero(gt)
                sy, sx = image.shape[0] / gt.shape[0], image.shape[1] / gt.shape[1]
                box = [cols.min() * sx, rows.min() * sy, (cols.max() + 1) * sx, (rows.max() + 1) * sy]
                queries[prompt] = selector.box(fmap, image, box, view)
        else:
            raise ValueError(f"protocol_queries: {protocol!r} does not make queries (text, box-oracle, click-oracle)")
    return queries


def _cached(render_features: FeatureRenderer) -> FeatureRenderer:
    """`render_features` remembering every view it rendered (for the few grounding views)."""
    return render_features if hasattr(render_features, "cache_info") else functools.cache(render_features)


def prediction_path(out_dir: Path, scene: Scene, view: str, prompt: str) -> Path:
    """`<out>/<scene>/<test index>/<prompt>.png`, the LERF-Mask result layout."""
    return Path(out_dir) / scene.name / str(scene.test_names.index(view)) / f"{prompt}.png"


def _write_mask(path: Path, mask: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(mask, dtype=np.uint8) * 255).save(path)
    return path


def predict_masks(scene: Scene, render_features: FeatureRenderer, queries: dict[str, Query | list], out_dir: Path,
                  selector: Selector) -> list[Path]:
    """Threshold every prompt's query in every test view that has its ground truth; write the PNGs.
    A prompt whose value is a list of queries (coarser steps) predicts their union; a prompt
    without a (detected) query gets empty masks."""
    written = []
    prompts = _scene_prompts(scene)
    for view in scene.test_names:
        wanted = [p for p in prompts if p in scene.gt_masks.get(view, {})]
        if not wanted:
            continue
        fmap = render_features(view)
        for prompt in wanted:
            chosen = queries.get(prompt) or Query(None, "none")
            mask = selector.union_mask(fmap, chosen if isinstance(chosen, list) else [chosen])
            written.append(_write_mask(prediction_path(out_dir, scene, view, prompt), mask.cpu().numpy()))
    return written


def oracle_steps(tree: ClusterTree, query: Query, feature_map: Tensor, gt: np.ndarray, selector: Selector,
                 ) -> tuple[int, list[float]]:
    """`click-oracle-steps`' choice for one prompt: coarser steps from the click while the IoU of
    the selection with the ground truth `gt` of the grounding view (`feature_map`'s view) rises.

    Returns:
        The chosen number of steps (0: the click alone) and the IoU at every step tried.
    """
    if not query.detected:
        return 0, []
    ious: list[float] = []
    for steps in range(tree.depth(query.feature) + 1):
        mask = resize_nearest(selector.union_mask(feature_map, tree.step_features(query.feature, steps)).cpu().numpy(),
                              gt.shape)
        ious.append(iou(mask, gt, "one"))  # the grounding view holds the prompt: never an empty union
        if steps and ious[-1] <= ious[-2]:
            return steps - 1, ious
    return len(ious) - 1, ious


def predict_argmax(scene: Scene, render_features: FeatureRenderer, queries: dict[str, Query], out_dir: Path,
                   selector: Selector) -> list[Path]:
    """3D-OVS's prediction: per test view, each pixel takes the class (among the scene's prompts)
    whose query it is most similar to; one PNG per class of the view's ground truth. Classes
    without a query never win a pixel; a view where no class has a query predicts nothing."""
    written = []
    classes = scene.prompts or _scene_prompts(scene)
    for view in scene.test_names:
        wanted = [p for p in classes if p in scene.gt_masks.get(view, {})]
        if not wanted:
            continue
        sims = selector.similarity(render_features(view), [queries.get(c) or Query(None, "none") for c in classes])
        winner = sims.argmax(0).cpu().numpy()
        anything = torch.isfinite(sims).any(0).cpu().numpy()
        for prompt in wanted:
            written.append(_write_mask(prediction_path(out_dir, scene, view, prompt),
                                       (winner == classes.index(prompt)) & anything))
    return written


def score_predictions(scene: Scene, pred_dir: Path, cfg: EvaluateConfig) -> list[MaskScore]:
    """Score predicted PNGs (LERF-Mask result layout) against every ground-truth mask of the scene.

    Raises:
        MissingPredictionError: a ground-truth mask has no prediction (unless cfg.missing_as_zero).
    """
    scores = []
    for view in scene.test_names:
        truth = {prompt: scene.load_gt_mask(view, prompt) for prompt in sorted(scene.gt_masks.get(view, {}))}
        for prompt, gt in truth.items():
            path = prediction_path(pred_dir, scene, view, prompt)
            pred = read_mask(path) if path.is_file() else None
            if pred is None and not cfg.missing_as_zero:
                raise MissingPredictionError(f"{path}: missing prediction for {scene.name}/{view}/{prompt}")
            others = {p: m for p, m in truth.items() if p != prompt and m.shape == gt.shape}
            scores.append(score_pair(pred, gt, scene.name, view, prompt, missing_as_zero=cfg.missing_as_zero,
                                     empty_union=cfg.empty_union, others=others))
    return scores


def ovs_average(scores: list[MaskScore], scene_name: str) -> dict:
    """3D-OVS averaging: per view, the mean IoU over its classes (empty unions left out), then the
    mean over views. Same keys as `metrics.average_scores` (mBIoU: the boundary IoU likewise)."""
    base = average_scores(scores)
    by_view: dict[str, list[MaskScore]] = {}
    for s in scores:
        by_view.setdefault(s.view, []).append(s)
    view_iou = [np.mean(v) for rows in by_view.values() if (v := [r.iou for r in rows if r.iou is not None])]
    view_biou = [np.mean(v) for rows in by_view.values() if (v := [r.biou for r in rows if r.biou is not None])]
    miou = float(np.mean(view_iou)) if view_iou else float("nan")
    mbiou = float(np.mean(view_biou)) if view_biou else float("nan")
    base["miou"], base["mbiou"] = miou, mbiou
    if scene_name in base["scenes"]:
        base["scenes"][scene_name].update(miou=miou, mbiou=mbiou)
    return base


def evaluate_scene(scene: Scene, render_features: FeatureRenderer, out_dir: str | Path, cfg: EvaluateConfig,
                   selector: Selector, grounding_image: ImageRenderer | None = None,
                   protocols: list[str] | None = None, tree: ClusterTree | None = None,
                   ) -> tuple[pd.DataFrame, dict[str, dict]]:
    """Every protocol end to end: queries, predicted PNGs, scores, one `results.parquet`.

    Args:
        scene: A scene with ground-truth masks.
        render_features: Test view name -> [H, W, D] rendered features.
        out_dir: Folder for `predictions/<protocol>/...` and `results.parquet`.
        cfg: The evaluate section (protocols, grounding image, scoring rules).
        selector: The selection service (threshold, SAM and detector for box/text queries).
        grounding_image: View name -> uint8 image for the detector and SAM (default: the photo).
        protocols: Concrete protocols (default: `resolve_protocols` of the config for the scene).
        tree: The hierarchy of the model's clusters (`cluster.model_tree`), needed by `click-oracle-steps`.

    Returns:
        Every (protocol, view, prompt) row — with the protocol, the query's grounding view, pixel,
        the coarser steps taken (`click-oracle-steps`),
        box, detection score and SAM mask area, and flags for undetected prompts and empty
        unions — and per protocol its averages (`metrics.average_scores`, plus `not_detected`).
    """
    out_dir = Path(out_dir)
    protocols = protocols or resolve_protocols(cfg.protocol, scene.layout, cfg.ovs_queries)
    if "click-oracle-steps" in protocols and tree is None:
        raise ValueError("evaluate_scene: protocol click-oracle-steps needs the cluster tree (tree=)")
    grounding = grounding_masks(scene)
    for prompt, found in grounding.items():
        if found is None:
            files = sorted(str(m[prompt]) for m in scene.gt_masks.values() if prompt in m)
            raise SceneError(f"{files[0]}: the ground truth of {prompt!r} is empty in every test view "
                             f"({len(files)} mask files): nothing to query or score it on")
    grounding_features = _cached(render_features)  # the grounding views, rendered once for every source
    made: dict[str, dict[str, Query]] = {}
    for source in _query_sources(protocols, cfg.ovs_queries):
        made[source] = protocol_queries(source, scene, grounding_features, selector, grounding_image, grounding)
    rows, results = [], {}
    for protocol in protocols:
        source = _query_source(protocol, cfg.ovs_queries)
        queries, steps = made[source], {}
        pred_dir = EvaluateOutputs(out_dir).predictions / protocol
        if protocol == "ovs-argmax":
            predict_argmax(scene, render_features, queries, pred_dir, selector)
        elif protocol == "click-oracle-steps":
            steps = {p: oracle_steps(tree, q, grounding_features(q.view), grounding[p][1], selector)[0]
                     for p, q in queries.items()}
            predict_masks(scene, render_features, {p: tree.step_features(q.feature, steps[p]) if q.detected else q
                                                   for p, q in queries.items()}, pred_dir, selector)
        else:
            predict_masks(scene, render_features, queries, pred_dir, selector)
        scores = score_predictions(scene, pred_dir, cfg)
        averages = ovs_average(scores, scene.name) if protocol == "ovs-argmax" else average_scores(scores)
        averages["not_detected"] = sorted(p for p, q in queries.items() if not q.detected)
        averages["query_source"] = source
        if steps:
            averages["steps"] = steps
        results[protocol] = averages
        for s in scores:
            q = queries.get(s.prompt)
            box = q.box if q is not None and q.box is not None else [None] * 4
            rows.append({
                **asdict(s), "false_positives": json.dumps(s.false_positives),  # JSON: its keys vary by row
                "view_index": scene.test_names.index(s.view), "protocol": protocol,
                "threshold": selector.threshold, "query_source": source,
                "grounding_view": q.view if q else None, "detected": bool(q and q.detected),
                "query_row": q.pixel[0] if q and q.pixel else None, "query_col": q.pixel[1] if q and q.pixel else None,
                "steps": steps.get(s.prompt),
                "box_x0": box[0], "box_y0": box[1], "box_x1": box[2], "box_y1": box[3],
                "detection_score": q.score if q else None, "sam_mask_area": q.mask_area if q else None,
            })
    table = pd.DataFrame(rows)
    out_dir.mkdir(parents=True, exist_ok=True)
    table.to_parquet(EvaluateOutputs(out_dir).results_table, index=False)
    return table, results


def evaluate_model(params: dict[str, Tensor], scene: Scene, cfg: CgcConfig, out_dir: str | Path,
                   tree: ClusterTree | None = None) -> dict:
    """The evaluate stage's work: every configured protocol on a trained model (`evaluate_scene`),
    plus the test views' PSNR; writes `summary.json` beside the predictions and `results.parquet`.

    Args:
        params: Trained parameters; scene: the calibrated scene with its ground truth.
        cfg: Root config (`evaluate`, `query`, `train.backend` and `train.background`).
        out_dir: The stage's folder.
        tree: The cluster stage's tree of the model's clusters (`cluster.ClusterOutputs.tree`),
            which `click-oracle-steps` climbs; that protocol raises ValueError without it.

    Returns:
        The summary: the first protocol's mIoU, mBIoU and per-prompt figures at the top, every
        protocol's under "protocols", test PSNR; {"skipped": why} for a scene without ground truth.
    """
    out_dir = Path(out_dir)
    if not any(scene.gt_masks.values()):
        summary = {"skipped": f"{scene.name} has no ground-truth masks"}
    else:
        gaussians, background = Gaussians.from_params(params), tuple(cfg.train.background)

        @functools.cache
        @torch.no_grad()
        def rendered(view: str) -> Tensor:  # the test views feed both the detector and the PSNR
            return render(gaussians, scene.cameras[view], backend=cfg.train.backend, background=background).rgb

        protocols = resolve_protocols(cfg.evaluate.protocol, scene.layout, cfg.evaluate.ovs_queries)
        selector = Selector.from_config(cfg)
        table, results = evaluate_scene(
            scene, feature_renderer(params, scene, cfg.train.backend), out_dir, cfg.evaluate, selector,
            grounding_image=(lambda view: (rendered(view).clamp(0, 1).cpu().numpy() * 255 + 0.5).astype("uint8"))
            if cfg.evaluate.grounding_image == "render" else None, protocols=protocols, tree=tree)
        psnrs = [psnr(rendered(n), torch.as_tensor(scene.load_image(n))) for n in scene.test_names]
        per_protocol = {
            p: {"miou": r["miou"], "mbiou": r["mbiou"], "not_detected": r["not_detected"],
                "empty_union_views": r["empty_union_views"], "rows": int((table["protocol"] == p).sum()),
                "prompts": r["scenes"].get(scene.name, {}).get("prompts", {}), **({"steps": r["steps"]} if "steps" in r else {})}
            for p, r in results.items()}
        first = per_protocol[protocols[0]]
        # The top-level numbers are the first protocol's; every protocol's are under "protocols".
        summary = {"protocol": protocols[0], "threshold": cfg.query.threshold,
                   "miou": first["miou"], "mbiou": first["mbiou"], "prompts": first["prompts"],
                   "psnr": float(sum(psnrs) / len(psnrs)) if psnrs else None,
                   "empty_union": cfg.evaluate.empty_union, "protocols": per_protocol}
    (out_dir / SUMMARY).write_text(json.dumps(summary, indent=2))
    return summary
