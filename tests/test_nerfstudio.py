"""The nerfstudio reader (`transforms.json`) on a fixture written in that format from the tiny
synthetic scene, whose true poses are known: camera axes, intrinsics, distortion, points, errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from plyfile import PlyData, PlyElement

from cgc_core.scene import SceneError, detect_layout, load_scene


def _write_nerfstudio(scene, out: Path, distort_first: bool = False) -> Path:
    """The scene's images and true cameras as a nerfstudio dataset (OpenGL camera-to-world)."""
    (out / "images").mkdir(parents=True)
    first = scene.cameras[scene.image_names[0]]
    meta = {"camera_model": "OPENCV", "fl_x": first.K[0, 0], "fl_y": first.K[1, 1], "cx": first.K[0, 2],
            "cy": first.K[1, 2], "w": first.width, "h": first.height, "frames": [], "ply_file_path": "sparse_pc.ply"}
    for i, name in enumerate(scene.image_names):
        shutil.copy(scene.image_path(name), out / "images" / Path(name).name)
        c2w = np.linalg.inv(scene.cameras[name].world_to_camera)
        c2w[:3, 1:3] *= -1  # OpenCV -> OpenGL camera axes
        frame = {"file_path": f"./images/{Path(name).name}", "transform_matrix": c2w.tolist()}
        if distort_first and i == 0:
            frame |= {"k1": -0.05, "k2": 0.01, "p1": 0.001, "p2": -0.002, "fl_x": 150.0}
        meta["frames"].append(frame)
    (out / "transforms.json").write_text(json.dumps(meta))
    rng = np.random.default_rng(0)  # points on and above the table the cameras look at
    points = rng.uniform([-0.5, -0.5, 0.0], [0.5, 0.5, 0.3], size=(200, 3))
    colours = rng.integers(0, 256, size=(200, 3))
    vertex = np.array([(*p, *c) for p, c in zip(points, colours)],
                      dtype=[("x", "f4"), ("y", "f4"), ("z", "f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1")])
    PlyData([PlyElement.describe(vertex, "vertex")]).write(str(out / "sparse_pc.ply"))
    return out, points


def test_nerfstudio_cameras_points_and_distortion_match_the_truth(tiny_scene_dir, tmp_path):
    truth = load_scene(tiny_scene_dir)
    root, points = _write_nerfstudio(truth, tmp_path / "ns", distort_first=True)
    assert detect_layout(root) == "nerfstudio"
    scene = load_scene(root)
    assert scene.layout == "nerfstudio" and len(scene.image_names) == len(truth.image_names)
    for name in truth.image_names:
        ours, true = scene.cameras[f"images/{Path(name).name}"], truth.cameras[name]
        np.testing.assert_allclose(ours.world_to_camera, true.world_to_camera, atol=1e-9)
        np.testing.assert_allclose(ours.center, true.center, atol=1e-9)
    # A frame's own keys override the shared intrinsics; its distortion keeps COLMAP's parameter order.
    distorted = scene.cameras[scene.image_names[0]]
    assert distorted.distortion_model == "OPENCV" and distorted.K[0, 0] == 150.0
    assert distorted.distortion_params == (150.0, truth.cameras[truth.image_names[0]].K[1, 1],
                                           distorted.K[0, 2], distorted.K[1, 2], -0.05, 0.01, 0.001, -0.002)
    assert scene.cameras[scene.image_names[1]].distortion_model is None
    np.testing.assert_allclose(scene.points, points, atol=1e-6)
    assert scene.point_colors.shape == (200, 3) and scene.point_colors.dtype == np.uint8
    # A known projection: each object's centre, through the converted camera, lands on that
    # object's pixels in the rendered ground-truth instance map.
    from PIL import Image

    from cgc_core.scene.synthetic import read_ground_truth

    analytic = read_ground_truth(tiny_scene_dir)
    hits = 0
    for name in truth.image_names:
        cam = scene.cameras[f"images/{Path(name).name}"]
        ids = np.asarray(Image.open(tiny_scene_dir / "ground_truth" / f"instance_{Path(name).stem}.png"))
        depth = np.load(tiny_scene_dir / "ground_truth" / f"depth_{Path(name).stem}.npy")
        for k, obj in enumerate(analytic.objects, start=1):
            if obj.kind != "sphere":
                continue  # a sphere's centre projects inside its own silhouette
            x = cam.world_to_camera[:3, :3] @ np.asarray(obj.center) + cam.world_to_camera[:3, 3]
            u, v = (cam.K @ x)[:2] / x[2]
            if not (0 <= u < cam.width and 0 <= v < cam.height and x[2] > 0):
                continue
            if depth[int(v), int(u)] < x[2] - obj.size[0] - 1e-3:
                continue  # something stands in front of the sphere there
            hits += 1
            assert ids[int(v), int(u)] == k, (name, obj.name)
    assert hits >= 1
    # OpenCV axes: a sparse point seen by a camera lies in front of it (camera z > 0) and projects
    # inside its image, as with the true cameras.
    cam = scene.cameras[scene.image_names[1]]
    cam_points = scene.points @ cam.world_to_camera[:3, :3].T + cam.world_to_camera[:3, 3]
    assert (cam_points[:, 2] > 0).mean() > 0.9
    pixels = cam_points @ cam.K.T
    inside = (pixels[:, 0] / pixels[:, 2] >= 0) & (pixels[:, 0] / pixels[:, 2] < cam.width)
    assert inside.mean() > 0.5


@pytest.mark.parametrize("change, needle", [
    (lambda m: m.pop("fl_x"), "no fl_x at the top level or in the frame"),
    (lambda m: m["frames"][0].update(file_path="../outside.png"), "must stay inside the dataset folder"),
    (lambda m: m["frames"][0].update(file_path="images/missing.png"), "missing.png: image file not found"),
    (lambda m: m.update(camera_model="EQUIRECTANGULAR"), "camera_model 'EQUIRECTANGULAR' is not supported"),
    (lambda m: m["frames"][1].update(transform_matrix=[[1, 0], [0, 1]]), "frame 1: transform_matrix must be 4x4"),
    (lambda m: m.update(frames=[]), "transforms.json: no frames"),
])
def test_bad_nerfstudio_files_are_named_errors(tiny_scene_dir, tmp_path, change, needle):
    root, _ = _write_nerfstudio(load_scene(tiny_scene_dir), tmp_path / "ns")
    meta = json.loads((root / "transforms.json").read_text())
    change(meta)
    (root / "transforms.json").write_text(json.dumps(meta))
    with pytest.raises(SceneError, match=needle):
        load_scene(root)
