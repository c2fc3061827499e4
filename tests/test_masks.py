"""Mask store round trips, SAM output kept unchanged, generators, and a resumable mask stage."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from cgc_core.config import CgcConfig, ClassicalConfig, SamConfig
from cgc_core.masks import SCHEMA, MaskStore, MaskStoreError, records_from_masks, records_from_sam
from cgc_core.masks.generators import ClassicalGenerator, MaskGeneratorError, SamGenerator, generate_scene_masks


def _store_roundtrip(tmp_path, masks, name="img.png"):
    k, h, w = masks.shape
    store = MaskStore(tmp_path / "store")
    store.write_image(name, h, w, records_from_masks(name, list(masks), "test", "0", "x"))
    return store


@st.composite
def mask_stacks(draw):
    h = draw(st.integers(1, 24))
    w = draw(st.integers(1, 24))
    k = draw(st.integers(0, 4))
    stack = draw(arrays(np.bool_, (k, h, w)))
    special = draw(st.sampled_from(["none", "empty", "full", "one-pixel"]))
    if k and special == "empty":
        stack[0] = False
    elif k and special == "full":
        stack[0] = True
    elif k and special == "one-pixel":
        stack[0] = False
        stack[0, draw(st.integers(0, h - 1)), draw(st.integers(0, w - 1))] = True
    return stack


@settings(max_examples=60, deadline=None)
@given(masks=mask_stacks())
def test_masks_round_trip_through_the_store(tmp_path_factory, masks):
    tmp_path = tmp_path_factory.mktemp("rt")
    store = _store_roundtrip(tmp_path, masks)
    back = store.read_masks("img.png")
    assert back.shape == masks.shape
    np.testing.assert_array_equal(back, masks)
    table = store.read_table("img.png").to_pydict()
    assert table["area"] == [int(m.sum()) for m in masks]
    assert store.image_size("img.png") == masks.shape[1:]


def test_sam_coco_rle_is_stored_unchanged(tmp_path):
    from segment_anything.utils.amg import coco_encode_rle, mask_to_rle_pytorch

    rng = np.random.default_rng(0)
    masks = rng.random((3, 17, 23)) > 0.6
    sam_like = [
        {"segmentation": coco_encode_rle(rle), "area": int(m.sum()), "bbox": [0, 0, 1, 1],
         "predicted_iou": 0.9, "stability_score": 0.95, "point_coords": [[3.5, 4.5]]}
        for m, rle in zip(masks, mask_to_rle_pytorch(torch.as_tensor(masks)))
    ]
    store = MaskStore(tmp_path)
    store.write_image("a.jpg", 17, 23, records_from_sam("a.jpg", sam_like, "sam", "1", "h"))
    rows = store.read_table("a.jpg").to_pydict()
    assert [r for r in rows["rle"]] == [m["segmentation"]["counts"].encode() for m in sam_like]
    np.testing.assert_array_equal(store.read_masks("a.jpg"), masks)
    assert rows["point"][0] == [3.5, 4.5] and rows["predicted_iou"][0] == pytest.approx(0.9)


def test_label_map_puts_smaller_masks_on_top_and_filters_by_area(tmp_path):
    masks = np.zeros((3, 8, 8), bool)
    masks[0] = True  # whole image (index 0)
    masks[1, 2:6, 2:6] = True  # a part inside it (index 1)
    masks[2, 3, 3] = True  # a one-pixel detail inside the part (index 2)
    store = _store_roundtrip(tmp_path, masks)
    labels = store.read_label_map("img.png")
    assert labels[0, 0] == 1 and labels[2, 2] == 2 and labels[3, 3] == 3
    assert (store.read_label_map("img.png", min_area=2) == np.where(masks[1], 2, 1)).all()
    assert store.read_masks("img.png", min_area=20).shape == (1, 8, 8)


def test_store_errors_name_the_file(tmp_path):
    store = _store_roundtrip(tmp_path, np.ones((1, 4, 4), bool))
    with pytest.raises(MaskStoreError, match="no masks stored for image 'other.png'"):
        store.read_masks("other.png")
    store.path("img.png").write_bytes(b"PAR1 garbage")
    with pytest.raises(MaskStoreError, match=r"img.png.parquet: not a readable Parquet file"):
        store.read_masks("img.png")
    wrong = pa.table({"image": ["x"]})
    with pytest.raises(MaskStoreError, match="does not follow the mask schema"):
        store.write_image("x", 1, 1, wrong)
    with pytest.raises(MaskStoreError, match=r"rows of \['img.png'\] written as image 'b.png'"):
        store.write_image("b.png", 4, 4, records_from_masks("img.png", [np.ones((4, 4), bool)], "t", "0", "x"))


def test_classical_generator_is_deterministic_and_view_inconsistent():
    rng = np.random.default_rng(0)
    image = (rng.random((60, 80, 3)) * 255).astype(np.uint8)
    image[10:40, 20:60] = [200, 30, 30]
    gen = ClassicalGenerator(ClassicalConfig(scales=[50.0, 400.0]))
    a, size = gen.generate(image, "view_000.png")
    b, _ = gen.generate(image, "view_000.png")
    c, _ = gen.generate(image, "view_001.png")
    assert size == (60, 80) and a.schema == SCHEMA
    assert a.column("rle").to_pylist() == b.column("rle").to_pylist()
    assert a.column("rle").to_pylist() != c.column("rle").to_pylist()  # same pixels, other view: other masks
    # two levels: the masks overlap (pixels covered more than once)
    store_masks = np.stack([np.asarray(m) for m in _decode(a)])
    assert store_masks.sum(0).max() >= 2


def _two_colour_object(tmp_path, keep: float):
    """A 60x80 view of one object (id 1) whose left half is red and right half blue, on grey; a
    scene whose true instance map is that object; and the `truth-objects` generator of it."""
    from cgc_core.masks.generators import make_generator
    from cgc_core.scene.model import Scene

    image = np.full((60, 80, 3), 128, dtype=np.uint8)
    image[15:45, 20:40] = [220, 30, 30]
    image[15:45, 40:60] = [30, 30, 220]
    ids = np.zeros((60, 80), dtype=np.uint8)
    ids[15:45, 20:60] = 1
    scene = Scene(name="two", root=tmp_path, image_dir=tmp_path, image_names=["view_000.png"],
                  instance_truth=lambda name: ids)
    cfg = CgcConfig().masks
    cfg.generator, cfg.classical.scales, cfg.truth_objects.keep = "truth-objects", [50.0], keep
    return image, ids, make_generator(cfg, scene)


def test_truth_objects_nest_the_colour_parts_into_the_whole_object(tmp_path):
    image, ids, gen = _two_colour_object(tmp_path, keep=1.0)
    table, size = gen.generate(image, "view_000.png")
    assert size == (60, 80) and table.column("generator").to_pylist()[0] == "truth-objects"
    masks = np.stack(_decode(table)).astype(bool)
    assert any((m == (ids == 1)).all() for m in masks)  # the whole object is one of the masks
    store = _store_roundtrip(tmp_path, masks)
    levels = store.read_label_maps("img.png", 2)
    red, blue = (30, 25), (30, 50)
    # Finest level: the colour parts apart (as the classical masks give them); next level: one object.
    assert levels[0][red] != levels[0][blue]
    assert levels[1][red] == levels[1][blue] and (masks[levels[1][red] - 1] == (ids == 1)).all()
    # keep=0: exactly the classical generator's masks (the object level is what keep adds).
    _, _, classical_only = _two_colour_object(tmp_path, keep=0.0)
    plain = ClassicalGenerator(ClassicalConfig(scales=[50.0])).generate(image, "view_000.png")[0]
    assert classical_only.generate(image, "view_000.png")[0].column("rle").to_pylist() == plain.column("rle").to_pylist()


def test_truth_objects_can_cut_the_colour_segments_at_the_true_object_borders(tmp_path):
    from cgc_core.masks.generators import make_generator
    from cgc_core.scene.model import Scene

    # Two touching red objects (ids 1 and 2) on grey: one colour segment covers both.
    image = np.full((60, 80, 3), 128, dtype=np.uint8)
    image[15:45, 20:60] = [220, 30, 30]
    ids = np.zeros((60, 80), dtype=np.uint8)
    ids[15:45, 20:40], ids[15:45, 40:60] = 1, 2
    scene = Scene(name="pair", root=tmp_path, image_dir=tmp_path, image_names=["view_000.png"],
                  instance_truth=lambda name: ids)

    def objects_per_mask(parts_within_objects):
        cfg = CgcConfig().masks
        cfg.generator, cfg.classical.scales, cfg.truth_objects.keep = "truth-objects", [50.0], 1.0
        cfg.truth_objects.parts_within_objects = parts_within_objects
        table, _ = make_generator(cfg, scene).generate(image, "view_000.png")
        return [len(np.unique(ids[np.asarray(m, bool)])) for m in _decode(table)]

    assert max(objects_per_mask(False)) == 2  # the shared colour segment spans both objects
    assert max(objects_per_mask(True)) == 1  # cut: every mask lies within one object (or the background)


def test_truth_objects_refuse_a_scene_without_true_instances_and_a_bad_share(tmp_path):
    from cgc_core.config import ConfigError, load_config
    from cgc_core.masks.generators import make_generator
    from cgc_core.scene.model import Scene

    scene = Scene(name="photos", root=tmp_path / "photos", image_dir=tmp_path, image_names=["a.png"])
    cfg = CgcConfig().masks
    cfg.generator = "truth-objects"
    with pytest.raises(MaskGeneratorError, match=r"photos: masks.generator=truth-objects needs true instance maps"):
        make_generator(cfg, scene)
    with pytest.raises(ConfigError, match=r"masks.truth_objects.keep must be in \[0, 1\], got 1.5"):
        load_config(None, ["masks.truth_objects.keep=1.5"])


def test_synthetic_scene_reads_its_true_instance_maps(tiny_scene_dir, tmp_path):
    import shutil

    from cgc_core.scene import load_scene
    from cgc_core.scene.model import SceneError

    folder = shutil.copytree(tiny_scene_dir, tmp_path / "scene")  # the fixture is shared: spoil a copy
    scene = load_scene(folder)
    name = scene.train_names[0]
    ids = scene.instance_truth(name)
    assert ids.shape == scene.load_image(name).shape[:2] and ids.max() >= 1
    (folder / "ground_truth" / f"instance_{name}").write_bytes(b"not a png")
    with pytest.raises(SceneError, match=f"instance_{name}: cannot read the view's true instance map"):
        scene.instance_truth(name)


def _decode(table):
    from cgc_core.masks import decode_rles

    rows = table.to_pydict()
    return decode_rles([{"size": [h, w], "counts": r} for h, w, r in zip(rows["height"], rows["width"], rows["rle"])])


def test_sam_generator_runs_end_to_end_on_cpu_with_random_weights(tmp_path):
    cfg = SamConfig(model_type="vit_b", allow_random_weights=True, device="cpu", max_side=64, points_per_side=2,
                    pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0)
    gen = SamGenerator(cfg)
    image = (np.random.default_rng(1).random((48, 64, 3)) * 255).astype(np.uint8)
    torch.manual_seed(0)
    table, size = gen.generate(image, "tiny.png")
    assert size == (48, 64) and table.schema == SCHEMA
    assert table.num_rows > 0, "random weights with zero thresholds should still return masks"
    assert set(table.column("generator").to_pylist()) == {"sam"}
    store = MaskStore(tmp_path)
    store.write_image("tiny.png", *size, table)
    masks = store.read_masks("tiny.png")
    assert masks.shape == (table.num_rows, 48, 64)
    assert table.column("area").to_pylist() == [int(m.sum()) for m in masks]


def test_sam_checkpoint_missing_or_corrupt_is_a_clear_error(tmp_path):
    with pytest.raises(MaskGeneratorError, match="masks.sam.checkpoint is not set"):
        SamGenerator(SamConfig(model_type="vit_b")).build()
    missing = tmp_path / "sam_vit_b.pth"
    with pytest.raises(MaskGeneratorError, match=r"sam_vit_b.pth: SAM checkpoint file not found"):
        SamGenerator(SamConfig(model_type="vit_b", checkpoint=str(missing))).build()
    missing.write_bytes(b"\x00not a torch file")
    with pytest.raises(MaskGeneratorError, match=r"sam_vit_b.pth: not a valid SAM vit_b checkpoint"):
        SamGenerator(SamConfig(model_type="vit_b", checkpoint=str(missing))).build()


class _Killed(Exception):
    pass


def test_killed_mask_stage_redoes_only_remaining_images(tiny_scene_dir, tmp_path):
    from cgc_core.pipeline import masks_stage
    from cgc_core.scene import load_scene

    scene = load_scene(tiny_scene_dir, name="tiny")
    cfg = CgcConfig(data_dir=str(tmp_path))
    seen = []

    def kill_after_five(done, total, name):
        seen.append(name)
        if done == 5:
            raise _Killed()

    with pytest.raises(_Killed):
        masks_stage(cfg, scene, progress=kill_after_five)
    assert not (tmp_path / "tiny" / "masks").exists()  # nothing looks finished
    partial = list((tmp_path / "tiny").glob(".masks.partial-*"))
    assert len(partial) == 1 and len(list((partial[0] / "store").glob("*.parquet"))) == 5

    result = masks_stage(cfg, scene).result
    store = result.outputs.store
    info = result.manifest.info
    assert info["reused"] == 5 and info["generated"] == len(scene.train_names) - 5
    assert sorted(store.images()) == sorted(scene.train_names)
    assert not list((tmp_path / "tiny").glob(".masks.partial-*"))
    _, again = masks_stage(cfg, scene)
    assert again.cached


def test_generate_scene_masks_skips_stored_images(tiny_scene_dir, tmp_path):
    from cgc_core.scene import load_scene

    scene = load_scene(tiny_scene_dir)
    calls = []

    class Counting(ClassicalGenerator):
        def generate(self, image, image_name):
            calls.append(image_name)
            return super().generate(image, image_name)

    store = MaskStore(tmp_path)
    gen = Counting(ClassicalConfig())
    first = generate_scene_masks(scene, store, gen)
    assert first["generated"] == len(scene.train_names) == len(calls)
    second = generate_scene_masks(scene, store, gen)
    assert second == {"images": len(scene.train_names), "generated": 0, "reused": len(scene.train_names),
                      "masks_generated": 0}


def test_depth_split_separates_same_label_objects_at_a_depth_jump_and_keeps_a_slanted_surface():
    from cgc_core.masks.depth_split import split_at_depth_edges

    # One segment (label 3) over two objects side by side: the right one 20 % farther.
    labels = np.full((20, 30), 3)
    depth = np.ones((20, 30))
    depth[:, 15:] = 1.2
    cut = split_at_depth_edges(labels, depth, max_jump=0.05)
    left, right = np.unique(cut[:, :12]), np.unique(cut[:, 18:])
    assert len(left) == 1 and len(right) == 1 and left[0] > 0 and right[0] > 0 and left[0] != right[0]
    assert (cut[:, 14:16] == 0).all() and (cut[:, [13, 16]] > 0).all()  # a 2-pixel line of edge pixels, unlabelled
    # A surface slanted so that its depth grows 1 % per pixel (a table at a grazing angle) stays whole.
    slanted = 1.0 + 0.01 * np.arange(30)[None, :].repeat(20, 0)
    assert len(np.unique(split_at_depth_edges(labels, slanted, max_jump=0.05))) == 1
    # A jump that does not close around a piece (a handle joined to its body) cuts nothing off.
    # Here a block 20 % in front of its surroundings on three sides, joined to them on the fourth
    # by a continuous ramp (rows 11-19).
    handle = np.ones((20, 30))
    handle[5:11, 10:20] = 0.8
    handle[11:20, 10:20] = np.linspace(0.8, 1.0, 11)[1:-1, None]
    kept = split_at_depth_edges(labels, handle, max_jump=0.1)
    assert len(np.unique(kept[kept > 0])) == 1 and (kept[6:10, 12:18] > 0).all()
    assert (kept[5:9, 9:11] == 0).all()  # the jump on the block's side is cut, though it cuts nothing off
    # Pieces under min_pixels go to 0; where no depth is known (0) nothing is cut.
    tiny = np.ones((20, 30))
    tiny[:3, :3] = 2.0
    assert (split_at_depth_edges(labels, tiny, 0.05, min_pixels=10)[:2, :2] == 0).all()
    assert len(np.unique(split_at_depth_edges(labels, np.zeros((20, 30)), 0.05))) == 1
    with pytest.raises(ValueError, match="differ in shape"):
        split_at_depth_edges(labels, depth[:10], 0.05)


def test_depth_split_sharpness_keeps_a_steep_plane_whole_and_still_cuts_a_step():
    from cgc_core.masks.depth_split import split_at_depth_edges

    labels = np.full((20, 30), 3)
    # A plane seen at a grazing angle: inverse depth falls linearly with the row, so the depth grows
    # by more than 5 % every two rows near the bottom (a ground plane towards the horizon).
    grazing = 1.0 / (1.0 - 0.02 * np.arange(20))[:, None].repeat(30, 1)
    assert len(np.unique(split_at_depth_edges(labels, grazing, 0.05))) > 2  # without sharpness: cut into strips
    whole = split_at_depth_edges(labels, grazing, 0.05, sharpness=2.0)
    assert np.unique(whole).tolist() == [1]
    # The same plane with a box standing 30 % in front of it: its outline is still cut.
    stepped = grazing.copy()
    stepped[6:12, 10:20] = grazing[6:12, 10:20] * 0.7
    cut = split_at_depth_edges(labels, stepped, 0.05, sharpness=2.0)
    inner, outer = np.unique(cut[8:10, 12:18]), np.unique(cut[15:, :])
    assert len(inner) == 1 and len(outer) == 1 and inner[0] != outer[0] and 0 not in (inner[0], outer[0])


def test_depth_split_fill_gives_edge_pixels_and_crumbs_back_to_the_nearest_piece_of_their_segment():
    from cgc_core.masks.depth_split import split_at_depth_edges

    labels = np.full((20, 30), 3)
    labels[:, 25:] = 4  # another segment on the right, never cut
    depth = np.ones((20, 30))
    depth[:, 12:] = 1.2  # a step at column 12: pieces left (0-11) and right (12-24) of segment 3
    depth[2:4, 20:22] = 2.0  # a 2×2 crumb standing out of the right piece
    plain = split_at_depth_edges(labels, depth, 0.05, min_pixels=10)
    assert (plain[:, 11] == 0).all() and (plain[2:4, 20:22] == 0).all()  # edge line and crumb unlabelled
    filled = split_at_depth_edges(labels, depth, 0.05, min_pixels=10, fill_distance=3)
    left, right, other = filled[10, 0], filled[10, 15], filled[10, 28]
    assert len({left, right, other}) == 3 and 0 not in (left, right, other)
    assert (filled[:, :12] == left).all()  # the edge line at column 11 joined the nearest piece
    assert (filled[:, 12:25] == right).all() and (filled[:, 25:] == other).all()  # crumb back in its piece
    # Never across segments, and not farther than fill_distance: a segment cut into crumbs only stays 0.
    labels[5:7, 5:7] = 9
    depth[5:6, 5:7] = 2.0
    crumbs = split_at_depth_edges(labels, depth, 0.05, min_pixels=10, fill_distance=3)
    assert (crumbs[5:7, 5:7] == 0).all()
    far = split_at_depth_edges(labels, depth, 0.05, min_pixels=10, fill_distance=0.5)
    assert (far[:, 11] == 0).all()



def test_training_depth_cut_keeps_crumbs_unless_it_fills():
    """`cut_at_depth_edges` (training's and mask_quality's cut) drops pieces under
    `depth_split.min_pixels` only where `fill` gives their pixels back to a piece."""
    from cgc_core.config import DepthSplitConfig
    from cgc_core.masks.depth_split import cut_at_depth_edges

    labels = np.full((20, 30), 3)
    depth = np.ones((20, 30))
    depth[:, 12:] = 1.2
    depth[6:12, 18:24] = 2.0  # a block whose inside (4×4 = 16 px) is under min_pixels=20
    cfg = DepthSplitConfig(jump=0.05, min_pixels=20, sharpness=0.0)
    filled = cut_at_depth_edges(labels, depth, cfg)  # fill 8 (the default): edge pixels and the crumb rejoin
    assert (filled > 0).all() and (filled[7:11, 19:23] == filled[10, 15]).all()
    unfilled = cut_at_depth_edges(labels, depth, DepthSplitConfig(jump=0.05, min_pixels=20, sharpness=0.0, fill=0.0))
    inside = unfilled[7:11, 19:23]  # kept as its own piece: no crumb floor without fill
    assert len(np.unique(inside)) == 1 and inside[0, 0] not in (0, unfilled[4, 16])
    assert (unfilled[6, 18:24] == 0).all()  # edge pixels stay unlabelled


def _box_on_floor(size: int = 128, focal: float = 80.0):
    """Ray-cast depth of a box (x in [-1, 1], y in [1, 2], z in [3, 5]) standing on a floor (y = 2,
    z <= 8), seen from the origin (OpenCV axes: y down); part: 1 the box's front face, 2 its top,
    3 the floor, 0 nothing (depth 0)."""
    intrinsics = np.array([[focal, 0, size / 2], [0, focal, 40.0], [0, 0, 1.0]])
    rows, cols = np.mgrid[0:size, 0:size]
    dx, dy = (cols + 0.5 - intrinsics[0, 2]) / focal, (rows + 0.5 - intrinsics[1, 2]) / focal
    down = np.where(dy > 0, dy, 1.0)
    floor = np.where((dy > 0) & (2 / down <= 8), 2 / down, np.inf)
    front = np.where((np.abs(3 * dx) <= 1) & (3 * dy >= 1) & (3 * dy <= 2), 3.0, np.inf)
    top = np.where((dy > 0) & (1 / down >= 3) & (1 / down <= 5) & (np.abs(dx / down) <= 1), 1 / down, np.inf)
    depth = np.minimum(np.minimum(floor, front), top)
    seen = np.isfinite(depth)
    part = np.select([seen & (depth == front), seen & (depth == top), seen & (depth == floor)], [1, 2, 3], 0)
    return np.where(seen, depth, 0.0), part, intrinsics


def test_concave_creases_cut_a_box_from_the_floor_it_stands_on_and_keep_its_own_convex_edge():
    """Where the box meets the floor the depth does not jump, so a segment holding both (same
    colour) survives the depth cut; the concave crease along the contact cuts it. The box's front
    and top meet at a convex edge, which is no crease, so the box stays one piece."""
    from cgc_core.masks.depth_split import concave_creases, split_at_depth_edges

    depth, part, intrinsics = _box_on_floor()
    creases = concave_creases(depth, intrinsics, 60)
    assert creases[92:96, 45:80].all()  # the contact line (the front face ends at row 92)
    assert not creases[60:72, 45:80].any()  # the convex edge between top and front (row 66/67)
    assert not creases[100:, :].any() and not creases[part == 2].any()  # open floor, the top face

    labels = np.where(part > 0, 1, 0)  # one colour segment over box and floor
    kwargs = dict(max_jump=0.03, min_pixels=20, sharpness=2.0, fill_distance=8.0)
    without = split_at_depth_edges(labels, depth, **kwargs)
    assert len(np.unique(without[part > 0])) == 1

    def majority(cut, which):
        values, counts = np.unique(cut[part == which], return_counts=True)
        return values[counts.argmax()], counts.max() / counts.sum()

    cut = split_at_depth_edges(labels, depth, **kwargs, extra_edges=creases)
    (front, front_share), (top, top_share), (floor, floor_share) = (majority(cut, k) for k in (1, 2, 3))
    assert front == top != floor and min(front_share, top_share, floor_share) > 0.95


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), spacing=st.sampled_from([2, 3, 4]), angle=st.sampled_from([10.0, 45.0]))
def test_concave_creases_equal_their_pixel_by_pixel_reference(seed, spacing, angle):
    from cgc_core.masks.depth_split import concave_creases, concave_creases_reference

    rng = np.random.default_rng(seed)
    depth = np.kron(rng.choice([1.0, 1.1, 1.5], (4, 5)), np.ones((3, 3)))[:11, :13]
    depth *= 1.0 + 0.2 * rng.random(depth.shape)
    depth[rng.random(depth.shape) < 0.05] = 0
    intrinsics = np.array([[15.0, 0, 6.5], [0, 15.0, 5.5], [0, 0, 1]])
    fast = concave_creases(depth, intrinsics, angle, spacing=spacing, smooth=1)
    np.testing.assert_array_equal(fast, concave_creases_reference(depth, intrinsics, angle, spacing=spacing))


def test_the_crease_cut_needs_the_cameras_intrinsics_and_an_angle_below_180():
    from cgc_core.config import ConfigError, DepthSplitConfig, load_config
    from cgc_core.masks.depth_split import cut_at_depth_edges

    depth, part, intrinsics = _box_on_floor()
    labels, creased, plain = np.where(part > 0, 1, 0), DepthSplitConfig(sharpness=2.0, crease_angle=60), DepthSplitConfig(sharpness=2.0)
    with pytest.raises(ValueError, match="crease_angle.*intrinsics"):
        cut_at_depth_edges(labels, depth, creased)
    assert len(np.unique(cut_at_depth_edges(labels, depth, plain)[part > 0])) == 1
    assert len(np.unique(cut_at_depth_edges(labels, depth, creased, intrinsics)[part > 0])) == 2  # box, floor
    with pytest.raises(ConfigError, match="crease_angle"):
        load_config(None, ["train.depth_split.crease_angle=180"])


def _two_boxes_on_floor():
    """`_box_on_floor` with its front face and top as two colour parts (1, 2), a second, lower box
    of one colour (3) standing apart on the floor to the left, and the floor in stripes (4...)."""
    depth, part, intrinsics = _box_on_floor()
    rows, cols = np.mgrid[0:128, 0:128]
    dx, dy = (cols + 0.5 - 64) / 80.0, (rows + 0.5 - 40) / 80.0
    # The second box's front face: x in [-3, -2], y in [1.5, 2] at z = 3 (in front of the floor).
    second = (3 * dx >= -3) & (3 * dx <= -2) & (3 * dy >= 1.5) & (3 * dy <= 2)
    depth = np.where(second, 3.0, depth)
    labels = np.select([second, part == 1, part == 2, part == 3], [3, 1, 2, 4 + rows // 10], 0)
    return depth, labels, intrinsics


def test_plane_heights_measure_the_floor_and_the_box_over_it():
    from cgc_core.masks.depth_split import plane_heights

    depth, part, intrinsics = _box_on_floor()
    heights = plane_heights(depth, intrinsics, tolerance=0.008) * np.median(depth[depth > 0])
    assert np.abs(heights[part == 3]).max() < 1e-6  # the floor is the dominant plane
    np.testing.assert_allclose(heights[part == 2], 1.0, atol=1e-6)  # the top: 1 over the floor
    assert heights[part == 1].min() > -1e-6 and heights[part == 1].max() > 0.95  # the front: 0 up to 1
    assert (heights[part == 0] == 0).all()


def test_object_groups_join_the_parts_of_an_object_and_keep_the_floor_and_other_objects_apart():
    """The box's front and top (two colours) become one segment; the second box is its own group;
    every stripe of the floor keeps its own label, and the groups nest the segments."""
    from cgc_core.config import DepthSplitConfig
    from cgc_core.masks.depth_split import object_groups

    depth, labels, intrinsics = _two_boxes_on_floor()
    groups = object_groups(labels, depth, intrinsics, DepthSplitConfig())
    (box,), (other,) = np.unique(groups[(labels == 1) | (labels == 2)]), np.unique(groups[labels == 3])
    assert box != other and box > labels.max() and other > labels.max()
    floor = labels >= 4
    np.testing.assert_array_equal(groups[floor], labels[floor])
    assert (groups[labels == 0] == 0).all()
    for segment in np.unique(labels):  # nesting: each segment lies inside one group
        assert len(np.unique(groups[labels == segment])) == 1
    # Without height to stand on (the objects lower than `group_height`) nothing is joined.
    flat = object_groups(labels, depth, intrinsics, DepthSplitConfig(group_height=0.5))
    np.testing.assert_array_equal(flat, labels)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n_pieces=st.integers(0, 4))
def test_group_segments_equal_their_loop_reference(seed, n_pieces):
    from cgc_core.masks.depth_split import group_segments, group_segments_reference

    rng = np.random.default_rng(seed)
    labels = np.kron(rng.integers(0, 6, (6, 7)), np.ones((2, 2), dtype=np.int64))
    pieces = np.kron(rng.integers(0, n_pieces + 1, (4, 5)), np.ones((3, 3), dtype=np.int64))[:12, :14]
    np.testing.assert_array_equal(group_segments(labels, pieces), group_segments_reference(labels, pieces))


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), spacing=st.sampled_from([1, 2]), min_pixels=st.sampled_from([0, 4]),
       sharpness=st.sampled_from([0.0, 2.0]), fill_distance=st.sampled_from([0.0, 3.0]))
def test_depth_split_equals_its_loop_reference(seed, spacing, min_pixels, sharpness, fill_distance):
    from cgc_core.masks.depth_split import split_at_depth_edges, split_at_depth_edges_reference

    rng = np.random.default_rng(seed)
    labels = np.kron(rng.integers(0, 3, (7, 8)), np.ones((2, 2), dtype=np.int64))[:13, :15]
    depth = np.kron(rng.choice([1.0, 1.02, 1.3, 2.0], (5, 5)), np.ones((3, 3)))[:13, :15]
    depth *= 1.0 + 0.03 * rng.random(depth.shape)  # noise, so that sharpness has changes to compare
    depth[rng.random(depth.shape) < 0.05] = 0
    fast = split_at_depth_edges(labels, depth, 0.05, min_pixels, spacing, sharpness, fill_distance)
    reference, ties = split_at_depth_edges_reference(labels, depth, 0.05, min_pixels, spacing, sharpness,
                                                     fill_distance, return_ties=True)
    # Where the nearest kept pixels of two pieces are equally near, either piece is right.
    np.testing.assert_array_equal(fast[~ties], reference[~ties])
    assert (fast[ties] > 0).all()


def _disc_on_checks(cell: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A 120x160 blue-and-white checked cloth (with a little noise) and a plain white disc on it
    (no edge where it meets a white check): the image and the disc's mask."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:120, :160]
    checks = ((y // cell + x // cell) % 2).astype(bool)
    image = np.where(checks[..., None], [40, 80, 200], [235, 235, 230]).astype(float)
    disc = (y - 60) ** 2 + (x - 80) ** 2 < 30**2
    image[disc] = [235, 235, 230]
    image += rng.normal(0, 3, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), disc


def _best_iou(masks: list[np.ndarray], truth: np.ndarray) -> float:
    return max(float((m & truth).sum() / (m | truth).sum()) for m in masks)


def test_texture_generator_finds_a_plain_white_disc_on_a_checked_cloth():
    from cgc_core.config import TextureConfig
    from cgc_core.masks.generators import TextureGenerator

    image, disc = _disc_on_checks()
    masks, size = TextureGenerator(TextureConfig()).segments(image, "view_000.png")
    assert size == (120, 160)
    assert _best_iou(masks, disc) >= 0.85  # the disc is its own segment at some level
    # and the cloth is one segment at some level (the pattern is a region, not 300 checks)
    assert _best_iou(masks, ~disc) >= 0.85


def _assert_nested(levels: np.ndarray) -> None:
    """Every region of a finer level lies inside one region of the next level."""
    for finer, coarser in zip(levels[:-1], levels[1:]):
        pairs = np.unique(np.stack([finer.ravel(), coarser.ravel()]), axis=1)
        assert len(np.unique(pairs[0])) == pairs.shape[1]


def test_texture_levels_nest_and_differ_between_views():
    from cgc_core.config import TextureConfig
    from cgc_core.masks.generators import TextureGenerator

    image, _ = _disc_on_checks(cell=6, seed=1)
    generator = TextureGenerator(TextureConfig())
    levels = generator.levels(image, "view_000.png")
    assert len(levels) == len(TextureConfig().thresholds) and levels.shape[1:] == (120, 160)
    _assert_nested(levels)
    assert len(np.unique(levels[0])) > len(np.unique(levels[-1]))  # the levels are not all the same
    # the same pixels in another view: another draw of the thresholds, other regions somewhere
    other = generator.levels(image, "view_007.png")
    assert any(len(np.unique(a)) != len(np.unique(b)) for a, b in zip(levels, other))
    assert np.array_equal(levels, generator.levels(image, "view_000.png"))  # deterministic per view
    # masks for the store: every region of every level, each once
    masks, _ = generator.segments(image, "view_000.png")
    keys = {np.packbits(m).tobytes() for m in masks}
    assert len(keys) == len(masks)


def _shaded_white_ball(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A white ball lit from the upper left (Lambertian shading from 245 down to about 75) on a
    plain green ground, 120x160: the image and the ball's mask."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:120, :160]
    r2 = ((y - 60) ** 2 + (x - 80) ** 2) / 40**2
    ball = r2 < 1
    normal_z = np.sqrt(np.clip(1 - r2, 0, 1))
    shade = np.clip(0.35 + 0.65 * (-0.5 * (x - 80) / 40 - 0.5 * (y - 60) / 40 + 0.7 * normal_z), 0.3, 1.0)
    image = np.where(ball[..., None], (245 * shade)[..., None] * [1, 1, 0.97], [70, 110, 60])
    image = image + rng.normal(0, 3, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), ball


def test_texture_regions_keep_a_shaded_ball_whole_across_its_gentle_borders():
    import inspect

    from cgc_core.config import TextureConfig
    from cgc_core.masks.regions import texture_regions

    # texture_regions' defaults are the generator's (`masks.texture`), so it is called bare below
    defaults = {k: p.default for k, p in inspect.signature(texture_regions).parameters.items()
                if p.default is not inspect.Parameter.empty}
    assert defaults == {k: getattr(TextureConfig(), k) for k in defaults}
    image, ball = _shaded_white_ball()
    thresholds = TextureConfig().thresholds
    with_borders = texture_regions(image, thresholds)  # the defaults are the generator's
    without = texture_regions(image, thresholds, edge_scale=0.0)

    def finest_iou(levels):
        return _best_iou([levels[0] == k for k in np.unique(levels[0])], ball)

    # By colour alone the shading ramp splits the ball at the finest level (the level training reads);
    # weighed by its borders' contrast, the ball is one region and its outline still holds.
    assert finest_iou(without) < 0.6
    assert finest_iou(with_borders) > 0.95


def test_border_contrast_is_high_along_an_outline_and_low_across_a_ramp():
    from cgc_core.masks.regions import border_contrast

    colour = np.zeros((20, 30, 3))
    colour[:, :, 0] = np.linspace(0, 0.3, 30)  # a gentle ramp: 0.01 per pixel
    colour[:, 20:, 1] = 1.0  # a step at x = 20
    labels = np.zeros((20, 30), dtype=np.int64)
    labels[:, 10:20], labels[:, 20:] = 1, 2
    border = border_contrast(labels, colour)
    assert set(border) == {(0, 1), (1, 2)}
    assert border[(0, 1)][0] == border[(1, 2)][0] == 20  # one neighbouring pair per row
    ramp, outline = (border[k][1] / border[k][0] for k in [(0, 1), (1, 2)])
    assert ramp == pytest.approx(0.01, rel=0.05)
    assert outline > 20 * ramp


def test_texture_regions_refuse_thresholds_that_do_not_increase():
    from cgc_core.masks.regions import texture_regions

    image, _ = _disc_on_checks()
    with pytest.raises(ValueError, match="thresholds must increase"):
        texture_regions(image, [0.2, 0.1])


def test_texture_generator_is_chosen_by_the_config_and_its_masks_nest_in_the_store(tmp_path):
    from cgc_core.masks.generators import TextureGenerator, make_generator
    from cgc_core.scene.model import Scene

    cfg = CgcConfig().masks
    cfg.generator = "texture"
    scene = Scene(name="disc", root=tmp_path, image_dir=tmp_path, image_names=["view_000.png"])
    generator = make_generator(cfg, scene)
    assert isinstance(generator, TextureGenerator)
    image, disc = _disc_on_checks()
    table, (height, width) = generator.generate(image, "view_000.png")
    assert table.column("generator").to_pylist()[0] == "texture" and (height, width) == (120, 160)
    store = _store_roundtrip(tmp_path, np.stack(_decode(table)).astype(bool))
    levels = store.read_label_maps("img.png", 3)
    _assert_nested(levels)  # the store's levels step out from the finest region to the enclosing ones
    centre = levels[:, 60, 80]
    assert any(((levels[level] == centre[level]) == disc).mean() > 0.97 for level in range(3))
