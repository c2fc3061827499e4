"""Metrics on hand-computed cases, protocol averaging, queries, and the click-protocol evaluator."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from cgc_core.config import EvaluateConfig, QueryConfig, SamConfig
from cgc_core.metrics import (
    MaskScore, MissingPredictionError, average_scores, boundary_distance, boundary_iou, iou, mask_boundary,
    ovs3d_view_miou, resize_nearest, score_pair, selection_errors,
)
from cgc_core.models import BoxSegmenter, ModelLoadError, TextDetector
from cgc_core.query import deepest_pixel, mask_query, similarity_maps
from cgc_core.selection import Selector


def _square(shape, top, left, size):
    m = np.zeros(shape, bool)
    m[top:top + size, left:left + size] = True
    return m


def test_iou_of_overlapping_squares_by_hand():
    a = _square((10, 10), 0, 0, 4)  # 16 px
    b = _square((10, 10), 2, 2, 4)  # 16 px, overlap 2x2 = 4
    assert iou(a, b) == pytest.approx(4 / 28)
    assert iou(a, a) == 1.0 and iou(a, np.zeros_like(a)) == 0.0


def test_empty_union_is_nan_left_out_of_the_mean_and_counted():
    empty = np.zeros((4, 4), bool)
    assert iou(empty, empty) is None and boundary_iou(empty, empty) is None  # the reference script's NaN
    assert iou(empty, empty, empty_union="one") == 1.0
    with pytest.raises(ValueError, match="empty_union"):
        iou(empty, empty, empty_union="skip")
    # one prompt in three views: IoU 1/2, an empty union, IoU 1 -> mean (1/2 + 1) / 2 = 0.75, one
    # empty-union view counted; scored as 1 it would be (1/2 + 1 + 1) / 3.
    half_gt, half_pred = _square((4, 4), 0, 0, 2), _square((4, 4), 0, 0, 2) | _square((4, 4), 2, 2, 2)
    full = np.ones((4, 4), bool)
    pairs = [(half_pred, half_gt, "v0"), (empty, empty, "v1"), (full, full, "v2")]
    nan_rule = [score_pair(p, g, "s", v, "apple") for p, g, v in pairs]
    assert [s.empty_union for s in nan_rule] == [False, True, False]
    averaged = average_scores(nan_rule)
    assert averaged["miou"] == pytest.approx(0.75)
    assert averaged["scenes"]["s"]["prompts"]["apple"]["views"] == 2
    assert averaged["empty_union_views"] == 1
    one_rule = average_scores([score_pair(p, g, "s", v, "apple", empty_union="one") for p, g, v in pairs])
    assert one_rule["miou"] == pytest.approx((0.5 + 1 + 1) / 3) and one_rule["empty_union_views"] == 0


def test_boundary_of_a_square_and_edge_touching_masks_by_hand():
    # 100x100 image: d = round(0.02 * 141.4) = 3. A 20x20 square's boundary is the 3-pixel band.
    assert boundary_distance((100, 100)) == 3
    square = _square((100, 100), 40, 40, 20)
    band = mask_boundary(square, 3)
    assert band.sum() == 20 * 20 - 14 * 14
    # a mask touching the image edge: the edge counts as boundary (1-pixel zero padding)
    full = np.ones((100, 100), bool)
    assert mask_boundary(full, 3).sum() == 100 * 100 - 94 * 94
    # small images still erode once: d = max(1, round(0.02 * diag))
    assert boundary_distance((10, 10)) == 1


def test_boundary_iou_of_ring_vs_disk():
    yy, xx = np.mgrid[:64, :64]
    r = np.hypot(yy - 32, xx - 32)
    disk = r <= 20
    ring = (r <= 20) & (r >= 12)  # same outer boundary, plus an inner one
    d = boundary_distance((64, 64))
    b_disk, b_ring = mask_boundary(disk, d), mask_boundary(ring, d)
    expected = (b_disk & b_ring).sum() / (b_disk | b_ring).sum()
    assert boundary_iou(ring, disk) == pytest.approx(expected)
    assert 0.3 < boundary_iou(ring, disk) < 0.8  # the outer bands agree, the inner band does not
    assert iou(ring, disk) == pytest.approx(ring.sum() / disk.sum())


def test_prediction_of_another_size_is_resized_nearest():
    gt = _square((40, 60), 10, 20, 10)
    small = resize_nearest(gt, (20, 30))
    assert small.sum() == 25
    score = score_pair(small, gt, "s", "v", "p")
    assert score.iou == 1.0 and score.biou == 1.0
    with pytest.raises(ValueError, match="shapes differ"):
        iou(small, gt)


def test_averaging_order_on_a_known_table():
    rows = [
        MaskScore("A", "v1", "x", 1.0, 0.5), MaskScore("A", "v2", "x", 0.0, 0.5),  # prompt x: 0.5 / 0.5
        MaskScore("A", "v1", "y", 1.0, 1.0),  # prompt y: 1.0 / 1.0 -> scene A: 0.75 / 0.75
        MaskScore("B", "v1", "z", 0.2, 0.1),  # scene B: 0.2 / 0.1
    ]
    avg = average_scores(rows)
    assert avg["scenes"]["A"]["prompts"]["x"] == {"iou": 0.5, "biou": 0.5, "views": 2, "precision": None,
                                                  "recall": None, "false_positives": {}}
    assert avg["scenes"]["A"]["miou"] == pytest.approx(0.75)
    assert avg["miou"] == pytest.approx((0.75 + 0.2) / 2)  # plain mean of scenes, not of rows (0.55)
    assert avg["mbiou"] == pytest.approx((0.75 + 0.1) / 2)


def test_precision_recall_and_where_the_false_positives_lie():
    gt, other = np.zeros((10, 10), bool), np.zeros((10, 10), bool)
    gt[:4, :4] = True  # 16 pixels
    other[:4, 6:] = True  # another prompt's object beside it
    pred = np.zeros((10, 10), bool)
    pred[:4, :2] = True  # 8 inside the truth
    pred[:4, 6:9] = True  # 12 on the other object
    pred[9, :4] = True  # 4 on the background
    errors = selection_errors(pred, gt, {"mug": other})
    assert errors == {"precision": 8 / 24, "recall": 0.5, "false_positives": {"mug": 12, "background": 4}}
    assert selection_errors(np.zeros_like(gt), gt)["precision"] is None
    # a prompt's false positives add up over its views, as shares of all of them
    score = score_pair(pred, gt, "s", "v1", "cube", others={"mug": other})
    again = score_pair(pred & ~other, gt, "s", "v2", "cube", others={"mug": other})
    prompt = average_scores([score, again])["scenes"]["s"]["prompts"]["cube"]
    assert prompt["false_positives"] == {"mug": 12 / 20, "background": 8 / 20}
    assert prompt["precision"] == pytest.approx((8 / 24 + 8 / 12) / 2) and prompt["recall"] == 0.5


def test_missing_prediction_is_an_error_or_a_loud_zero():
    gt = _square((8, 8), 0, 0, 3)
    with pytest.raises(MissingPredictionError, match="s/v/p: no prediction"):
        score_pair(None, gt, "s", "v", "p")
    with pytest.warns(UserWarning, match="counted as IoU 0"):
        score = score_pair(None, gt, "s", "v", "p", missing_as_zero=True)
    assert score.iou == 0.0 and score.missing


def test_ovs3d_protocol_argmax_and_per_class_jaccard():
    gt = np.array([[0, 0, 1, 1], [0, 0, 1, 1]])
    scores = np.zeros((2, 2, 4))
    scores[0, :, :3] = 1.0  # class 0 wins columns 0-2: class 0 IoU 4/6, class 1 IoU 2/4
    scores[1, :, 3] = 1.0
    assert ovs3d_view_miou(scores, gt, 2) == pytest.approx((4 / 6 + 2 / 4) / 2)


def _piecewise_feature_map():
    """A 3-region feature map: left half, top-right, bottom-right, each one constant feature."""
    fmap = torch.zeros(20, 30, 4)
    fmap[:, :15] = torch.tensor([1.0, 0.2, 0, 0])
    fmap[:10, 15:] = torch.tensor([0, 1.0, 0.1, 0])
    fmap[10:, 15:] = torch.tensor([0, 0, 0.3, 1.0])
    return fmap


def test_click_selects_exactly_one_region_and_nothing_above_one():
    fmap = _piecewise_feature_map()
    selector = Selector()
    mask = selector.union_mask(fmap, [selector.click(fmap, [(3, 20)])])
    expected = torch.zeros(20, 30, dtype=torch.bool)
    expected[:10, 15:] = True
    assert torch.equal(mask, expected)
    assert not Selector(threshold=1.0001).masks(fmap, [fmap[3, 20]]).any()
    # two clicks in different regions: the union of their selections holds both
    union = selector.union_mask(fmap, [selector.click(fmap, [(3, 20)]), selector.click(fmap, [(15, 20)])])
    assert union[:, 15:].all() and not union[:, :15].any()
    sims = similarity_maps(fmap, torch.stack([fmap[0, 0], fmap[19, 29]]))
    assert sims.shape == (2, 20, 30) and torch.allclose(sims[0, 0, 0], torch.tensor(1.0))


def test_a_click_radius_reads_the_window_around_the_click_and_rescues_an_off_pixel():
    # A thin object (a 3-pixel-wide stripe) whose one clicked pixel carries an off feature (one
    # Gaussian dominating it): that pixel alone selects only itself; its 3 x 3 window reads the
    # stripe's feature and selects the whole stripe (but for the off pixel) and nothing else.
    g = torch.Generator().manual_seed(0)
    stripe, background = torch.nn.functional.normalize(torch.randn(2, 16, generator=g), dim=-1)
    off = torch.nn.functional.normalize(0.6 * stripe + torch.randn(16, generator=g) * 0.5, dim=0)
    fmap = background.repeat(12, 12, 1)
    fmap[:, 4:7] = stripe
    fmap[6, 5] = off
    assert float(off @ stripe) < 0.7
    pixel = Selector()
    window = Selector(click_radius=1)
    assert pixel.masks(fmap, [pixel.click(fmap, [(6, 5)])])[0].sum() == 1
    selected = window.masks(fmap, [window.click(fmap, [(6, 5)])])[0]
    expected = torch.zeros(12, 12, dtype=torch.bool)
    expected[:, 4:7] = True
    expected[6, 5] = False
    assert torch.equal(selected, expected)
    # The window is the mean of the unit features it covers, clipped at the map's corner.
    corner = Selector(click_radius=2).click(fmap, [(0, 0)]).feature
    torch.testing.assert_close(corner, torch.nn.functional.normalize(
        torch.nn.functional.normalize(fmap[:3, :3], dim=-1).reshape(-1, 16).mean(0), dim=0))
    assert Selector(click_radius=0).click(fmap, [(6, 5)]).pixel == (6, 5)
    with pytest.raises(ValueError, match="click_radius"):
        Selector(click_radius=-1)


def test_deepest_pixel_and_mask_query():
    mask = np.zeros((9, 9), bool)
    mask[1:8, 1:8] = True
    assert deepest_pixel(mask) == (4, 4)
    edge = np.zeros((5, 9), bool)
    edge[:, :5] = True  # touches the image edge: the edge counts as boundary
    assert deepest_pixel(edge) == (2, 2)
    fmap = _piecewise_feature_map()
    region = np.zeros((20, 30), bool)
    region[12:18, 18:25] = True
    q = mask_query(fmap, region)
    assert torch.allclose(q, torch.nn.functional.normalize(fmap[15, 20], dim=0))
    with pytest.raises(ValueError, match="empty"):
        deepest_pixel(np.zeros((3, 3), bool))


def test_text_query_without_weights_names_the_missing_file(tmp_path):
    fmap = _piecewise_feature_map()
    image = np.zeros((20, 30, 3), np.uint8)
    detector = TextDetector(QueryConfig())
    with pytest.raises(ModelLoadError, match="query.gdino_checkpoint is not set"):
        Selector(detector=detector, segmenter=BoxSegmenter(SamConfig())).text(fmap, image, "red apple")
    missing = tmp_path / "groundingdino_swint_ogc.pth"
    with pytest.raises(ModelLoadError, match="groundingdino_swint_ogc.pth: Grounding DINO checkpoint file not found"):
        TextDetector(QueryConfig(gdino_checkpoint=str(missing))).model()
    with pytest.raises(ModelLoadError, match="box/text queries need SAM: query.sam.checkpoint is not set"):
        BoxSegmenter(SamConfig(model_type="vit_b")).predictor()
    # clicks still work without any weights
    assert Selector().union_mask(fmap, [Selector().click(fmap, [(0, 0)])]).sum() == 20 * 15


def _local_bert(folder):
    """A small BERT (config + vocabulary) saved locally, as Grounding DINO's text encoder."""
    from transformers import BertConfig, BertModel, BertTokenizer

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", "?", "red", "sphere", "blue", "box"]
    vocab = folder / "vocab.txt"
    folder.mkdir()
    vocab.write_text("\n".join(words) + "\n")
    BertTokenizer(str(vocab)).save_pretrained(folder)
    config = BertConfig(vocab_size=len(words), hidden_size=768, num_hidden_layers=1, num_attention_heads=4,
                        intermediate_size=256)
    BertModel(config).save_pretrained(folder)
    return folder


def test_grounding_dino_and_sam_load_with_random_weights_and_run(tmp_path):
    pytest.importorskip("groundingdino", reason="the optional gdino extra is not installed")
    torch.manual_seed(0)
    bert = _local_bert(tmp_path / "bert")
    cfg = QueryConfig(allow_random_weights=True, text_encoder=str(bert), device="cpu", gdino_image_size=256,
                      box_threshold=0.0, text_threshold=0.0)
    detector = TextDetector(cfg)
    image = (np.random.default_rng(0).random((96, 128, 3)) * 255).astype(np.uint8)
    found = detector(image, "red sphere .")
    assert found is not None  # thresholds 0: random weights still return a box
    box, score = found
    assert len(box) == 4 and 0.0 <= score <= 1.0
    segmenter = BoxSegmenter(SamConfig(model_type="vit_b", allow_random_weights=True, device="cpu"))
    mask = segmenter(image, [10, 10, 60, 50])
    assert mask.shape == (96, 128) and mask.dtype == bool


def test_click_oracle_evaluation_on_the_synthetic_scene(tiny_scene_dir, tmp_path):
    from cgc_core.evaluate import evaluate_scene, prediction_path, score_predictions
    from cgc_core.scene import load_scene
    from cgc_core.selection import Selector

    scene = load_scene(tiny_scene_dir, name="tiny")
    meta = json.loads((tiny_scene_dir / "ground_truth" / "scene.json").read_text())
    n_ids = len(meta["objects"]) + 1

    def instance_features(view):  # piecewise-constant features: one per object, from the ground truth
        ids = np.asarray(Image.open(tiny_scene_dir / "ground_truth" / f"instance_{view}"))
        return torch.nn.functional.one_hot(torch.as_tensor(ids, dtype=torch.long), n_ids).float()

    table, results = evaluate_scene(scene, instance_features, tmp_path, EvaluateConfig(), Selector(threshold=0.7))
    assert list(results) == ["click-oracle"]  # `auto` on a synthetic scene
    averages = results["click-oracle"]
    assert len(table) == sum(len(m) for m in scene.gt_masks.values())
    assert set(table["protocol"]) == {"click-oracle"} and table["detected"].all()
    assert averages["miou"] == 1.0 and averages["mbiou"] == 1.0
    assert (tmp_path / "results.parquet").is_file()
    first_view = scene.test_names[0]
    prompt = sorted(scene.gt_masks[first_view])[0]
    written = prediction_path(tmp_path / "predictions" / "click-oracle", scene, first_view, prompt)
    assert written == tmp_path / "predictions" / "click-oracle" / "tiny" / "0" / f"{prompt}.png"

    # a feature map that merges two objects scores below 1 for them
    def merged(view):
        f = instance_features(view)
        f[..., 1] += f[..., 2]
        f[..., 2] = f[..., 1]
        return f

    _, worse = evaluate_scene(scene, merged, tmp_path / "merged", EvaluateConfig(), Selector(threshold=0.7))
    assert worse["click-oracle"]["miou"] < 1.0

    # a deleted prediction is reported, not skipped
    written.unlink()
    with pytest.raises(MissingPredictionError, match=f"{prompt}.png: missing prediction"):
        score_predictions(scene, tmp_path / "predictions" / "click-oracle", EvaluateConfig())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scores = score_predictions(scene, tmp_path / "predictions" / "click-oracle", EvaluateConfig(missing_as_zero=True))
    assert sum(s.missing for s in scores) == 1

