"""Readers of every layout, on small fixtures written here in each published on-disk format.

The pose checks are physical rather than a mirror of the conversion code: a camera described in
the layout's own convention as "at (0, 0, 5), looking down -z, y up" must see the world point
(1, 0.5, 0) right of and above the image centre, at depth 5.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image
from scipy.spatial.transform import Rotation

from cgc_core.scene import SceneError, detect_layout, load_scene

POINT = np.array([[1.0, 0.5, 0.0]])


def _write_images(folder, names, size=(40, 30), mode="RGB"):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in names:
        channels = 4 if mode == "RGBA" else 3
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], channels), dtype=np.uint8), mode).save(folder / name)


def _expect_point_right_and_above(camera, focal):
    uv, depth = camera.project(POINT)
    cx, cy = camera.K[0, 2], camera.K[1, 2]
    np.testing.assert_allclose(depth, [5.0], atol=1e-9)
    np.testing.assert_allclose(uv[0], [cx + focal * 1.0 / 5.0, cy - focal * 0.5 / 5.0], atol=1e-9)


def _write_colmap_text(model_dir, cams, fx=50.0, fy=52.0, cx=20.0, cy=15.0, size=(40, 30)):
    """A legacy COLMAP text model (cameras.txt, images.txt, points3D.txt) as older COLMAP writes it."""
    model_dir.mkdir(parents=True)
    (model_dir / "cameras.txt").write_text(f"# Camera list\n1 PINHOLE {size[0]} {size[1]} {fx} {fy} {cx} {cy}\n")
    lines = ["# Image list"]
    for image_id, (name, quat_wxyz, t) in enumerate(cams, start=1):
        lines.append(f"{image_id} {' '.join(map(str, quat_wxyz))} {' '.join(map(str, t))} 1 {name}")
        lines.append("")
    (model_dir / "images.txt").write_text("\n".join(lines) + "\n")
    (model_dir / "points3D.txt").write_text("1 0.5 0.25 2.0 255 0 0 0.1\n2 -1 0 3 0 255 0 0.1\n")


def _random_pose(seed):
    rot = Rotation.random(random_state=seed)
    xyzw = rot.as_quat()
    wxyz = [xyzw[3], *xyzw[:3]]
    t = np.random.default_rng(seed).normal(size=3)
    return wxyz, t, rot.as_matrix()


def test_colmap_text_model_gives_world_to_camera_from_wxyz_quaternions(tmp_path):
    names = ["a.png", "b.png"]
    _write_images(tmp_path / "images", names)
    poses = [_random_pose(s) for s in (1, 2)]
    _write_colmap_text(tmp_path / "sparse" / "0", [(n, q, t) for n, (q, t, _) in zip(names, poses)])
    scene = load_scene(tmp_path)
    assert scene.layout == "colmap"
    assert scene.image_names == names and scene.train_names == names
    for name, (_, t, rotation) in zip(names, poses):
        cam = scene.cameras[name]
        np.testing.assert_allclose(cam.world_to_camera[:3, :3], rotation, atol=1e-9)
        np.testing.assert_allclose(cam.world_to_camera[:3, 3], t, atol=1e-9)
        np.testing.assert_allclose(cam.K, [[50, 0, 20], [0, 52, 15], [0, 0, 1]])
        assert (cam.width, cam.height) == (40, 30)
        np.testing.assert_allclose(cam.center, -rotation.T @ t, atol=1e-9)
    np.testing.assert_allclose(scene.points, [[0.5, 0.25, 2.0], [-1, 0, 3]])
    np.testing.assert_array_equal(scene.point_colors, [[255, 0, 0], [0, 255, 0]])


def test_colmap_binary_model_round_trips_through_writer(tmp_path):
    from cgc_core.scene.colmap import write_model

    _write_images(tmp_path / "images", ["a.png"])
    _write_colmap_text(tmp_path / "txt", [("a.png", *_random_pose(3)[:2])])
    shutil.copytree(tmp_path / "txt", tmp_path / "sparse" / "0")
    original = load_scene(tmp_path)
    shutil.rmtree(tmp_path / "sparse")
    write_model(list(original.cameras.values()), tmp_path / "sparse" / "0")
    assert (tmp_path / "sparse" / "0" / "images.bin").is_file()
    again = load_scene(tmp_path)
    cam, cam2 = original.cameras["a.png"], again.cameras["a.png"]
    np.testing.assert_allclose(cam2.world_to_camera, cam.world_to_camera, atol=1e-12)
    np.testing.assert_allclose(cam2.K, cam.K)


def _write_lerf_mask(root, n_images=6, train=(0, 2, 3, 5)):
    names = [f"frame_{i:05d}.jpg" for i in range(n_images)]
    _write_images(root / "images", names)
    _write_images(root / "images_train", [names[i] for i in train])
    _write_colmap_text(root / "sparse" / "0", [(n, *_random_pose(i)[:2]) for i, n in enumerate(names)])
    for index, prompts in {0: ["green apple", "rubber duck with red hat"], 1: ["green apple"]}.items():
        folder = root / "test_mask" / str(index)
        folder.mkdir(parents=True)
        for prompt in prompts:
            mask = np.zeros((30, 40), np.uint8)
            mask[5:10, 5:20] = 200 if prompt == "green apple" else 100  # 100 is below the >128 threshold
            Image.fromarray(mask).save(folder / f"{prompt}.png")
    return names


def test_lerf_mask_split_and_test_view_indices(tmp_path):
    names = _write_lerf_mask(tmp_path)
    scene = load_scene(tmp_path)
    assert scene.layout == "lerf_mask"
    assert scene.train_names == [names[i] for i in (0, 2, 3, 5)]
    # test views: images not in images_train, in sorted order -> index 0 is frame 1, index 1 is frame 4
    assert scene.test_names == [names[1], names[4]]
    assert set(scene.gt_masks[names[1]]) == {"green apple", "rubber duck with red hat"}
    assert set(scene.gt_masks[names[4]]) == {"green apple"}
    assert scene.prompts == ["green apple", "rubber duck with red hat"]
    apple = scene.load_gt_mask(names[1], "green apple")
    assert apple.dtype == bool and apple.sum() == 5 * 15
    assert scene.load_gt_mask(names[1], "rubber duck with red hat").sum() == 0  # binarised at > 128


def test_lerf_mask_errors_name_the_file(tmp_path):
    _write_lerf_mask(tmp_path)
    (tmp_path / "test_mask" / "7").mkdir()
    with pytest.raises(SceneError, match=r"test_mask/7: test view index 7 but only 2 images"):
        load_scene(tmp_path)
    shutil.rmtree(tmp_path / "test_mask" / "7")
    _write_images(tmp_path / "images_train", ["stranger.jpg"])
    with pytest.raises(SceneError, match=r"images_train: training images not in images/: \['stranger.jpg'\]"):
        load_scene(tmp_path)


def test_ovs3d_llff_poses_are_converted_to_opencv(tmp_path):
    names = [f"{i:02d}.jpg" for i in range(3)]
    _write_images(tmp_path / "images", names, size=(40, 30))
    # LLFF rows: rotation columns (down, right, backwards), camera centre, (H, W, focal) at the
    # original resolution 60x80; the images on disk are half that, so the focal halves too.
    pose = np.zeros((3, 5))
    pose[:, 0] = [0, -1, 0]  # down = -y (y is up)
    pose[:, 1] = [1, 0, 0]  # right = +x
    pose[:, 2] = [0, 0, 1]  # backwards = +z: the camera looks down -z
    pose[:, 3] = [0, 0, 5]
    pose[:, 4] = [60, 80, 100.0]
    rows = np.stack([np.concatenate([pose.ravel(), [0.1, 10.0]])] * 3)
    np.save(tmp_path / "poses_bounds.npy", rows)
    seg = tmp_path / "segmentations"
    seg.mkdir()
    (seg / "classes.txt").write_text("banana\nred bag\n")
    (seg / "01").mkdir()
    Image.fromarray(np.full((30, 40), 255, np.uint8)).save(seg / "01" / "banana.png")
    scene = load_scene(tmp_path)
    assert scene.layout == "ovs3d"
    assert scene.prompts == ["banana", "red bag"]
    assert scene.test_names == ["01.jpg"] and scene.train_names == names
    cam = scene.cameras["00.jpg"]
    assert (cam.width, cam.height) == (40, 30)
    np.testing.assert_allclose(cam.K, [[50, 0, 20], [0, 50, 15], [0, 0, 1]])
    _expect_point_right_and_above(cam, focal=50.0)


def test_ovs3d_segmentation_folders_are_sorted_image_indices_and_masks_are_exactly_255(tmp_path):
    # file names whose sorted order differs from their numbers: "10.jpg" sorts before "2.jpg"
    names = ["1.jpg", "10.jpg", "2.jpg"]
    _write_images(tmp_path / "images", names, size=(40, 30))
    pose = np.concatenate([np.eye(3), np.zeros((3, 1)), [[30], [40], [50.0]]], axis=1)
    np.save(tmp_path / "poses_bounds.npy", np.stack([np.concatenate([pose.ravel(), [0.1, 10.0]])] * 3))
    seg = tmp_path / "segmentations"
    (seg / "2").mkdir(parents=True)
    (seg / "classes.txt").write_text("banana\n")
    mask = np.zeros((30, 40), np.uint8)
    mask[:10] = 255
    mask[10:20] = 254  # the loader's `// 255` keeps only 255; the LERF-Mask rule (> 128) would keep these
    Image.fromarray(mask).save(seg / "2" / "banana.png")
    scene = load_scene(tmp_path)
    assert sorted(names) == ["1.jpg", "10.jpg", "2.jpg"]
    assert scene.test_names == ["2.jpg"]  # folder 2 is the third image in sorted order, "2.jpg" here
    assert scene.load_gt_mask("2.jpg", "banana").sum() == 10 * 40
    (seg / "2").rename(seg / "1")
    assert load_scene(tmp_path).test_names == ["10.jpg"]  # folder 1: the second sorted image, not "1.jpg"
    (seg / "7").mkdir()
    with pytest.raises(SceneError, match=r"segmentations/7: image index 7 but .* has 3 images"):
        load_scene(tmp_path)


def test_ovs3d_errors(tmp_path):
    _write_images(tmp_path / "images", ["0.jpg", "1.jpg"])
    np.save(tmp_path / "poses_bounds.npy", np.zeros((2, 15)))
    (tmp_path / "segmentations").mkdir()
    with pytest.raises(SceneError, match=r"poses_bounds.npy: expected an array of shape \[N, 17\]"):
        load_scene(tmp_path)
    np.save(tmp_path / "poses_bounds.npy", np.zeros((3, 17)))
    with pytest.raises(SceneError, match="3 poses but 2 images"):
        load_scene(tmp_path)


def test_blender_opengl_poses_and_alpha_compositing(tmp_path):
    (tmp_path / "train").mkdir()
    rgba = np.zeros((30, 40, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[:15, :, 3] = 255  # top half opaque red, bottom half fully transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "train" / "r_0.png")
    c2w = np.eye(4)
    c2w[2, 3] = 5.0  # OpenGL camera at (0, 0, 5) looking down -z, y up
    fov = 2 * np.arctan(20 / 50.0)  # focal 50 px for a 40 px wide image
    meta = {"camera_angle_x": fov, "frames": [{"file_path": "./train/r_0", "transform_matrix": c2w.tolist()}]}
    (tmp_path / "transforms_train.json").write_text(json.dumps(meta))
    scene = load_scene(tmp_path)
    assert scene.layout == "blender" and scene.train_names == ["train/r_0.png"]
    cam = scene.cameras["train/r_0.png"]
    np.testing.assert_allclose(cam.K[0, 0], 50.0)
    _expect_point_right_and_above(cam, focal=50.0)
    image = scene.load_image("train/r_0.png")
    np.testing.assert_allclose(image[0, 0], [1, 0, 0])
    np.testing.assert_allclose(image[-1, -1], [1, 1, 1])  # composited on the white default background
    alpha = scene.load_alpha("train/r_0.png")
    assert alpha[:15].min() == 1.0 and alpha[15:].max() == 0.0


def test_blender_malformed_transforms_names_file(tmp_path):
    (tmp_path / "transforms_train.json").write_text('{"frames": []}')
    with pytest.raises(SceneError, match=r"transforms_train.json: malformed transforms file"):
        load_scene(tmp_path)


def test_plain_photo_folder_has_no_poses(tmp_path):
    _write_images(tmp_path / "images", ["b.jpg", "a.jpg"])
    scene = load_scene(tmp_path)
    assert scene.layout == "photos" and not scene.has_poses
    assert scene.image_names == ["a.jpg", "b.jpg"]


def test_missing_and_corrupt_files_are_named(tmp_path):
    with pytest.raises(SceneError, match="dataset folder not found"):
        load_scene(tmp_path / "absent")
    (tmp_path / "empty" / "images").mkdir(parents=True)
    with pytest.raises(SceneError, match=r"empty/images: no images"):
        load_scene(tmp_path / "empty")
    (tmp_path / "bad" / "images").mkdir(parents=True)
    (tmp_path / "bad" / "images" / "x.png").write_bytes(b"not a png")
    scene = load_scene(tmp_path / "bad")
    with pytest.raises(SceneError, match=r"x.png: not an image"):
        scene.load_image("x.png")
    (tmp_path / "bad" / "sparse" / "0").mkdir(parents=True)
    (tmp_path / "bad" / "sparse" / "0" / "cameras.txt").write_text("1 PINHOLE\n")
    (tmp_path / "bad" / "sparse" / "0" / "images.txt").write_text("")
    with pytest.raises(SceneError, match=r"sparse/0: cannot read COLMAP model"):
        load_scene(tmp_path / "bad")


def test_detect_layout(tmp_path, tiny_scene_dir):
    assert detect_layout(tiny_scene_dir) == "synthetic"
    _write_images(tmp_path / "images", ["a.png"])
    assert detect_layout(tmp_path) == "photos"
