"""Overlay of a label map on its image, for looking at masks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def label_colors(n: int, seed: int = 0) -> np.ndarray:
    """[n + 1, 3] uint8 colours; label 0 (unlabelled) is black."""
    colors = np.random.default_rng(seed).integers(40, 256, size=(n + 1, 3)).astype(np.uint8)
    colors[0] = 0
    return colors


def write_overlay(image: np.ndarray, labels: np.ndarray, out: str | Path, opacity: float = 0.55) -> Path:
    """Blend a coloured label map over an RGB float image (resized to the labels' size); write a PNG.

    Mask boundaries are drawn white so that neighbouring masks stay distinguishable.
    """
    height, width = labels.shape
    base = Image.fromarray((np.clip(image, 0, 1) * 255).astype(np.uint8)).resize((width, height), Image.Resampling.BOX)
    colors = label_colors(int(labels.max()))[labels]
    blended = np.asarray(base, dtype=np.float32) * (1 - opacity) + colors * opacity
    blended[labels == 0] = np.asarray(base, dtype=np.float32)[labels == 0]
    edges = np.zeros_like(labels, dtype=bool)
    edges[:, 1:] |= labels[:, 1:] != labels[:, :-1]
    edges[1:, :] |= labels[1:, :] != labels[:-1, :]
    blended[edges] = 255
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(blended.astype(np.uint8)).save(out)
    return out
