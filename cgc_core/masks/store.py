"""Automatic masks stored as COCO RLE (pycocotools) in a Parquet dataset, one row per mask.

A store is a folder holding one Parquet file per image (`<image stem>.parquet`, written to a temp
name and renamed, so a file present is a file complete): together they form one Parquet dataset
that pyarrow, pandas or DuckDB read as a single table. Columns (`SCHEMA`):

    image, mask_index, height, width, rle (COCO compressed counts, binary), area,
    bbox (x, y, w, h), predicted_iou, stability_score, point (x, y prompt), generator,
    generator_version, config_hash

Label maps (what CGC trains on) flatten an image's overlapping masks to one id per pixel:
masks are painted largest first, so a smaller mask lies on top of any larger one it overlaps
(a part stays visible inside its whole); pixel value k + 1 is mask_index k, 0 is unlabelled.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image
from pycocotools import mask as coco_mask

from ..stage import StageOutputs, safe_name

SCHEMA = pa.schema([
    ("image", pa.string()),
    ("mask_index", pa.int32()),
    ("height", pa.int32()),
    ("width", pa.int32()),
    ("rle", pa.binary()),
    ("area", pa.int64()),
    ("bbox", pa.list_(pa.float32(), 4)),
    ("predicted_iou", pa.float32()),
    ("stability_score", pa.float32()),
    ("point", pa.list_(pa.float32(), 2)),
    ("generator", pa.string()),
    ("generator_version", pa.string()),
    ("config_hash", pa.string()),
])


class MaskStoreError(ValueError):
    """A mask file is missing or malformed; the message names the file."""


MAX_MASK_PIXELS = Image.MAX_IMAGE_PIXELS
"""Masks belong to images, which are refused above PIL's decompression-bomb limit (about 89 MP);
a stored size above it would make decoding allocate that much per mask."""


def encode_mask(mask: np.ndarray) -> dict[str, Any]:
    """COCO RLE of a boolean [H, W] mask (pycocotools), counts as bytes."""
    return coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))


def coco_segment(mask: np.ndarray) -> dict[str, Any]:
    """COCO's annotation fields of a boolean [H, W] mask: `segmentation` (RLE, counts as text, as
    COCO JSON holds it), `area` and `bbox`."""
    rle = encode_mask(mask)
    return {"segmentation": {"size": rle["size"], "counts": rle["counts"].decode()},
            "area": int(coco_mask.area(rle)), "bbox": coco_mask.toBbox(rle).tolist()}


def decode_rles(rles: list[dict[str, Any]]) -> np.ndarray:
    """[K, H, W] boolean masks from COCO RLE dicts (all of one size)."""
    if not rles:
        return np.zeros((0, 0, 0), dtype=bool)
    return coco_mask.decode(rles).transpose(2, 0, 1).astype(bool)


def _file_name(image_name: str) -> str:
    # Image names may hold sub-folders (Blender's train/r_0.png): flatten to one safe file name.
    return safe_name(image_name) + ".parquet"


def records_from_sam(image_name: str, sam_masks: Iterable[dict[str, Any]], generator: str, version: str,
                     config_hash: str) -> pa.Table:
    """A store table from `SamAutomaticMaskGenerator(output_mode="coco_rle")` output, RLE kept as is.

    Each item needs `segmentation` (COCO RLE with `size` and `counts`); `area`, `bbox`,
    `predicted_iou`, `stability_score` and `point_coords` are taken when present.
    """
    rows: dict[str, list] = {name: [] for name in SCHEMA.names}
    for index, item in enumerate(sam_masks):
        seg = item["segmentation"]
        counts = seg["counts"]
        rle = {"size": list(seg["size"]), "counts": counts.encode() if isinstance(counts, str) else counts}
        height, width = (int(v) for v in rle["size"])
        point = item.get("point_coords")
        rows["image"].append(image_name)
        rows["mask_index"].append(index)
        rows["height"].append(height)
        rows["width"].append(width)
        rows["rle"].append(rle["counts"])
        rows["area"].append(int(item["area"]) if "area" in item else int(coco_mask.area(rle)))
        rows["bbox"].append([float(v) for v in (item["bbox"] if "bbox" in item else coco_mask.toBbox(rle))])
        rows["predicted_iou"].append(item.get("predicted_iou"))
        rows["stability_score"].append(item.get("stability_score"))
        rows["point"].append([float(v) for v in point[0]] if point else None)
        rows["generator"].append(generator)
        rows["generator_version"].append(version)
        rows["config_hash"].append(config_hash)
    return pa.Table.from_pydict(rows, schema=SCHEMA)


def records_from_masks(image_name: str, masks: Iterable[np.ndarray], generator: str, version: str,
                       config_hash: str) -> pa.Table:
    """A store table from boolean masks (encoded here with pycocotools)."""
    return records_from_sam(image_name, [coco_segment(mask) for mask in masks], generator, version, config_hash)


class MaskStore:
    """One scene's masks from one generator: a folder of per-image Parquet files.

    Args:
        root: The folder (created on first write).
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def path(self, image_name: str) -> Path:
        return self.root / _file_name(image_name)

    def has_image(self, image_name: str) -> bool:
        """True once the image's file was written completely (files appear by atomic rename)."""
        return self.path(image_name).is_file()

    def write_image(self, image_name: str, height: int, width: int, table: pa.Table) -> Path:
        """Write one image's masks atomically.

        Args:
            image_name: The image the masks belong to.
            height, width: The masks' resolution (kept in the file's metadata, so an image with no
                masks still has a size).
            table: Rows in `SCHEMA`, all of `image_name` (zero rows is fine).
        """
        if table.schema.remove_metadata() != SCHEMA:
            raise MaskStoreError(f"{self.root}: table does not follow the mask schema:\n{table.schema}")
        names = set(table.column("image").to_pylist())
        if names - {image_name}:
            raise MaskStoreError(f"{self.root}: rows of {sorted(names)} written as image {image_name!r}")
        table = table.replace_schema_metadata({"image": image_name, "height": str(height), "width": str(width)})
        path = self.path(image_name)
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".parquet.tmp")
        pq.write_table(table, tmp, compression="zstd")
        os.replace(tmp, path)
        return path

    def _files(self) -> list[Path]:
        return sorted(self.root.glob("*.parquet")) if self.root.is_dir() else []

    def _metadata(self, path: Path) -> dict[str, str]:
        try:
            meta = pq.read_schema(path).metadata or {}
        except (OSError, pa.ArrowException, UnicodeDecodeError) as exc:
            raise MaskStoreError(f"{path}: not a readable Parquet file ({exc})") from exc
        if b"image" not in meta:
            raise MaskStoreError(f"{path}: not a mask-store file (no image name in its metadata)")
        try:
            return {k.decode(): v.decode() for k, v in meta.items()}
        except UnicodeDecodeError as exc:
            raise MaskStoreError(f"{path}: its metadata is not UTF-8 text ({exc})") from exc

    def images(self) -> list[str]:
        """Names of the images whose masks are stored (complete files only)."""
        return sorted(self._metadata(p)["image"] for p in self._files())

    def image_size(self, image_name: str) -> tuple[int, int]:
        """(height, width) of an image's stored masks."""
        path = self._existing(image_name)
        meta = self._metadata(path)
        try:
            height, width = int(meta["height"]), int(meta["width"])
        except (KeyError, ValueError) as exc:
            raise MaskStoreError(f"{path}: no valid mask size in its metadata ({exc})") from exc
        if height < 1 or width < 1 or height * width > MAX_MASK_PIXELS:
            raise MaskStoreError(f"{path}: mask size {height}x{width} is not a plausible image size "
                                 f"(1 to {MAX_MASK_PIXELS} pixels)")
        return height, width

    def _existing(self, image_name: str) -> Path:
        path = self.path(image_name)
        if not path.is_file():
            raise MaskStoreError(f"{path}: no masks stored for image {image_name!r}")
        return path

    def read_table(self, image_name: str) -> pa.Table:
        """The rows of one image, validated against `SCHEMA`."""
        path = self._existing(image_name)
        try:
            table = pq.read_table(path)
        except (OSError, pa.ArrowException) as exc:
            raise MaskStoreError(f"{path}: not a readable Parquet file ({exc})") from exc
        if table.schema.remove_metadata() != SCHEMA:
            raise MaskStoreError(f"{path}: columns do not match the mask schema (found {table.schema.names})")
        return table.replace_schema_metadata(None)

    def _rles(self, image_name: str, min_area: int) -> tuple[list[dict], list[int], tuple[int, int]]:
        try:
            rows = self.read_table(image_name).to_pydict()
        except (UnicodeDecodeError, pa.ArrowException) as exc:
            raise MaskStoreError(f"{self.path(image_name)}: unreadable rows ({exc})") from exc
        size = self.image_size(image_name)
        # Every RLE must have its image's size: pycocotools allocates height x width per mask from
        # the RLE's own `size`, so a hostile one could ask for any amount of memory.
        odd = [i for i, hw in enumerate(zip(rows["height"], rows["width"])) if hw != size]
        if odd:
            i = odd[0]
            raise MaskStoreError(f"{self.path(image_name)}: mask {rows['mask_index'][i]} has size "
                                 f"{rows['height'][i]}x{rows['width'][i]} but the file's masks are {size[0]}x{size[1]}")
        keep = [i for i, a in enumerate(rows["area"]) if a >= min_area]
        rles = [{"size": [rows["height"][i], rows["width"][i]], "counts": rows["rle"][i]} for i in keep]
        return rles, [rows["mask_index"][i] for i in keep], size

    def read_masks(self, image_name: str, min_area: int = 0) -> np.ndarray:
        """[K, H, W] boolean masks of an image, in mask_index order, those with area ≥ `min_area`."""
        rles, _, (height, width) = self._rles(image_name, min_area)
        if not rles:
            return np.zeros((0, height, width), dtype=bool)
        return self._decode(image_name, rles)

    def _decode(self, image_name: str, rles: list[dict]) -> np.ndarray:
        try:
            return decode_rles(rles)
        except ValueError as exc:  # counts that do not add up to the size
            raise MaskStoreError(f"{self.path(image_name)}: invalid COCO RLE ({exc})") from exc

    def read_label_map(self, image_name: str, min_area: int = 0) -> np.ndarray:
        """[H, W] int32 label map: smaller masks on top, value mask_index + 1, 0 unlabelled."""
        return self.read_label_maps(image_name, 1, min_area)[0]

    def read_label_maps(self, image_name: str, levels: int, min_area: int = 0) -> np.ndarray:
        """[levels, H, W] int32 label maps of the masks' nesting levels, finest first.

        Level l gives each pixel the (l+1)-th smallest of the masks that contain it, or the
        largest of them when fewer contain it: level 0 is `read_label_map` (the finest mask
        everywhere), and higher levels step out to the enclosing masks (SAM's part → object →
        group; the classical generator's finer → coarser scale). Value mask_index + 1, 0 where no
        mask covers the pixel.
        """
        if levels < 1:
            raise ValueError(f"read_label_maps: levels must be at least 1 (got {levels})")
        rles, indices, (height, width) = self._rles(image_name, min_area)
        if not rles:
            return np.zeros((levels, height, width), dtype=np.int32)
        return nesting_label_maps(self._decode(image_name, rles), levels, np.asarray(indices, dtype=np.int32) + 1)


def nesting_label_maps(masks: np.ndarray, levels: int, ids: np.ndarray | None = None) -> np.ndarray:
    """[levels, H, W] int32 label maps of boolean masks [K, H, W] (`MaskStore.read_label_maps`):
    level l gives each pixel the (l+1)-th smallest mask containing it (or the largest, when fewer
    do); value ids[k] (default k + 1), 0 where no mask covers the pixel."""
    height, width = masks.shape[1:]
    ids = np.arange(1, len(masks) + 1, dtype=np.int32) if ids is None else ids
    labels = np.zeros((levels, height, width), dtype=np.int32)
    areas = masks.reshape(len(masks), -1).sum(1)
    covered = np.zeros((height, width), dtype=np.int32)  # masks seen so far at each pixel
    # Smallest first, so the j-th mask seen at a pixel is its j-th smallest; among equal areas the
    # later mask_index counts as the smaller (as in painting largest first, later on top).
    for k in np.lexsort((-np.arange(len(masks)), areas)):
        inside = masks[k]
        rank = covered[inside]
        # The mask fills its own rank and every coarser level (until a larger mask takes them).
        for level in range(levels):
            take = rank <= level
            plane = labels[level]
            values = plane[inside]
            values[take] = ids[k]
            plane[inside] = values
        covered[inside] += 1
    return labels


@dataclass(frozen=True)
class MasksOutputs(StageOutputs):
    """The masks stage's files: `store`, one Parquet file of COCO-RLE masks per training image."""

    store = property(lambda self: MaskStore(self.folder / "store"))
