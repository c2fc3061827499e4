"""The embedded scene: deterministic, ground truth consistent with its own geometry, presets as promised."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from cgc_core.config import SyntheticConfig
from cgc_core.scene import load_scene
from cgc_core.scene.synthetic import PRESETS, build_scene, camera_rays, render_view


def test_written_scene_reads_back_in_lerf_mask_layout(tiny_scene_dir):
    scene = load_scene(tiny_scene_dir)
    meta = json.loads((tiny_scene_dir / "ground_truth" / "scene.json").read_text())
    assert scene.layout == "synthetic" and scene.pinhole_images
    assert len(scene.image_names) == 24
    assert set(scene.train_names).isdisjoint(scene.test_names)
    assert sorted(scene.train_names + scene.test_names) == scene.image_names
    assert scene.test_names == meta["test_names"]
    assert sorted(scene.prompts) == sorted(o["name"] for o in meta["objects"])
    # each ground-truth mask is exactly the object's pixels in the instance map
    for name, masks in scene.gt_masks.items():
        ids = np.asarray(Image.open(tiny_scene_dir / "ground_truth" / f"instance_{name}"))
        for obj in meta["objects"]:
            if obj["name"] in masks:
                np.testing.assert_array_equal(scene.load_gt_mask(name, obj["name"]), ids == obj["id"])


def test_demo_objects_are_varied_and_distinct():
    scene = build_scene(SyntheticConfig(preset="demo"))
    kinds = {o.kind for o in scene.objects}
    assert len(scene.objects) >= 6 and {"sphere", "box", "cylinder", "cone", "torus"} <= kinds
    colors = np.array([o.color for o in scene.objects])
    pairwise = np.linalg.norm(colors[:, None] - colors[None], axis=-1)
    assert pairwise[~np.eye(len(colors), dtype=bool)].min() > 0.3
    assert 40 <= len(scene.cameras) <= 80
    heights = np.array([c.center[2] for c in scene.cameras])
    assert heights.max() - heights.min() > 0.6  # orbit at varied heights


def test_some_objects_touch():
    scene = build_scene(SyntheticConfig(preset="demo"))
    by_name = {o.name: o for o in scene.objects}
    rng = np.random.default_rng(0)
    capsule = by_name["white capsule"]
    samples = np.asarray(capsule.center) + rng.uniform(-1, 1, (200_000, 3)) * capsule.bounding_radius
    surface = samples[np.abs(capsule.sdf(samples)) < 0.003]
    # the capsule's surface comes within 5 mm of the sphere and the box (and never inside them)
    for other in ("red sphere", "blue box"):
        gap = by_name[other].sdf(surface)
        assert -0.004 < gap.min() < 0.005, other


def test_rendering_is_deterministic_and_depth_matches_geometry():
    cfg = SyntheticConfig(preset="tiny", supersample=1)
    scene = build_scene(cfg)
    camera = scene.cameras[3]
    rgb, ids, depth = render_view(scene, camera)
    rgb2, ids2, depth2 = render_view(build_scene(cfg), camera)
    np.testing.assert_array_equal(rgb, rgb2)
    # A pixel's depth puts its ray's hit point on the surface its id names.
    origin, dirs = camera_rays(camera)
    forward = camera.camera_to_world[:3, 2]
    t = depth.ravel() / (dirs @ forward)
    hits = origin + t[:, None] * dirs
    object_pixels = ids.ravel() > 0
    nearest, dist = scene.nearest_object(hits[object_pixels])
    assert (nearest == ids.ravel()[object_pixels]).mean() > 0.995
    assert np.median(dist) < 1e-3
    assert len(np.unique(ids)) == len(scene.objects) + 1


def test_seed_changes_textures_not_layout():
    a = build_scene(SyntheticConfig(preset="tiny", seed=0, supersample=1))
    b = build_scene(SyntheticConfig(preset="tiny", seed=1, supersample=1))
    rgb_a, ids_a, _ = render_view(a, a.cameras[0])
    rgb_b, ids_b, _ = render_view(b, b.cameras[0])
    assert np.abs(rgb_a - rgb_b).mean() > 0.01
    assert a.objects == b.objects  # the layout is fixed; only textures and camera jitter vary
    assert set(np.unique(ids_a)) == set(np.unique(ids_b))


def test_hard_preset_has_its_difficult_cases(tmp_path):
    scene = build_scene(SyntheticConfig(preset="hard", supersample=1, width=160, height=120))
    by_name = {o.name: o for o in scene.objects}
    pole = by_name["thin black pole"]
    assert 2 * pole.size[0] < 0.05 * 2 * pole.size[1]  # diameter under 5% of its height
    # two objects of the same colour side by side
    left, right = by_name["left orange cube"], by_name["right orange cube"]
    assert left.color == right.color
    assert np.linalg.norm(np.subtract(left.center, right.center)) < 0.3
    # an object seen in few views
    hidden = scene.prompts.index("hidden pink ball") + 1
    seen = sum((render_view(scene, c)[1] == hidden).sum() >= 5 for c in scene.cameras)
    assert 0 < seen <= 0.25 * len(scene.cameras)


def test_supersampling_keeps_centre_ids_and_smooths_edges():
    scene = build_scene(SyntheticConfig(preset="tiny"))
    camera = scene.cameras[0]
    rgb1, ids1, depth1 = render_view(scene, camera, supersample=1)
    rgb3, ids3, depth3 = render_view(scene, camera, supersample=3)
    np.testing.assert_array_equal(ids1, ids3)
    np.testing.assert_array_equal(depth1, depth3)
    edges = np.zeros_like(ids1, dtype=bool)
    edges[:, 1:] |= ids1[:, 1:] != ids1[:, :-1]
    assert np.abs(rgb1 - rgb3)[edges].mean() > np.abs(rgb1 - rgb3)[~edges].mean()
    with pytest.raises(ValueError, match="odd"):
        render_view(scene, camera, supersample=2)


def test_unknown_preset_is_rejected():
    assert set(PRESETS) == {"tiny", "demo", "hard", "realistic", "heldout-parts", "heldout-clutter",
                            "realistic-family"}
    with pytest.raises(ValueError, match="unknown synthetic preset"):
        build_scene(SyntheticConfig(preset="huge"))  # type: ignore[arg-type]


def test_realistic_preset_is_small_objects_in_a_lit_room():
    from cgc_core.scene.synthetic import OBJECT, _first_hits, _shade_room

    scene = build_scene(SyntheticConfig(preset="realistic", supersample=1, width=160, height=120))
    assert scene.room is not None and len(scene.objects) == 9
    by_name = {o.name: o for o in scene.objects}
    assert by_name["red mug"].color == by_name["red cube"].color and by_name["red mug"].kind != by_name["red cube"].kind
    lamp = by_name["desk lamp"]
    assert lamp.kind == "compound" and len({part.material for part in lamp.parts}) == 3
    assert by_name["chrome ball"].material == "mirror" and by_name["checker box"].material == "checker"
    # Cameras orbit at about 0.7 m; every object covers a small share of the views that see it.
    distances = [np.linalg.norm(c.center - scene.target) for c in scene.cameras]
    assert 0.55 < np.median(distances) < 0.8
    camera = scene.cameras[0]
    rgb, ids, depth = render_view(scene, camera)
    shares = [(ids == k).mean() for k in range(1, 10)]
    assert all(0 < s < 0.06 for s in shares) and np.median(shares) < 0.03
    # Depth puts each object pixel on the surface its id names (the room's planes included in the truth).
    origin, dirs = camera_rays(camera)
    t = depth.ravel() / (dirs @ camera.camera_to_world[:3, 2])
    hits = origin + t[:, None] * dirs
    nearest, _ = scene.nearest_object(hits[ids.ravel() > 0])
    assert (nearest == ids.ravel()[ids.ravel() > 0]).mean() > 0.99
    # Shadows: table points whose light ray an object blocks are darker than the same points unblocked.
    t_hit, surface, hit_ids = _first_hits(scene, origin, dirs)
    lit = _shade_room(scene, origin, dirs, t_hit, surface, hit_ids)
    empty = build_scene(SyntheticConfig(preset="realistic", supersample=1, width=160, height=120))
    empty.objects.clear()
    t0, surface0, ids0 = _first_hits(empty, origin, dirs)
    unshadowed = _shade_room(empty, origin, dirs, t0, surface0, ids0)
    table = (surface == 0) & (surface0 == 0) & (hit_ids == 0)
    darker = (lit[table].sum(1) < unshadowed[table].sum(1) - 1e-6).mean()
    assert 0.005 < darker < 0.5  # some of the table lies in shadow, not all of it
    assert (surface == OBJECT).mean() > 0.02


def test_heldout_presets_change_layout_with_the_seed_and_keep_multi_part_objects_whole():
    seeds = [build_scene(SyntheticConfig(preset="heldout-parts", seed=k, supersample=1, width=160, height=120))
             for k in (0, 1)]
    centres = [{o.name: o.center for o in scene.objects} for scene in seeds]
    assert set(centres[0]) == set(centres[1]) and centres[0] != centres[1]
    assert {o.name for o in seeds[0].objects if o.kind == "compound"} == {"toy robot", "mushroom", "table lamp", "snowman"}
    # A compound's parts move with it (their axes stay on its centre).
    for scene in seeds:
        lamp = next(o for o in scene.objects if o.name == "table lamp")
        for part in lamp.parts:
            assert np.hypot(part.center[0] - lamp.center[0], part.center[1] - lamp.center[1]) < 1e-9
    robot = next(o for o in seeds[1].objects if o.name == "toy robot")
    # The ground truth gives the whole object one id: its parts' colours all lie inside its mask.
    scene = seeds[1]
    k = scene.objects.index(robot) + 1
    rgb, ids, _ = render_view(scene, scene.cameras[0])
    inside = rgb[ids == k]
    assert len(inside) > 50
    blue = inside[:, 2] > inside[:, 0] + 0.2
    yellow = inside[:, 0] > inside[:, 2] + 0.2
    assert blue.mean() > 0.1 and yellow.mean() > 0.05  # body and head under one id
    clutter = build_scene(SyntheticConfig(preset="heldout-clutter", seed=2, supersample=1, width=160, height=120))
    by_name = {o.name: o for o in clutter.objects}
    assert clutter.room is not None
    assert by_name["orange ball"].color == by_name["orange box"].color
    assert by_name["orange ball"].kind != by_name["orange box"].kind
    assert min(by_name["black pen"].size) < 0.01 and by_name["checker book"].material == "checker"


def test_rays_in_chunks_render_exactly_what_one_pass_does(monkeypatch):
    # Chunking is only for speed (arrays that fit the cache): every number must be the same.
    from cgc_core.scene import synthetic

    scene = build_scene(SyntheticConfig(preset="demo"))
    camera = scene.cameras[3].scaled(64, 48)
    one_pass = render_view(scene, camera)
    monkeypatch.setattr(synthetic, "_RAY_CHUNK", 700)  # 3072 rays: five chunks, the last one short
    chunked = render_view(scene, camera)
    assert (one_pass[1] > 0).any() and (one_pass[1] == 0).any()  # objects and background both seen
    for a, b in zip(one_pass, chunked):
        np.testing.assert_array_equal(a, b)


def test_realistic_family_draws_each_case_per_seed_without_overlaps_and_every_object_in_view():
    from cgc_core.scene.synthetic import FAMILY_DEV_SEEDS, FAMILY_HELDOUT_SEEDS

    assert not set(FAMILY_DEV_SEEDS) & set(FAMILY_HELDOUT_SEEDS) and len(FAMILY_HELDOUT_SEEDS) >= 3
    grid = np.stack(np.meshgrid(np.linspace(-0.45, 0.45, 91), np.linspace(-0.4, 0.4, 81),
                                np.linspace(0.001, 0.3, 30), indexing="ij"), -1).reshape(-1, 3)
    layouts = set()
    for seed in (FAMILY_DEV_SEEDS[0], FAMILY_HELDOUT_SEEDS[0]):
        cfg = SyntheticConfig(preset="realistic-family", seed=seed, n_views=8, width=96, height=72)
        scene = build_scene(cfg)
        again = build_scene(cfg)  # a seed is one scene
        assert again.objects == scene.objects and np.array_equal(again.cameras[3].K, scene.cameras[3].K)
        layouts.add((tuple(o.center for o in scene.objects), round(float(scene.radius), 6)))
        names = [o.name for o in scene.objects]
        assert len(set(names)) == len(names)
        assert sorted(o.role for o in scene.objects if o.role) == ["flat", "flat", "glass", "in", "mirror", "multipart",
                                                                    "on", "small", "thin"]
        # two same-coloured objects of different shapes touch (their surfaces within 1 mm)
        pairs = [(a, b) for i, a in enumerate(scene.objects) for b in scene.objects[i + 1:]
                 if a.color == b.color and a.kind != b.kind and a.kind != "compound"]
        def touch(a, b, step=0.002):
            axis = np.arange(-a.bounding_radius, a.bounding_radius, step)
            near = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3) + a.center
            return bool(((np.abs(a.sdf(near)) < step) & (np.abs(b.sdf(near)) < step)).any())

        assert any(touch(a, b) for a, b in pairs)
        inside = np.stack([o.sdf(grid) < 0 for o in scene.objects], axis=1)
        assert (inside.sum(axis=1) <= 1).all()  # no two objects share space
        seen = np.zeros(len(scene.objects) + 1, dtype=int)
        for camera in scene.cameras:
            seen += np.bincount(render_view(scene, camera)[1].ravel(), minlength=len(seen)) > 0
        assert (seen[1:] >= 1).all(), dict(zip(names, seen[1:]))
        small = names.index(next(o.name for o in scene.objects if o.role == "small"))
        assert seen[1 + small] < len(scene.cameras) or seed != FAMILY_DEV_SEEDS[0]  # hidden from some views
    assert len(layouts) == 2  # the layout, colours and orbit follow the seed


def test_family_tables_wear_a_patterned_cloth_and_the_glass_shows_what_stands_behind_it():
    from cgc_core.scene.synthetic import FAMILY_DEV_SEEDS, Cloth

    patterns = set()
    for seed in FAMILY_DEV_SEEDS:
        scene = build_scene(SyntheticConfig(preset="realistic-family", seed=seed, n_views=8, width=96, height=72))
        patterns.add(scene.room.cloth.pattern)
    assert len(patterns) >= 2  # the pattern follows the seed
    # The cloth: base and ink where the pattern says, the table's wood beyond its edge.
    cloth = Cloth(pattern="gingham", base=(0.9, 0.9, 0.9), ink=(0.1, 0.2, 0.8), cell=0.02)
    points = np.array([[0.005, 0.005, 0], [0.025, 0.005, 0], [0.025, 0.025, 0], [0.5, 0.0, 0]])
    colour, covered = cloth.albedo(points, seed=0)
    assert covered.tolist() == [True, True, True, False]
    assert colour[0, 2] < colour[0, 0] + 0.1 and colour[2, 2] > 2 * colour[2, 0]  # white check, blue check
    assert colour[0, 0] > colour[1, 0] > colour[2, 0]  # crossing bands mix to a middle tone
    # The glass shows the cloth behind it: another ink changes the glass's pixels and not those of
    # a matte object.
    scene = build_scene(SyntheticConfig(preset="realistic-family", seed=FAMILY_DEV_SEEDS[0], n_views=8, width=96,
                                        height=72))
    glass = next(k for k, o in enumerate(scene.objects, start=1) if o.material == "glass")
    matte = next(k for k, o in enumerate(scene.objects, start=1) if o.material == "matte" and o.kind == "box")
    camera = max(scene.cameras, key=lambda c: (render_view(scene, c)[1] == glass).sum())
    rgb, ids, _ = render_view(scene, camera)
    recoloured = replace(scene, room=replace(scene.room, cloth=replace(scene.room.cloth, ink=(0.9, 0.1, 0.1))))
    other, other_ids, _ = render_view(recoloured, camera)
    assert np.array_equal(ids, other_ids) and (ids == glass).sum() >= 20 and (ids == matte).sum() >= 20
    change = np.abs(other - rgb).sum(-1)
    assert (change[ids == glass] > 0.05).mean() > 0.3
    assert change[ids == matte].max() < 1e-6
