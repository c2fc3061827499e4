"""The viewer: its pure parts (camera conversion, click -> mask, selection -> export) and, when
Chromium is installed, the real thing driven in a headless browser."""

from __future__ import annotations

import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from cgc_core.gaussians import load_ply
from cgc_core.scene.model import Camera
from cgc_core.scene.synthetic import look_at
from cgc_core.viewer import ViewerSession, camera_from_viser, camera_to_viser


def _camera(width=64, height=48):
    K = np.array([[50.0, 0, width / 2], [0, 50.0, height / 2], [0, 0, 1]])
    return Camera(K, look_at(np.array([0.3, -3.0, 0.8]), np.zeros(3)), width, height, "v")


def _two_blobs():
    """Two opaque blobs left and right of the view centre with different features."""
    g = torch.Generator().manual_seed(0)
    means = torch.tensor([[-0.6, 0.0, 0.0], [0.6, 0.0, 0.0]]).repeat_interleave(60, 0)
    means = means + 0.05 * torch.randn(120, 3, generator=g)
    features = torch.zeros(120, 16)
    features[:60, 0] = 1.0
    features[60:, 1] = 1.0
    n = 120
    return {"means": means, "quats": torch.tensor([[1.0, 0, 0, 0]]).repeat(n, 1), "scales": torch.full((n, 3), -2.5),
            "opacities": torch.full((n,), 4.0), "sh0": torch.rand(n, 1, 3, generator=g), "shN": torch.zeros(n, 15, 3),
            "features": features}


def test_viser_camera_conversion_round_trips():
    camera = _camera()
    wxyz, position, fov_y = camera_to_viser(camera)
    back = camera_from_viser(wxyz, position, fov_y, camera.width / camera.height, max_side=camera.width)
    assert np.allclose(back.world_to_camera, camera.world_to_camera, atol=1e-9)
    assert np.allclose(back.K, camera.K, atol=1e-9) and (back.width, back.height) == (64, 48)
    portrait = camera_from_viser(wxyz, position, fov_y, 0.5, max_side=100)
    assert (portrait.width, portrait.height) == (50, 100)


def test_click_selects_the_clicked_blob_and_export_holds_its_gaussians(tmp_path):
    params = _two_blobs()
    session = ViewerSession(params, backend="torch")
    camera = _camera()
    frame = session.render_view(camera)
    assert frame.image.shape == (48, 64, 3) and session.mask(frame.features) is None
    # The projection of the left blob's centre, in normalised image coordinates.
    uv, _ = camera.project(np.array([[-0.6, 0.0, 0.0]]))
    mask = session.click(uv[0, 0] / camera.width, uv[0, 1] / camera.height)
    cols = np.nonzero(mask.any(0))[0]
    assert mask.sum() > 50 and cols.max() < 32  # the left half only
    overlaid = session.render_view(camera).image
    assert np.allclose(overlaid[mask].mean(0), 0.45 * frame.rgb[mask].mean(0) + 0.55 * np.array([1, 0, 1]), atol=1e-5)
    path, count = session.export(tmp_path / "left.ply")
    exported = load_ply(path)
    # Only left-blob Gaussians; the spatial outlier removal may drop a few of its tails.
    left = {tuple(m) for m in params["means"][:60].tolist()}
    assert 54 <= count <= 60 and all(tuple(m) in left for m in exported["means"].tolist())
    # shift-click on the right blob adds it
    uv, _ = camera.project(np.array([[0.6, 0.0, 0.0]]))
    both = session.click(uv[0, 0] / camera.width, uv[0, 1] / camera.height, add=True)
    assert both.sum() > mask.sum() and session.selected_gaussians().sum() >= 108
    # Remove the (left) selection: the right blob stays, and `cgc edit`'s files are written.
    session.click(uv[0, 0] / camera.width, uv[0, 1] / camera.height)  # the right blob alone
    path, edit = session.edit("remove", tmp_path / "edit.ply", {"v": camera})
    assert edit.kept[:60].all() and edit.kept[60:].sum() <= 6  # the cleaning may leave a few of its tails
    assert len(load_ply(path)["means"]) == int(edit.kept.sum())
    assert (tmp_path / "edit_turntable.gif").is_file() and (tmp_path / "edit_before_after" / "v.png").is_file()
    session.clear()
    with pytest.raises(ValueError, match="nothing selected"):
        session.export(tmp_path / "none.ply")
    with pytest.raises(ValueError, match="selects no Gaussian"):
        session.edit("keep", tmp_path / "none.ply", {"v": camera})


def test_coarser_and_finer_steps_grow_a_click_to_its_whole_object_and_back():
    from cgc_core.hierarchy import ClusterTree

    params = _two_blobs()  # the two blobs stand for two parts of one object: the tree joins them
    tree = ClusterTree(np.eye(2, 16, dtype=np.float32), np.array([[0, 1]]), np.array([1.0]))
    session = ViewerSession(params, backend="torch", tree=tree)
    camera = _camera()
    session.render_view(camera)
    uv, _ = camera.project(np.array([[-0.6, 0.0, 0.0]]))
    part = session.click(uv[0, 0] / camera.width, uv[0, 1] / camera.height)
    left = session.selected_gaussians()
    assert left[:60].sum() >= 54 and not left[60:].any()
    assert session.coarser() == 1 and session.coarser() == 1  # clamped at the root
    whole = session.mask(session.last.features)
    assert whole.sum() > part.sum() + 50 and (whole & part).sum() == part.sum()
    assert session.selected_gaussians().sum() >= 108
    assert session.finer() == 0 and session.finer() == 0
    np.testing.assert_array_equal(session.mask(session.last.features), part)
    session.coarser()
    session.click(uv[0, 0] / camera.width, uv[0, 1] / camera.height)  # a new click starts at its part
    assert session.steps == 0
    with pytest.raises(ValueError, match="no cluster tree"):
        ViewerSession(params, backend="torch").coarser()


def test_text_prompt_selects_through_the_selection_service():
    from cgc_core.selection import Selector

    params = _two_blobs()
    camera = _camera()
    uv, _ = camera.project(np.array([[0.6, 0.0, 0.0]]))
    u, v = int(uv[0, 0]), int(uv[0, 1])
    boxes = {"right blob": [u - 2, v - 2, u + 3, v + 3], "ghost": None}

    def detector(image, text):  # stands in for Grounding DINO: a fixed box around the right blob
        return None if boxes[text] is None else (boxes[text], 0.9)

    def segmenter(image, box):  # stands in for SAM: the box itself
        mask = np.zeros(image.shape[:2], bool)
        mask[box[1]:box[3], box[0]:box[2]] = True
        return mask

    session = ViewerSession(params, backend="torch",
                            selector=Selector(threshold=0.7, detector=detector, segmenter=segmenter))
    session.render_view(camera)
    mask = session.text("right blob")
    cols = np.nonzero(mask.any(0))[0]
    assert mask.sum() > 50 and cols.min() >= 32  # the right half only
    assert session.selected_gaussians()[60:].sum() >= 54 and not session.selected_gaussians()[:60].any()
    assert session.text("ghost") is None and session.mask(session.last.features).sum() == mask.sum()  # unchanged
    session.threshold = 1.01
    assert session.selector.threshold == 1.01 and not session.mask(session.last.features).any()


def test_view_modes_render_images():
    session = ViewerSession(_two_blobs(), backend="torch", cluster_labels=np.repeat([0, 1], 60))
    camera = _camera()
    for mode in ("pca", "clusters", "similarity"):
        session.mode = mode
        image = session.render_view(camera).image
        assert image.shape == (48, 64, 3) and np.isfinite(image).all() and image.min() >= 0 and image.max() <= 1
    session.render_view(camera)
    with pytest.raises(ValueError, match="nothing is rendered at pixel"):
        session.click(0.01, 0.01)  # empty background: no feature to query
    uv, _ = camera.project(np.array([[0.6, 0.0, 0.0]]))
    session.click(uv[0, 0] / camera.width, uv[0, 1] / camera.height)
    sim = session.render_view(camera).image
    assert sim.std() > 0.05  # a similarity map, not a flat image


@pytest.fixture(scope="module")
def trained_tiny(tmp_path_factory):
    """The tiny scene trained and clustered (`TINY_TRAINED` and a data folder of its own)."""
    from cgc_core.config import load_config
    from cgc_core.pipeline import run_scene_stage

    data = tmp_path_factory.mktemp("viewer") / "data"
    cfg = load_config(None, [f"data_dir={data}", *TINY_TRAINED])
    for stage in ("scene", "calibrate", "masks", "train", "cluster"):
        run_scene_stage(cfg, "synthetic", stage)
    return cfg


TINY_TRAINED = ["synthetic.preset=tiny", "synthetic.supersample=1", "calibrate.mode=known_poses",
                "train.iterations=400", "cluster.min_cluster_size=20"]


def test_cgc_view_stops_on_sigterm_without_a_native_stack_trace(trained_tiny):
    # pycolmap's glog handler used to catch SIGTERM and print "*** SIGTERM received ... stack trace".
    overrides = [f"data_dir={trained_tiny.data_dir}", *TINY_TRAINED]
    viewer = subprocess.Popen([sys.executable, "-m", "cgc_core.cli", "view", "--scene", "synthetic", "--port", "0",
                               *[a for o in overrides for a in ("--set", o)]],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and viewer.poll() is None:
            if select.select([viewer.stdout], [], [], 5)[0] and "cgc viewer: http" in viewer.stdout.readline():
                break
        else:
            viewer.kill()
            pytest.fail(f"the viewer did not start: {viewer.communicate(timeout=60)[1][-3000:]}")
        viewer.send_signal(signal.SIGTERM)
        _, err = viewer.communicate(timeout=60)
    finally:
        viewer.kill()
    assert viewer.returncode == 0, err
    assert "SIGTERM" not in err and "stack trace" not in err, err


def test_viewer_in_headless_chromium_click_overlay_and_export(request, tmp_path, chromium):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (Python client) is not installed")
    trained_tiny = request.getfixturevalue("trained_tiny")  # trained only when the browser test can run
    from PIL import Image

    from cgc_core.scene.synthetic import read_ground_truth
    from cgc_core.viewer import load_session, serve

    session, cameras, export_dir = load_session(trained_tiny, "synthetic")
    scene_root = Path(trained_tiny.data_dir) / "synthetic" / "scene"
    # Start at the view whose centre pixel lies deepest inside an object, and click the centre.
    best = None
    for name in cameras:
        ids = np.asarray(Image.open(scene_root / "ground_truth" / f"instance_{Path(name).stem}.png"))
        h, w = ids.shape
        obj = int(ids[h // 2, w // 2])
        if obj and (best is None or (ids == obj).sum() > best[2]):
            best = (name, obj, int((ids == obj).sum()))
    view, clicked, _ = best
    server = serve(session, cameras, export_dir, port=0, start_view=view)
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=[
                "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run"])
            page = browser.new_page(viewport={"width": 960, "height": 640})
            page.goto(f"http://127.0.0.1:{server.get_port()}")
            page.get_by_text("Click the image to select an object").wait_for(timeout=60_000)
            page.wait_for_timeout(3000)  # the first background render
            box = page.locator("canvas").first.bounding_box()
            page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
            status = page.get_by_text("Gaussians; mask")
            status.wait_for(timeout=60_000)
            pixels = int(status.inner_text().split("mask ")[1].split(" pixels")[0])
            page.get_by_role("button", name="Coarser", exact=True).click()  # a step up the cluster tree, then back
            page.get_by_text(f"{min(1, session.tree.depth(session.queries[-1]))} coarser step(s)").wait_for(timeout=60_000)
            page.get_by_role("button", name="Finer", exact=True).click()
            page.get_by_text("0 coarser step(s)").wait_for(timeout=60_000)
            page.get_by_text("Export selection").click()
            page.get_by_text("exported").wait_for(timeout=60_000)
            page.get_by_role("button", name="Keep selection", exact=True).click()  # only the clicked object stays
            page.get_by_text("kept the selection").wait_for(timeout=120_000)
            kept_text = page.get_by_text("kept the selection").inner_text()
            page.screenshot(path=str(tmp_path / "viewer.png"))
            browser.close()
    finally:
        server.stop()
    assert pixels > 100  # the mask overlay appeared
    shown, total = (int(v) for v in kept_text.split(": ")[1].split(" Gaussians")[0].split(" of "))
    assert 0 < shown < total and (export_dir / "edit_000.ply").is_file()  # the splats changed to the edit
    exported = load_ply(export_dir / "selection_000.ply")
    truth, _ = read_ground_truth(scene_root).nearest_object(exported["means"].numpy())
    assert np.bincount(truth).argmax() == clicked  # the export holds (mostly) the clicked object's Gaussians
    assert (tmp_path / "viewer.png").stat().st_size > 10_000


def test_splat_arrays_hold_each_gaussians_covariance_colour_and_opacity():
    from cgc_core.gaussians import SH_C0
    from cgc_core.viewer import OVERLAY, splat_arrays

    params = {"means": torch.tensor([[0.0, 0.0, 0.0], [1.0, 2.0, 3.0]]),
              "quats": torch.tensor([[2.0, 0.0, 0.0, 0.0], [np.cos(np.pi / 4), 0.0, 0.0, np.sin(np.pi / 4)]]),
              "scales": torch.log(torch.tensor([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]])),
              "opacities": torch.tensor([0.0, 100.0]), "sh0": torch.zeros(2, 1, 3), "shN": torch.zeros(2, 0, 3)}
    params["sh0"][1, 0] = torch.tensor([1.0, -1.0, 0.0]) / SH_C0 * 0.25
    splats = splat_arrays(params, highlight=np.array([False, True]))
    np.testing.assert_allclose(splats["covariances"][0], np.diag([1.0, 4.0, 9.0]), atol=1e-5)  # unnormalised quat: identity
    np.testing.assert_allclose(splats["covariances"][1], np.diag([4.0, 1.0, 9.0]), atol=1e-5)  # 90 degrees about z
    np.testing.assert_allclose(splats["opacities"][:, 0], [0.5, 1.0], atol=1e-6)
    np.testing.assert_allclose(splats["rgbs"][0], [0.5, 0.5, 0.5], atol=1e-6)
    np.testing.assert_allclose(splats["rgbs"][1], 0.3 * np.array([0.75, 0.25, 0.5]) + 0.7 * np.asarray(OVERLAY), atol=1e-5)
