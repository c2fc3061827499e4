"""Overlay of a label map on its image, for looking at masks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from skimage.color import label2rgb
from skimage.segmentation import mark_boundaries


def write_overlay(image: np.ndarray, labels: np.ndarray, out: str | Path, opacity: float = 0.55) -> Path:
    """Blend a coloured label map (label 0: unlabelled, left as is) over an RGB float image, resized
    to the labels' size, and write a PNG. Mask boundaries are drawn white so that neighbouring
    masks stay distinguishable.
    """
    height, width = labels.shape
    base = Image.fromarray((np.clip(image, 0, 1) * 255).astype(np.uint8)).resize((width, height), Image.Resampling.BOX)
    coloured = label2rgb(labels, np.asarray(base) / 255.0, alpha=opacity, bg_label=0, image_alpha=1, saturation=1)
    blended = mark_boundaries(coloured, labels, color=(1, 1, 1), mode="inner")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((np.clip(blended, 0, 1) * 255 + 0.5).astype(np.uint8)).save(out)
    return out
