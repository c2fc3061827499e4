"""A video as a scene source: frames decoded with PyAV, sampled evenly, the blurred ones dropped,
cached as the scene stage."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from cgc_core.config import CgcConfig, VideoConfig
from cgc_core.scene import load_scene
from cgc_core.scene.model import SceneError
from cgc_core.scene.video import extract_frames, sharpness


def _write_video(frames: list[np.ndarray], path: Path) -> Path:
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        stream.options = {"qscale": "2"}
        for image in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())
    return path


def _sharp_and_blurred(tiny_scene_dir) -> list[np.ndarray]:
    # Every second frame is the previous one, motion-blurred: the extraction must keep the sharp ones.
    scene = load_scene(tiny_scene_dir)
    frames = []
    for name in scene.image_names[:6]:
        image = Image.open(scene.image_path(name)).convert("RGB")
        frames += [np.asarray(image), np.asarray(image.filter(ImageFilter.GaussianBlur(3)))]
    return frames


def test_video_frames_are_sampled_and_the_blurred_ones_dropped(tiny_scene_dir, tmp_path):
    frames = _sharp_and_blurred(tiny_scene_dir)
    assert all(sharpness(frames[i]) > 2 * sharpness(frames[i + 1]) for i in range(0, len(frames), 2))
    video = _write_video(frames, tmp_path / "capture.mp4")
    done = extract_frames(video, tmp_path / "out", VideoConfig(frames=6, candidates=2.0))
    assert done["decoded"] == 12 and done["kept_indices"] == [0, 2, 4, 6, 8, 10]
    written = sorted((tmp_path / "out" / "images").glob("*.png"))
    assert len(written) == 6
    first = np.asarray(Image.open(written[0])).astype(float)
    assert np.abs(first - frames[0]).mean() < np.abs(first - frames[1]).mean()


def test_a_video_source_is_a_cached_scene_stage(tiny_scene_dir, tmp_path):
    from cgc_core.pipeline import scene_name_of, scene_stage

    video = _write_video(_sharp_and_blurred(tiny_scene_dir), tmp_path / "desk.mov")
    cfg = CgcConfig(data_dir=str(tmp_path / "data"))
    cfg.video.frames, cfg.video.max_side = 4, 96
    scene, result = scene_stage(cfg, str(video))
    assert scene_name_of(str(video)) == scene.name == "desk" and not result.cached
    assert len(scene.image_names) == 4 and scene.layout == "photos" and not scene.has_poses
    assert max(np.asarray(Image.open(scene.image_path(scene.image_names[0]))).shape[:2]) == 96
    again_scene, again = scene_stage(cfg, str(video))
    assert again.cached and again_scene.image_names == scene.image_names
    (tmp_path / "broken.mp4").write_bytes(b"not a video at all")
    with pytest.raises(SceneError, match="broken.mp4: not a readable video"):
        scene_stage(cfg, str(tmp_path / "broken.mp4"))
    # Nothing half-written: no scene folder and no partial work folder for the broken video.
    leftovers = [p.name for p in (tmp_path / "data" / "broken").glob("*") if not p.name.endswith(".lock")]
    assert leftovers == [], leftovers


def test_a_video_of_the_bonsai_photos_becomes_its_frames(shared_dir, tmp_path):
    # A real capture: the 42 bonsai photos, downscaled, as a 42-frame video; 14 frames kept (the
    # sharpest of each run of 3), in order, at the configured size.
    photos = sorted((shared_dir / "data" / "bonsai").glob("*.JPG"))
    assert len(photos) == 42
    frames = [np.asarray(Image.open(p).convert("RGB").resize((240, 160))) for p in photos]
    video = _write_video(frames, tmp_path / "bonsai.mp4")
    done = extract_frames(video, tmp_path / "out", VideoConfig(frames=14, candidates=3.0, max_side=200))
    assert done["decoded"] == 42 and done["kept"] == 14
    assert all(3 * k <= i < 3 * (k + 1) for k, i in enumerate(done["kept_indices"]))  # one per run of 3, in order
    first = np.asarray(Image.open(tmp_path / "out" / "images" / "frame_0000.png"))
    assert first.shape == (133, 200, 3)
