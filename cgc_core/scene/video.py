"""A video file as a scene: frames decoded with PyAV, sampled evenly, the blurriest dropped.

`extract_frames` writes `images/frame_XXXX.png` into a folder (the scene stage's), which is then a
plain photo folder: calibration (SfM) supplies the poses. Sharpness is the variance of the
Laplacian of the grey image, the usual focus measure: a motion-blurred frame has little
high-frequency energy and scores low.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from ..config import VideoConfig
from .model import SceneError

VIDEO_SUFFIXES = (".mp4", ".mov", ".m4v", ".avi", ".mkv", ".webm")


def is_video(path: str | Path) -> bool:
    path = Path(path)
    return path.is_file() and path.suffix.lower() in VIDEO_SUFFIXES


def sharpness(image: np.ndarray) -> float:
    """Variance of the Laplacian of an [H, W, 3] uint8 image's luminance (higher is sharper)."""
    grey = image.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    return float(ndimage.laplace(grey).var())


def _decode(path: Path, wanted: int, max_side: int) -> list[np.ndarray]:
    """About `wanted` frames evenly spread over the video, as RGB arrays."""
    import av

    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            total = stream.frames or sum(1 for _ in container.decode(video=0))
        with av.open(str(path)) as container:
            keep = set(np.linspace(0, max(total - 1, 0), min(wanted, total)).round().astype(int).tolist())
            frames = []
            for index, frame in enumerate(container.decode(video=0)):
                if index in keep:
                    image = frame.to_image()
                    scale = max_side / max(image.size)
                    if scale < 1:
                        image = image.resize((round(image.width * scale), round(image.height * scale)),
                                             Image.Resampling.LANCZOS)
                    frames.append(np.asarray(image.convert("RGB")))
    # ValueError: a frame whose header says 0 pixels; UnicodeDecodeError: metadata that is not UTF-8
    except (av.FFmpegError, IndexError, OSError, ValueError) as exc:
        raise SceneError(f"{path}: not a readable video ({exc})") from exc
    if not frames:
        raise SceneError(f"{path}: the video has no frames")
    return frames


def extract_frames(video: str | Path, out_dir: str | Path, cfg: VideoConfig) -> dict:
    """Write the video's kept frames to `out_dir/images/` and return what was done.

    `cfg.frames × cfg.candidates` frames are decoded evenly; they are cut into `cfg.frames`
    consecutive groups and the sharpest of each group is kept, so a blurred frame loses to its
    neighbours while the kept frames stay evenly spread.
    """
    video, out = Path(video), Path(out_dir) / "images"
    candidates = _decode(video, max(cfg.frames, round(cfg.frames * cfg.candidates)), cfg.max_side)
    scores = [sharpness(f) for f in candidates]
    groups = np.array_split(np.arange(len(candidates)), min(cfg.frames, len(candidates)))
    kept = [int(g[np.argmax([scores[i] for i in g])]) for g in groups if len(g)]
    out.mkdir(parents=True, exist_ok=True)
    for k, index in enumerate(kept):
        Image.fromarray(candidates[index]).save(out / f"frame_{k:04d}.png")
    return {"decoded": len(candidates), "kept": len(kept), "dropped": len(candidates) - len(kept),
            "kept_indices": kept}
