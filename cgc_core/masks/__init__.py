"""Automatic 2D masks: generators (SAM, classical) and the COCO-RLE Parquet store."""

from .store import SCHEMA, MaskStore, MaskStoreError, decode_rles, encode_mask, records_from_masks, records_from_sam

__all__ = ["SCHEMA", "MaskStore", "MaskStoreError", "decode_rles", "encode_mask", "records_from_masks",
           "records_from_sam"]
