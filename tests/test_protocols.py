"""The evaluation protocols: box -> SAM -> query -> threshold on a hand-made feature map, undetected
prompts, 3D-OVS's argmax metric by hand, the weights check before any stage, and every protocol
end to end through the flow on a LERF-Mask-layout fixture with randomly initialised models."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from cgc_core.config import EvaluateConfig, SamConfig, load_config
from cgc_core.evaluate import (
    EvaluationSetupError, check_protocol_weights, evaluate_scene, ovs_average, predict_argmax, resolve_protocols,
    score_predictions,
)
from cgc_core.metrics import ovs3d_view_miou
from cgc_core.models import BoxSegmenter
from cgc_core.scene.model import Scene
from cgc_core.selection import Query, Selector

SAM_SMALL = SamConfig(model_type="vit_b", allow_random_weights=True, device="cpu", image_size=256)


class FixedBoxDetector:
    """Stands in for Grounding DINO only: a fixed box (or nothing) per prompt; records its calls."""

    def __init__(self, boxes: dict[str, list[float] | None], score: float = 0.8):
        self.boxes, self.score, self.calls = boxes, score, []

    def __call__(self, image, text):
        self.calls.append((image.shape, text))
        box = self.boxes.get(text)
        return None if box is None else (list(box), self.score)


class RecordingSegmenter:
    """The real SAM predictor (random ViT-B weights), recording each box it is given and the mask it returned."""

    def __init__(self):
        self.sam = BoxSegmenter(SAM_SMALL)
        self.calls = []

    def __call__(self, image, box):
        mask = self.sam(image, box)
        self.calls.append((list(box), mask))
        return mask


def test_box_sam_query_threshold_selects_exactly_the_expected_pixels():
    torch.manual_seed(0)
    # A 40x60 feature map; the image the detector and SAM see is twice that size (80x120).
    a, b, c = torch.eye(4)[0], torch.eye(4)[1], F.normalize(torch.tensor([1.0, 1.2, 0.0, 0.0]), dim=0)  # cos 0.64 to a
    fmap = b.repeat(40, 60, 1)
    fmap[10:20, 20:40] = a            # the object
    fmap[25:30, 5:15] = c * 3.0       # a region half-way between (unnormalised on purpose)
    image = np.zeros((80, 120, 3), np.uint8)
    image[20:40, 40:80] = 220         # the object, as the photo shows it
    detector = FixedBoxDetector({"red box": [40.0, 20.0, 80.0, 40.0]})
    segmenter = RecordingSegmenter()
    selector = Selector(threshold=0.7, detector=detector, segmenter=segmenter)

    query = selector.text(fmap, image, "red box", view="v")
    assert detector.calls == [((80, 120, 3), "red box")]
    (box, sam_mask), = segmenter.calls
    assert box == [40.0, 20.0, 80.0, 40.0] and sam_mask.shape == (80, 120)  # the detector's box, unchanged
    assert query.detected and query.box == box and query.score == 0.8 and query.mask_area == int(sam_mask.sum())

    # Expected, by hand: SAM's mask at the feature map's size (nearest, sampled at pixel centres:
    # source pixel floor((i + 0.5) * 2) = 2i + 1), the mean of the unit features inside it,
    # normalised; then cosine >= 0.7 per pixel.
    small = sam_mask[1::2, 1::2]
    unit = fmap / fmap.norm(dim=-1, keepdim=True)
    inside = [unit[r, col] for r in range(40) for col in range(60) if small[r, col]]
    q = sum(inside) / len(inside)
    q = q / q.norm()
    expected = torch.tensor([[float(unit[r, col] @ q) >= 0.7 for col in range(60)] for r in range(40)])
    selected = selector.masks(fmap, [query])[0]
    assert torch.equal(selected, expected)
    assert torch.allclose(query.feature, q, atol=1e-6)

    # With a segmenter that returns the box itself, the same path selects exactly the object.
    exact = Selector(threshold=0.7, detector=detector, segmenter=lambda img, bx: _box_mask(img.shape[:2], bx))
    object_pixels = torch.zeros(40, 60, dtype=torch.bool)
    object_pixels[10:20, 20:40] = True
    assert torch.equal(exact.masks(fmap, [exact.text(fmap, image, "red box")])[0], object_pixels)


def _box_mask(shape, box):
    mask = np.zeros(shape, bool)
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    mask[y0:y1, x0:x1] = True
    return mask


def test_undetected_prompt_predicts_nothing_is_counted_and_flagged(tiny_scene_dir, tmp_path):
    from cgc_core.scene import load_scene

    scene = load_scene(tiny_scene_dir, name="tiny")
    ids_of = {}

    def instance_features(view):
        if view not in ids_of:
            ids_of[view] = np.array(Image.open(tiny_scene_dir / "ground_truth" / f"instance_{view}"))
        return F.one_hot(torch.as_tensor(ids_of[view], dtype=torch.long), 16).float()

    prompts = sorted({p for masks in scene.gt_masks.values() for p in masks})
    missing = prompts[0]
    # every other prompt: the box of its ground truth in its grounding view (the detector double)
    from cgc_core.evaluate import grounding_view

    boxes = {}
    for p in prompts[1:]:
        rows, cols = np.nonzero(scene.load_gt_mask(grounding_view(scene, p), p))
        boxes[p] = [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]
    boxes[missing] = None
    selector = Selector(threshold=0.7, detector=FixedBoxDetector(boxes),
                        segmenter=lambda img, bx: _box_mask(img.shape[:2], bx))
    table, results = evaluate_scene(scene, instance_features, tmp_path, EvaluateConfig(protocol="text"), selector)
    assert len(table) == sum(len(m) for m in scene.gt_masks.values())  # one row per (view, prompt): none skipped
    assert results["text"]["not_detected"] == [missing]
    lost = table[table["prompt"] == missing]
    assert not lost["detected"].any() and lost["box_x0"].isna().all()
    gt_present = lost[lost["empty_union"] == False]  # noqa: E712
    assert len(gt_present) and (gt_present["iou"] == 0.0).all()
    found = table[table["prompt"] != missing]
    assert found["detected"].all() and found["detection_score"].eq(0.8).all() and found["sam_mask_area"].gt(0).all()
    assert results["text"]["scenes"]["tiny"]["prompts"][missing]["iou"] == 0.0
    assert results["text"]["miou"] < np.mean([v["iou"] for p, v in results["text"]["scenes"]["tiny"]["prompts"].items()
                                              if p != missing])  # the miss counts in the mean


def _mini_scene(tmp_path, masks: dict[str, dict[str, np.ndarray]]) -> Scene:
    """A Scene of hand-drawn ground-truth masks (view -> class -> mask)."""
    gt = {}
    for i, (view, per_class) in enumerate(masks.items()):
        folder = tmp_path / "gt" / str(i)
        folder.mkdir(parents=True)
        gt[view] = {}
        for name, mask in per_class.items():
            Image.fromarray(mask.astype(np.uint8) * 255).save(folder / f"{name}.png")
            gt[view][name] = folder / f"{name}.png"
    return Scene(name="mini", root=tmp_path, image_dir=tmp_path, image_names=list(masks), test_names=list(masks),
                 prompts=["apple", "bag"], gt_masks=gt, layout="ovs3d")


def test_ovs_argmax_by_hand(tmp_path):
    left = np.zeros((4, 4), bool)
    left[:, :2] = True
    scene = _mini_scene(tmp_path, {"v0": {"apple": left, "bag": ~left}, "v1": {"apple": np.ones((4, 4), bool)}})
    a, b = torch.eye(2)
    maps = {"v0": a.repeat(4, 4, 1), "v1": a.repeat(4, 4, 1)}
    maps["v0"][:, 3] = b                                       # v0: apple wins columns 0-2, bag column 3
    maps["v0"][:, 2] = F.normalize(torch.tensor([1.0, 0.8]), dim=0)  # nearer the apple's query than the bag's
    queries = {"apple": Query(a, "click"), "bag": Query(b, "click")}
    selector = Selector(threshold=0.7)
    predict_argmax(scene, maps.__getitem__, queries, tmp_path / "pred", selector)
    scores = score_predictions(scene, tmp_path / "pred", EvaluateConfig())
    by = {(s.view, s.prompt): s.iou for s in scores}
    assert by[("v0", "apple")] == pytest.approx(8 / 12)  # predicted 12 pixels, 8 of them apple
    assert by[("v0", "bag")] == pytest.approx(4 / 8)
    assert by[("v1", "apple")] == 1.0
    averaged = ovs_average(scores, "mini")
    # per view over classes, then over views: ((2/3 + 1/2) / 2 + 1) / 2 = 19/24 (per class first: 2/3)
    assert averaged["miou"] == pytest.approx(19 / 24)
    # the same number as metrics.ovs3d_view_miou on score maps and label maps
    labels = np.where(left, 0, 1)
    sims = torch.stack([F.normalize(maps["v0"], dim=-1) @ q.feature for q in queries.values()]).numpy()
    assert ovs3d_view_miou(sims, labels, 2) == pytest.approx((2 / 3 + 1 / 2) / 2)


def test_auto_protocol_and_missing_weights_are_named_before_anything_runs(tiny_scene_dir, tmp_path):
    from cgc_core.scene import load_scene

    assert resolve_protocols("auto", "lerf_mask") == ["text"]
    assert resolve_protocols("auto", "ovs3d") == ["text"]
    assert resolve_protocols("auto", "synthetic") == ["click-oracle"]
    assert resolve_protocols(["click-oracle", "auto", "ovs-argmax"], "synthetic") == ["click-oracle", "ovs-argmax"]
    scene = load_scene(tiny_scene_dir, name="tiny")
    scene.layout = "lerf_mask"  # as a LERF-Mask scene: auto means the text protocol
    with pytest.raises(EvaluationSetupError) as info:
        check_protocol_weights(load_config(None, []), scene)
    message = str(info.value)
    assert "query.sam.checkpoint is not set" in message and "query.gdino_checkpoint is not set" in message
    assert "click-oracle needs no weights" in message
    missing = tmp_path / "sam_vit_h_4b8939.pth"
    with pytest.raises(EvaluationSetupError, match=r"sam_vit_h_4b8939.pth: SAM checkpoint file not found "
                                                   r"\(query.sam.checkpoint, needed by protocol box-oracle\)"):
        check_protocol_weights(load_config(None, ["evaluate.protocol=box-oracle", f"query.sam.checkpoint={missing}"]),
                               scene)
    assert check_protocol_weights(load_config(None, ["evaluate.protocol=click-oracle"]), scene) == ["click-oracle"]


def test_grounding_dino_checkpoint_with_wrong_keys_is_an_error_listing_them(tmp_path):
    pytest.importorskip("groundingdino", reason="the optional gdino extra is not installed")
    from cgc_core.fixtures import write_local_bert
    from cgc_core.models import ModelLoadError, TextDetector

    bert = write_local_bert(tmp_path / "bert", ["apple"])
    path = tmp_path / "groundingdino_swint_ogc.pth"
    torch.save({"model": {"module.not_a_layer.weight": torch.zeros(1)}}, path)
    cfg = load_config(None, [f"query.gdino_checkpoint={path}", f"query.text_encoder={bert}", "query.device=cpu"])
    with pytest.raises(ModelLoadError, match=r"groundingdino_swint_ogc.pth: does not fit .*missing keys: .*"
                                             r"unexpected keys: not_a_layer.weight"):
        TextDetector(cfg.query).model()


def test_every_protocol_through_the_flow_on_a_lerf_mask_fixture(tmp_path, prefect_harness):
    pytest.importorskip("groundingdino", reason="the optional gdino extra is not installed")
    from cgc_core.fixtures import random_model_overrides, write_lerf_mask_fixture, write_local_bert
    from cgc_core.scene import load_scene
    from flows.benchmark import cgc_benchmark

    torch.manual_seed(0)
    fixture = write_lerf_mask_fixture(tmp_path / "lerf_tiny")
    scene = load_scene(fixture)
    assert scene.layout == "lerf_mask"
    words = sorted({w for p in scene.prompts for w in p.split()})
    bert = write_local_bert(tmp_path / "bert", words)
    overrides = [f"data_dir={tmp_path / 'data'}", f"reports_dir={tmp_path / 'reports'}", "calibrate.mode=known_poses",
                 "masks.generator=classical", "train.iterations=20", "train.densify.refine_start_iter=5", "train.densify.refine_every=5",
                 "cluster.min_cluster_size=20", "stage.retry_delay_seconds=0",
                 "evaluate.protocol=[text, box-oracle, click-oracle, ovs-argmax]", *random_model_overrides(bert)]
    run = cgc_benchmark([str(fixture)], overrides=overrides)
    evaluate_dir = run["scenes"][0]["stages"]["evaluate"]["dir"]
    table = pd.read_parquet(f"{evaluate_dir}/results.parquet")
    pairs = sum(len(m) for m in scene.gt_masks.values())
    assert table.groupby("protocol").size().to_dict() == {p: pairs for p in
                                                          ("text", "box-oracle", "click-oracle", "ovs-argmax")}
    text = table[table["protocol"] == "text"]
    assert text["detected"].all()  # thresholds 0: random weights still return a box
    assert text[["box_x0", "box_y0", "box_x1", "box_y1", "detection_score", "sam_mask_area"]].notna().all().all()
    assert text["grounding_view"].notna().all()
    box = table[table["protocol"] == "box-oracle"]
    assert box[["box_x0", "sam_mask_area"]].notna().all().all() and box["detection_score"].isna().all()
    report = (tmp_path / "reports").glob("run-*/report.md")
    md = next(report).read_text()
    assert "`text`" in md and "`box-oracle`" in md and "upper bound" in md


def test_missing_weights_stop_the_flow_before_calibration(tmp_path, prefect_harness, tiny_scene_dir):
    import shutil

    from flows.benchmark import cgc_benchmark

    lerf = tmp_path / "lerf_tiny"
    shutil.copytree(tiny_scene_dir, lerf)
    shutil.rmtree(lerf / "ground_truth")  # a plain LERF-Mask folder: `auto` is the text protocol
    overrides = [f"data_dir={tmp_path / 'data'}", f"reports_dir={tmp_path / 'reports'}", "stage.retries=0"]
    with pytest.raises(EvaluationSetupError, match="query.gdino_checkpoint is not set.*click-oracle needs no weights"):
        cgc_benchmark([str(lerf)], overrides=overrides)
    scene_data = tmp_path / "data" / "lerf_tiny"
    assert not any((scene_data / stage).exists() for stage in ("calibrate", "masks", "train"))
