"""Granularity (issue 19): mask levels by nesting, the multi-level contrastive loss on nested
feature channels, selection at a level; and the training presets."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cgc_core.config import PRESETS, ConfigError, TrainConfig, evolve, load_config, to_dict
from cgc_core.losses import (contrastive_clustering_loss, multilevel_contrastive_loss,
                             multilevel_contrastive_loss_reference)
from cgc_core.masks.store import MaskStore, records_from_masks
from cgc_core.selection import Selector
from cgc_core.train import train, uses_regularizer


def _nested_store(tmp_path):
    # rows 0-5: a whole object (mask 0) made of part A (rows 0-2, mask 1) and part B (rows 3-5,
    # mask 2); rows 6-9: background (mask 3), contained in nothing.
    height, width = 10, 8
    masks = np.zeros((4, height, width), bool)
    masks[0, :6] = True
    masks[1, :3] = True
    masks[2, 3:6] = True
    masks[3, 6:] = True
    store = MaskStore(tmp_path)
    store.write_image("x.png", height, width, records_from_masks("x.png", list(masks), "t", "1", "h"))
    return store


def test_label_levels_step_from_parts_to_their_whole(tmp_path):
    store = _nested_store(tmp_path)
    levels = store.read_label_maps("x.png", 3)
    assert levels.shape == (3, 10, 8)
    # Level 0: the finest mask at every pixel (parts A=2, B=3; background 4), = read_label_map.
    np.testing.assert_array_equal(levels[0][:, 0], [2, 2, 2, 3, 3, 3, 4, 4, 4, 4])
    np.testing.assert_array_equal(levels[0], store.read_label_map("x.png"))
    # Level 1: the next enclosing mask, the whole (1); the background has no larger mask and keeps its own.
    np.testing.assert_array_equal(levels[1][:, 0], [1, 1, 1, 1, 1, 1, 4, 4, 4, 4])
    # Beyond the deepest nesting a level repeats the largest mask.
    np.testing.assert_array_equal(levels[2], levels[1])
    with pytest.raises(ValueError, match="levels must be at least 1"):
        store.read_label_maps("x.png", 0)


def test_multilevel_loss_equals_the_loop_reference_and_one_level_is_eq3(tmp_path):
    labels = torch.as_tensor(_nested_store(tmp_path).read_label_maps("x.png", 2).astype(np.int64))
    features = torch.randn(10, 8, 16, generator=torch.Generator().manual_seed(0))
    options = dict(min_pixels=2)
    fast = multilevel_contrastive_loss(features, labels, [16, 8], **options)
    slow = multilevel_contrastive_loss_reference(features, labels, [16, 8], **options)
    torch.testing.assert_close(fast, slow)
    # The coarse level sees only the first 8 channels: changing the others leaves its term alone.
    coarse = multilevel_contrastive_loss(features, labels[1:], [8], **options)
    changed = features.clone()
    changed[..., 8:] = torch.randn(10, 8, 8)
    torch.testing.assert_close(multilevel_contrastive_loss(changed, labels[1:], [8], **options), coarse)
    one = multilevel_contrastive_loss(features, labels[:1], [16], **options)
    torch.testing.assert_close(one, contrastive_clustering_loss(features, labels[0], **options))
    with pytest.raises(ValueError, match="2 label levels but only 1 level_dims"):
        multilevel_contrastive_loss(features, labels, [16], **options)


def test_training_on_two_levels_makes_the_leading_channels_agree_across_parts(tmp_path):
    # Gradient descent on the two-level loss alone: in the leading channels the two parts of the
    # whole move together, in all channels they stay apart; the one-level loss keeps them apart
    # in the leading channels too.
    labels = torch.as_tensor(_nested_store(tmp_path).read_label_maps("x.png", 2).astype(np.int64))
    part_a, part_b = labels[0] == 2, labels[0] == 3

    def trained(levels):
        features = torch.randn(10, 8, 16, generator=torch.Generator().manual_seed(1)).requires_grad_()
        optimizer = torch.optim.Adam([features], lr=0.05)
        for _ in range(150):
            optimizer.zero_grad()
            multilevel_contrastive_loss(features, labels[:levels], [16, 8][:levels], min_pixels=2).backward()
            optimizer.step()
        f = features.detach()

        def cosine(channels):
            a = F.normalize(F.normalize(f[part_a][:, :channels], dim=-1).mean(0), dim=0)
            b = F.normalize(F.normalize(f[part_b][:, :channels], dim=-1).mean(0), dim=0)
            return float(a @ b)

        return cosine(8), cosine(16)

    two_coarse, two_fine = trained(2)
    one_coarse, _ = trained(1)
    assert two_coarse > 0.9, two_coarse
    assert two_fine < 0.7, two_fine
    assert one_coarse < 0.7, one_coarse


def test_a_click_selects_the_part_or_the_whole_by_level():
    # Part A and part B share their first 8 channels (the object level) and differ in the rest.
    common, a_rest, b_rest, other = (F.normalize(torch.randn(8, generator=torch.Generator().manual_seed(s)), dim=0)
                                     for s in range(4))
    fmap = torch.zeros(4, 6, 16)
    fmap[:2, :3] = torch.cat([common, a_rest])
    fmap[:2, 3:] = torch.cat([common, b_rest])
    fmap[2:] = torch.cat([other, other])
    selector = Selector(level_dims=(16, 8), level=1)
    whole = selector.masks(fmap, [selector.click(fmap, [(0, 0)])])[0]
    assert whole[:2].all() and not whole[2:].any()
    part = selector.at_level(0).masks(fmap, [selector.click(fmap, [(0, 0)])])[0]
    assert part[:2, :3].all() and not part[:2, 3:].any() and not part[2:].any()
    assert selector.at_level(5).level == 1 and selector.at_level(-1).level == 0
    with pytest.raises(ValueError, match="level 2 is not a trained level"):
        Selector(level_dims=(16, 8), level=2)


def test_selector_from_config_defaults_to_the_coarsest_level():
    assert Selector.from_config(load_config(None, [])).levels == 1
    cfg = load_config(None, ["train.contrastive.mask_levels=2"])
    selector = Selector.from_config(cfg)
    assert (selector.level_dims, selector.level, selector.channels) == ((16, 8), 1, 8)
    assert Selector.from_config(load_config(None, ["train.contrastive.mask_levels=2", "query.level=0"])).channels == 16
    with pytest.raises(ConfigError, match=r"query.level must be below train.contrastive.mask_levels=2"):
        load_config(None, ["train.contrastive.mask_levels=2", "query.level=2"])
    with pytest.raises(ConfigError, match="train.contrastive.level_dims must be a non-empty decreasing list"):
        load_config(None, ["train.contrastive.level_dims=[8, 8]"])
    with pytest.raises(ConfigError, match="train.contrastive.level_dims must name at least train.contrastive.mask_levels=4"):
        load_config(None, ["train.contrastive.mask_levels=4"])


def test_presets_resolve_by_device_and_a_value_the_user_writes_always_wins(tmp_path):
    assert load_config(None, ["train.backend=torch"]).train.schedule == "cpu-short"
    paper = load_config(None, [], cuda=True).train
    assert paper.schedule == "paper"
    assert (paper.iterations, paper.contrastive.every, paper.regularizer.every, paper.densify.refine_stop_iter,
            paper.densify.grow_grad2d) == (30_000, 50, 100, 15_000, 2e-4)
    # The paper's regulariser and masks as generated; the short CPU schedule's differ (TrainConfig).
    reg = paper.regularizer
    assert (reg.lambda_near, reg.lambda_far, reg.far_similarity, paper.depth_split.at) == (0.05, 0.15, "signed", 0.0)
    # The paper's temperature (no segment-count normalisation); the short schedule's is normalised to 20 segments.
    assert (paper.contrastive.reference_segments, TrainConfig().contrastive.reference_segments) == (None, 20)
    short = load_config(None, [], cuda=False).train
    assert short == replace(TrainConfig(), schedule="cpu-short")
    # The user's value wins even where it equals the default the preset would replace.
    default = TrainConfig().iterations  # read, not written out: the case holds whatever the default becomes
    explicit = load_config(None, ["train.schedule=paper", f"train.iterations={default}"]).train
    assert (explicit.iterations, explicit.contrastive.every) == (default, 50)
    on_cuda = load_config(None, [f"train.iterations={default}", "train.regularizer.lambda_near=0.005"], cuda=True).train
    assert (on_cuda.schedule, on_cuda.iterations, on_cuda.regularizer.lambda_near, on_cuda.regularizer.lambda_far) == \
        ("paper", default, 0.005, 0.15)
    # Preset, then the file, then the overrides.
    (tmp_path / "cfg.yaml").write_text("train:\n  schedule: paper\n  iterations: 2000\n  sh_degree_every: 500\n")
    layered = load_config(tmp_path / "cfg.yaml", ["train.iterations=1200"]).train
    assert (layered.iterations, layered.sh_degree_every, layered.checkpoint_every) == (1200, 500, 5000)
    # Both presets reach SH degree 3 before their last iteration.
    for name in PRESETS:
        cfg = load_config(None, [f"train.schedule={name}"]).train
        assert (cfg.iterations - 1) // cfg.sh_degree_every >= cfg.sh_degree == 3, name


def test_train_json_records_the_preset_and_two_level_training_runs(tiny_inputs, tmp_path):
    scene, store = tiny_inputs
    cfg = load_config(None, ["train.iterations=4", "train.backend=torch", "train.regularizer.samples=50",
                             "train.checkpoint_every=0", "train.densify.strategy=none", "train.contrastive.mask_levels=2",
                             "train.contrastive.every=1", "train.health.every=2"]).train
    train(scene, store, tmp_path, cfg)
    record = json.loads((tmp_path / "train.json").read_text())
    assert record["schedule"] == "cpu-short" and record["config"] == to_dict(cfg)
    assert record["config"]["contrastive"]["every"] == 1
    assert all(h["cc"] > 0 for h in record["health"]["history"])


def test_frozen_geometry_drops_the_regulariser_unless_asked():
    frozen = {"frozen": {"enabled": True}}
    assert uses_regularizer(TrainConfig()) is True
    assert uses_regularizer(evolve(TrainConfig(), **frozen)) is False
    assert uses_regularizer(evolve(TrainConfig(), **frozen, regularizer={"enabled": True})) is True
    assert uses_regularizer(evolve(TrainConfig(), regularizer={"enabled": False})) is False
