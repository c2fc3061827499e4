"""Segmentation metrics exactly as the published protocols compute them (../shared/PROTOCOL.md).

LERF-Mask protocol (Gaussian Grouping's evaluation, which CGC's numbers follow):
- ground truth and prediction are read as grayscale and binarised at > 128; the prediction is
  resized to the ground truth's size with nearest-neighbour;
- IoU = |A ∩ B| / |A ∪ B|;
- boundary IoU: d = max(1, round(0.02 · sqrt(H² + W²))); each mask is padded with a 1-pixel zero
  border (so the image edge counts as boundary), eroded d times with a 3×3 kernel, and its
  boundary is mask − eroded; BIoU = |B_gt ∩ B_pred| / |B_gt ∪ B_pred|;
- averages: per prompt over the test views that have it, per scene over prompts, and the plain
  mean over scenes.
Deviations from the reference script, on purpose: a missing prediction is an error (or, when
asked, counts as IoU 0 with a warning) instead of being skipped. An empty union (both masks
empty) follows the reference script by default (`empty_union="nan"`: no score, left out of the
mean) but is never silent: the row is flagged and `average_scores` counts such views.

3D-OVS's own protocol (a different number, labelled so): per view, argmax over all classes' score
maps, then per-class Jaccard, averaged over classes and views.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Literal

import numpy as np
from PIL import Image
from scipy import ndimage

EmptyUnion = Literal["nan", "one"]


class MissingPredictionError(FileNotFoundError):
    """A prediction that the ground truth calls for does not exist."""


def binarize(gray: np.ndarray) -> np.ndarray:
    """Grayscale (0–255) to boolean at > 128, the protocol's rule."""
    return np.asarray(gray) > 128


def read_mask(path: str | Path) -> np.ndarray:
    """Read a mask PNG as grayscale and binarise it at > 128."""
    with Image.open(path) as img:
        return binarize(np.asarray(img.convert("L")))


def resize_nearest(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a boolean mask to (height, width), as PIL's NEAREST does it."""
    if mask.shape == tuple(shape):
        return mask
    img = Image.fromarray(mask.astype(np.uint8) * 255)
    return np.asarray(img.resize((shape[1], shape[0]), Image.Resampling.NEAREST)) > 128


def iou(pred: np.ndarray, gt: np.ndarray, empty_union: EmptyUnion = "nan") -> float | None:
    """Intersection over union of two boolean masks of one size.

    Returns:
        The IoU; for an empty union (both masks empty), None when `empty_union="nan"` (the
        reference script's NaN: the caller leaves the pair out of the mean), or 1.0 when `"one"`.
    """
    if empty_union not in ("nan", "one"):
        raise ValueError(f"iou: empty_union must be 'nan' or 'one', got {empty_union!r}")
    if pred.shape != gt.shape:
        raise ValueError(f"iou: shapes differ, prediction {pred.shape} vs ground truth {gt.shape}")
    union = np.logical_or(pred, gt).sum()
    if union == 0:
        return 1.0 if empty_union == "one" else None
    return float(np.logical_and(pred, gt).sum() / union)


def boundary_distance(shape: tuple[int, int]) -> int:
    """d = max(1, round(0.02 · image diagonal))."""
    return max(1, int(round(0.02 * np.sqrt(shape[0] ** 2 + shape[1] ** 2))))


def mask_boundary(mask: np.ndarray, dilation: int) -> np.ndarray:
    """mask − erode(pad(mask, 1 zero pixel), 3×3, `dilation` times): the band within d of its edge.

    (scipy's iterated erosion only revisits pixels that changed, so this literal form is also the
    fast one: an equivalent single chessboard distance transform was measured slower.)
    """
    padded = np.pad(mask, 1, mode="constant", constant_values=False)
    eroded = ndimage.binary_erosion(padded, structure=np.ones((3, 3), bool), iterations=dilation)
    return mask & ~eroded[1:-1, 1:-1]


def boundary_iou(pred: np.ndarray, gt: np.ndarray, empty_union: EmptyUnion = "nan") -> float | None:
    """Boundary IoU (Cheng et al.) with the LERF-Mask evaluation's d and padding."""
    if pred.shape != gt.shape:
        raise ValueError(f"boundary_iou: shapes differ, prediction {pred.shape} vs ground truth {gt.shape}")
    d = boundary_distance(gt.shape)
    return iou(mask_boundary(pred, d), mask_boundary(gt, d), empty_union)


@dataclass(frozen=True)
class MaskScore:
    """One (scene, view, prompt) evaluation row."""

    scene: str
    view: str
    prompt: str
    iou: float | None
    biou: float | None
    missing: bool = False
    empty_union: bool = False
    """Both the ground truth and the prediction are empty (no score under `empty_union="nan"`)."""
    precision: float | None = None
    """Share of the predicted pixels inside the ground truth (None: nothing predicted)."""
    recall: float | None = None
    """Share of the ground truth predicted (None: empty ground truth)."""
    false_positives: dict[str, int] = field(default_factory=dict)
    """{where: pixels} of the predicted pixels outside the ground truth: each other prompt whose
    ground truth (in this view) holds them, and `background` for the rest (`selection_errors`)."""


def selection_errors(pred: np.ndarray, gt: np.ndarray, others: dict[str, np.ndarray] | None = None) -> dict:
    """Precision, recall and where the false positives of a predicted mask lie.

    Args:
        pred, gt: Boolean masks of one size.
        others: The other prompts' ground-truth masks in the same view, by prompt; a false-positive
            pixel counts for the first of them (by name) that holds it, else for `background`.

    Returns:
        `precision` (None when nothing is predicted), `recall` (None when the truth is empty) and
        `false_positives`: {prompt or "background": pixels}, without zero entries.
    """
    hit, wrong = int((pred & gt).sum()), pred & ~gt
    where = {}
    for name, mask in sorted((others or {}).items()):
        where[name] = int((wrong & mask).sum())
        wrong = wrong & ~mask
    where["background"] = int(wrong.sum())
    return {"precision": hit / int(pred.sum()) if pred.any() else None,
            "recall": hit / int(gt.sum()) if gt.any() else None,
            "false_positives": {k: v for k, v in where.items() if v}}


def score_pair(pred: np.ndarray | None, gt: np.ndarray, scene: str, view: str, prompt: str,
               missing_as_zero: bool = False, empty_union: EmptyUnion = "nan",
               others: dict[str, np.ndarray] | None = None) -> MaskScore:
    """Score one predicted mask against its ground truth (prediction resized to the GT's size);
    `others` (the view's other ground-truth masks) name where false positives lie.

    A missing prediction (None) raises `MissingPredictionError`, or with `missing_as_zero` scores
    0 / 0 with a warning.
    """
    if pred is None:
        message = f"{scene}/{view}/{prompt}: no prediction for a ground-truth mask"
        if not missing_as_zero:
            raise MissingPredictionError(message)
        warnings.warn(message + " (counted as IoU 0)", stacklevel=2)
        return MaskScore(scene, view, prompt, 0.0, 0.0, missing=True)
    pred = resize_nearest(pred.astype(bool), gt.shape)
    empty = not (pred.any() or gt.any())
    errors = selection_errors(pred, gt, others)
    return MaskScore(scene, view, prompt, iou(pred, gt, empty_union), boundary_iou(pred, gt, empty_union),
                     empty_union=empty, precision=errors["precision"], recall=errors["recall"],
                     false_positives=errors["false_positives"])


def average_scores(scores: Iterable[MaskScore]) -> dict:
    """Protocol averaging: per prompt over its views, per scene over prompts, then over scenes.

    Returns:
        {"scenes": {scene: {"miou", "mbiou", "prompts": {prompt: {"iou", "biou", "views", "precision",
        "recall", "false_positives"}}}}, "miou", "mbiou", "empty_union_views"}; pairs whose score is
        None (empty unions under `empty_union="nan"`) are left out of the means and counted in
        `empty_union_views`. A prompt's precision and recall are means over the views where they
        are defined; its `false_positives` the share of all its false-positive pixels by where they lie.
    """
    scores = list(scores)
    by_scene: dict[str, dict[str, list[MaskScore]]] = {}
    for s in scores:
        by_scene.setdefault(s.scene, {}).setdefault(s.prompt, []).append(s)
    result: dict = {"scenes": {}}
    for scene, prompts in sorted(by_scene.items()):
        per_prompt = {}
        for prompt, rows in sorted(prompts.items()):
            ious = [r.iou for r in rows if r.iou is not None]
            bious = [r.biou for r in rows if r.biou is not None]
            if ious:
                per_prompt[prompt] = {"iou": float(np.mean(ious)), "biou": float(np.mean(bious)), "views": len(ious),
                                      **_error_means(rows)}
        result["scenes"][scene] = {
            "miou": float(np.mean([p["iou"] for p in per_prompt.values()])) if per_prompt else float("nan"),
            "mbiou": float(np.mean([p["biou"] for p in per_prompt.values()])) if per_prompt else float("nan"),
            "prompts": per_prompt,
        }
    scene_values = list(result["scenes"].values())
    result["miou"] = float(np.mean([s["miou"] for s in scene_values])) if scene_values else float("nan")
    result["mbiou"] = float(np.mean([s["mbiou"] for s in scene_values])) if scene_values else float("nan")
    result["empty_union_views"] = sum(1 for s in scores if s.empty_union and s.iou is None)
    return result


def _error_means(rows: list[MaskScore]) -> dict:
    def mean(values):
        values = [v for v in values if v is not None]
        return float(np.mean(values)) if values else None

    where: dict[str, int] = {}
    for row in rows:
        for name, pixels in row.false_positives.items():
            where[name] = where.get(name, 0) + pixels
    total = sum(where.values())
    return {"precision": mean(r.precision for r in rows), "recall": mean(r.recall for r in rows),
            "false_positives": {k: v / total for k, v in sorted(where.items(), key=lambda kv: -kv[1])}}


def ovs3d_view_miou(scores: np.ndarray, gt_labels: np.ndarray, n_classes: int) -> float:
    """3D-OVS's own protocol for one view: argmax over class score maps, mean per-class Jaccard.

    Args:
        scores: [n_classes, H, W] per-class scores (e.g. similarity maps).
        gt_labels: [H, W] int class index per pixel (-1 for unlabelled pixels, ignored).
        n_classes: number of classes.

    Returns:
        Mean over the classes present in the ground truth or the prediction of |P∩G| / |P∪G|.
    """
    pred = np.argmax(scores, axis=0)
    valid = gt_labels >= 0
    values = []
    for c in range(n_classes):
        p, g = (pred == c) & valid, (gt_labels == c) & valid
        union = np.logical_or(p, g).sum()
        if union:
            values.append(np.logical_and(p, g).sum() / union)
    return float(np.mean(values)) if values else float("nan")


def psnr(a, b) -> float:
    """Peak signal-to-noise ratio in dB of two images in [0, 1] (tensors or arrays of one shape)."""
    mse = float(((a - b) ** 2).mean())
    return 10 * math.log10(1.0 / max(mse, 1e-12))


def set_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two boolean masks over the same Gaussians (0 when both are empty)."""
    union = int((a | b).sum())
    return float((a & b).sum() / union) if union else 0.0


def scores_against_truth(labels: np.ndarray, truth: np.ndarray, considered: np.ndarray | None = None) -> dict:
    """Clusters against a per-Gaussian ground-truth object id.

    Args:
        labels: [N] cluster labels (-1 counts as its own label).
        truth: [N] ground-truth ids (0: background, 1..: objects).
        considered: [N] boolean, the Gaussians scored (e.g. the opaque ones); None: all.

    Returns:
        `ari` (adjusted Rand index), `object_iou` {truth id: IoU of the best-matching cluster, as
        sets of Gaussians} for ids >= 1, and `mean_object_iou`.
    """
    from sklearn.metrics import adjusted_rand_score

    labels, truth = np.asarray(labels), np.asarray(truth)
    if considered is not None:
        labels, truth = labels[considered], truth[considered]
    object_iou = {}
    for obj in np.unique(truth[truth > 0]):
        in_obj = truth == obj
        object_iou[int(obj)] = max(set_iou(in_obj, labels == k) for k in np.unique(labels[in_obj]))
    return {"ari": float(adjusted_rand_score(truth, labels)), "object_iou": object_iou,
            "mean_object_iou": float(np.mean(list(object_iou.values()))) if object_iou else float("nan")}


def scores_3d(object_truth, scene, params: dict, labels: np.ndarray, selections: dict[str, np.ndarray],
              considered: np.ndarray) -> dict:
    """Clusters and per-prompt 3D selections against a scene's 3D ground truth.

    Args:
        object_truth: The scene's `Scene.object_truth` ((scene, points) -> (ids, {id: prompt})).
        scene: The calibrated scene (its frame is the Gaussians').
        params: Trained parameters (`means` are scored).
        labels: [N] cluster labels; selections: prompt -> [N] boolean selection.
        considered: [N] boolean, the Gaussians scored (opaque enough).

    Returns:
        ari, mean_object_iou, object_iou (by prompt), selection_iou (by prompt), mean_selection_iou.
    """
    truth, names = object_truth(scene, params["means"].detach().cpu().numpy())
    scores = scores_against_truth(labels, truth, considered)
    ids = {name: k for k, name in names.items()}
    selection_iou = {prompt: set_iou((truth == ids[prompt]) & considered, keep & considered)
                     for prompt, keep in selections.items() if prompt in ids}
    return {"ari": scores["ari"], "mean_object_iou": scores["mean_object_iou"],
            "object_iou": {names[k]: v for k, v in scores["object_iou"].items()},
            "selection_iou": selection_iou,
            "mean_selection_iou": float(np.mean(list(selection_iou.values()))) if selection_iou else None}
