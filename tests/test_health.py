"""The feature-separation measure and the collapse warning: the measure equals its loop oracle,
has the values its definition gives on hand-made fields, and training warns on features that do
not separate while staying silent on a trained model."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from cgc_core.health import collapse_warning, feature_separation, feature_separation_reference, mean_separation


def _labels(h=24, w=30, k=3):
    labels = torch.zeros(h, w, dtype=torch.int64)
    for s in range(k):
        labels[:, s * (w // k):(s + 1) * (w // k)] = s + 1
    labels[:2] = 0  # an unlabelled band
    return labels


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_vectorised_measure_equals_the_loop_oracle(seed):
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(20, 26, 16, generator=g)
    labels = torch.randint(0, 5, (20, 26), generator=g)
    labels[labels == 4] = 9  # ids need not be contiguous
    fast = feature_separation(features, labels, min_pixels=20, threshold=0.1)
    slow = feature_separation_reference(features, labels, min_pixels=20, threshold=0.1)
    assert fast.segments == slow.segments >= 2
    for key in ("within", "between", "confusable"):
        assert getattr(fast, key) == pytest.approx(getattr(slow, key), abs=1e-9)


def test_orthogonal_segment_features_are_separated_and_one_shared_feature_is_collapsed():
    labels = _labels()
    separated = torch.zeros(24, 30, 16)
    for s in range(3):
        separated[labels == s + 1, s] = 2.0 + s  # one axis per segment, any norm
    good = feature_separation(separated, labels, min_pixels=10)
    assert (good.within, good.between, good.confusable, good.segments) == (pytest.approx(1.0), pytest.approx(0.0), 0.0, 3)
    assert good.separation == pytest.approx(1.0)
    assert collapse_warning(good, "scene", 1) is None

    same = torch.ones(24, 30, 16)
    bad = feature_separation(same, labels, min_pixels=10)
    assert bad.between == pytest.approx(1.0) and bad.confusable == 1.0 and bad.separation == pytest.approx(0.0)
    message = collapse_warning(bad, "tabletop", 8)
    assert message.startswith("tabletop: the feature field has collapsed: over 8 training views")
    assert "mean cosine between the mean features of different mask segments is 1.00" in message
    assert "100% of segment pairs are at or above the selection threshold 0.7" in message


def test_fewer_than_two_segments_measure_nothing():
    labels = torch.zeros(10, 10, dtype=torch.int64)
    labels[:5] = 1
    assert feature_separation(torch.randn(10, 10, 4), labels, min_pixels=10) is None
    assert mean_separation([None, None]) is None and collapse_warning(None, "s", 0) is None


def test_half_separated_field_is_measured_in_between():
    labels = _labels(k=2)
    features = torch.zeros(24, 30, 2)
    features[labels == 1] = torch.tensor([1.0, 0.0])
    features[labels == 2] = torch.tensor([0.6, 0.8])  # cosine 0.6 to segment 1
    measure = feature_separation(features, labels, min_pixels=10)
    assert measure.between == pytest.approx(0.6) and measure.confusable == 0.0
    assert collapse_warning(measure, "s", 1, collapse_between=0.5) is not None
    assert collapse_warning(measure, "s", 1, collapse_between=0.65) is None


def test_training_without_the_contrastive_loss_warns_that_features_collapsed(tiny_inputs, tmp_path, caplog):
    from cgc_core.config import TrainConfig, evolve
    from cgc_core.train import train

    scene, store = tiny_inputs
    cfg = evolve(TrainConfig(), iterations=60, contrastive={"enabled": False}, regularizer={"enabled": False}, backend="torch",
                 health={"every": 20, "views": 4})
    with caplog.at_level(logging.WARNING, logger="cgc"):
        train(scene, store, tmp_path, cfg)
    record = json.loads((tmp_path / "train.json").read_text())["health"]
    assert [h["step"] for h in record["history"]] == [1, 21, 41, 60]  # iterations 0, 20, 40 and the last
    assert {"photometric", "n", "within", "between", "confusable", "separation"} <= set(record["history"][-1])
    assert record["views"] == 4 and record["final"]["between"] > 0.9  # U[0,1) features all point one way
    assert "the feature field has collapsed" in record["warning"]
    assert any("the feature field has collapsed" in r.getMessage() for r in caplog.records)


def test_a_trained_model_separates_and_gives_no_warning(tiny_inputs, tmp_path, caplog):
    from cgc_core.config import TrainConfig, evolve
    from cgc_core.train import train

    scene, store = tiny_inputs
    cfg = evolve(TrainConfig(), iterations=800, backend="torch", health={"views": 6})  # measured: between 0.33, separation 0.58
    with caplog.at_level(logging.WARNING, logger="cgc"):
        train(scene, store, tmp_path, cfg)
    record = json.loads((tmp_path / "train.json").read_text())["health"]
    assert record["warning"] is None, record["final"]
    assert record["final"]["between"] < 0.45 and record["final"]["separation"] > 0.45, record["final"]
    first, last = record["history"][0], record["history"][-1]
    assert first["between"] > 0.9 and last["between"] < first["between"] - 0.4  # it separated while training
    assert "cc" in record["history"][-1] and "reg" in record["history"][-1]
    assert record["history"][1]["grad_cc"] > 0 and record["history"][1]["grad_reg"] > 0  # both terms reach the features
    assert not any("collapsed" in r.getMessage() for r in caplog.records)
