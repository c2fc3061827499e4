"""The pretrained models cgc uses, loaded in one place: SAM (automatic masks, box → mask) and
Grounding DINO (text → box).

Weights always come from a configured file; nothing is downloaded. Each loader refuses a missing
file or a checkpoint that does not fit the architecture with a `ModelLoadError` naming the file
and the config key, and builds randomly initialised models of the real architecture only when
the config says `allow_random_weights` (tests).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .config import QueryConfig, SamConfig


class ModelLoadError(RuntimeError):
    """A pretrained model cannot be built: missing, unreadable or mismatched weights; names the file."""


# Keys a Grounding DINO checkpoint may carry that newer `transformers` BERT models no longer keep
# as parameters (a buffer made non-persistent): present in the official file, harmless.
BENIGN_UNEXPECTED_GDINO_KEYS = ("bert.embeddings.position_ids",)


def resolve_device(device: str) -> str:
    """`auto` -> "cuda" when a GPU is present, else "cpu"; any other value is kept."""
    import torch

    if device != "auto":
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


# segment-anything's encoder settings per model type (its build_sam.py).
_SAM_ENCODERS = {
    "vit_h": dict(embed_dim=1280, depth=32, num_heads=16, global_attn_indexes=(7, 15, 23, 31)),
    "vit_l": dict(embed_dim=1024, depth=24, num_heads=16, global_attn_indexes=(5, 11, 17, 23)),
    "vit_b": dict(embed_dim=768, depth=12, num_heads=12, global_attn_indexes=(2, 5, 8, 11)),
}


def sam_architecture(model_type: str, image_size: int = 1024):
    """An untrained SAM of `model_type` for `image_size`² inputs, from segment-anything's modules.
    At 1024 it is exactly `sam_model_registry[model_type]()`; smaller sides keep every layer and
    shrink only the input (and so the positional embeddings): random-weight CPU tests."""
    from functools import partial

    import torch
    from segment_anything import sam_model_registry
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    if image_size == 1024:
        return sam_model_registry[model_type](checkpoint=None)
    if image_size % 16:
        raise ValueError(f"SAM image_size must be a multiple of 16 (the patch size), got {image_size}")
    enc = _SAM_ENCODERS[model_type]
    grid = image_size // 16
    return Sam(
        image_encoder=ImageEncoderViT(
            depth=enc["depth"], embed_dim=enc["embed_dim"], img_size=image_size, mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), num_heads=enc["num_heads"], patch_size=16,
            qkv_bias=True, use_rel_pos=True, global_attn_indexes=enc["global_attn_indexes"], window_size=14,
            out_chans=256),
        prompt_encoder=PromptEncoder(embed_dim=256, image_embedding_size=(grid, grid),
                                     input_image_size=(image_size, image_size), mask_in_chans=16),
        mask_decoder=MaskDecoder(num_multimask_outputs=3, transformer=TwoWayTransformer(
            depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8), transformer_dim=256, iou_head_depth=3,
            iou_head_hidden_dim=256),
        pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375],
    )


def load_sam(cfg: SamConfig, config_key: str = "masks.sam"):
    """The SAM model of `cfg.model_type` with weights from `cfg.checkpoint`, on the configured device.

    Args:
        cfg: The SAM section (checkpoint, model type, device, allow_random_weights).
        config_key: Where that section lives in the config (`masks.sam` or `query.sam`), for the
            error messages.

    Raises:
        ModelLoadError: no checkpoint configured (unless `allow_random_weights`), the file is
            missing, or it is not a checkpoint of that model type.
    """
    checkpoint = cfg.checkpoint
    if checkpoint is None:
        if not cfg.allow_random_weights:
            raise ModelLoadError(
                f"{config_key}.checkpoint is not set: SAM needs its weights file (for example "
                f"sam_{cfg.model_type}_*.pth), which cgc never downloads. Set {config_key}.checkpoint=/path/to/file"
                + (", or a weights-free masks.generator (texture or classical)." if config_key == "masks.sam" else ".")
            )
    elif not Path(checkpoint).is_file():
        raise ModelLoadError(f"{checkpoint}: SAM checkpoint file not found ({config_key}.checkpoint)")
    import torch

    if cfg.image_size != 1024 and not cfg.allow_random_weights:
        raise ModelLoadError(f"{config_key}.image_size={cfg.image_size}: the SAM checkpoints are for 1024")
    sam = sam_architecture(cfg.model_type, cfg.image_size)
    if checkpoint is not None:
        # Loaded here rather than by segment-anything so that it is weights-only (no pickled code
        # runs) and a wrong or damaged file is reported with its name.
        try:
            state = torch.load(checkpoint, map_location="cpu", weights_only=True)
            sam.load_state_dict(state)
        except Exception as exc:  # unpickling and load_state_dict raise several types for a bad file
            raise ModelLoadError(f"{checkpoint}: not a valid SAM {cfg.model_type} checkpoint ({exc})") from exc
    return sam.to(resolve_device(cfg.device)).eval()


@dataclass
class BoxSegmenter:
    """SAM's predictor: an image and a box (x0, y0, x1, y1) in pixels -> a boolean mask."""

    config: SamConfig
    config_key: str = "query.sam"

    def __post_init__(self) -> None:
        self._predictor = None
        self._image_key = None

    def predictor(self):
        if self._predictor is None:
            from segment_anything import SamPredictor

            try:
                self._predictor = SamPredictor(load_sam(self.config, self.config_key))
            except ModelLoadError as exc:
                raise ModelLoadError(f"box/text queries need SAM: {exc}") from exc
        return self._predictor

    def __call__(self, image: np.ndarray, box: Sequence[float]) -> np.ndarray:
        import torch

        import hashlib

        predictor = self.predictor()
        # The image embedding (the expensive part) is reused while the image stays the same: every
        # prompt grounded in one view costs one encoding.
        key = (image.shape, hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest())
        if key != self._image_key:
            predictor.set_image(image)
            self._image_key = key
        with torch.inference_mode():
            masks, _, _ = predictor.predict(box=np.asarray(box, dtype=np.float32), multimask_output=False)
        return masks[0].astype(bool)


def _packaged_gdino_config() -> Path:
    import groundingdino

    return Path(groundingdino.__file__).parent / "config" / "GroundingDINO_SwinT_OGC.py"


def load_grounding_dino(cfg: QueryConfig):
    """Grounding DINO built from `cfg.gdino_config` (default: the SwinT-OGC config shipped with
    groundingdino-py) with weights from `cfg.gdino_checkpoint`.

    A checkpoint whose keys do not match the model (missing or unexpected, other than
    `BENIGN_UNEXPECTED_GDINO_KEYS`) is an error listing them: a partial load would run partly on
    random weights without a word.

    Raises:
        ModelLoadError: the package, config, checkpoint or text-encoder folder is missing, or
            the checkpoint does not fit.
    """
    import torch

    try:
        from groundingdino.models import build_model
        from groundingdino.util.slconfig import SLConfig
        from groundingdino.util.utils import clean_state_dict
    except ImportError as exc:
        raise ModelLoadError(
            "text queries need Grounding DINO: install the optional extra (pip install -e '.[gdino]')"
        ) from exc
    config_path = Path(cfg.gdino_config) if cfg.gdino_config else _packaged_gdino_config()
    if not config_path.is_file():
        raise ModelLoadError(f"{config_path}: Grounding DINO config file not found (query.gdino_config)")
    if cfg.gdino_checkpoint is None and not cfg.allow_random_weights:
        raise ModelLoadError(
            "query.gdino_checkpoint is not set: text queries need the Grounding DINO weights file "
            "(for example groundingdino_swint_ogc.pth), which cgc never downloads"
        )
    if cfg.gdino_checkpoint is not None and not Path(cfg.gdino_checkpoint).is_file():
        raise ModelLoadError(f"{cfg.gdino_checkpoint}: Grounding DINO checkpoint file not found (query.gdino_checkpoint)")
    args = SLConfig.fromfile(str(config_path))
    args.device = resolve_device(cfg.device)
    if cfg.text_encoder is not None:
        if not Path(cfg.text_encoder).is_dir():
            raise ModelLoadError(f"{cfg.text_encoder}: BERT text-encoder folder not found (query.text_encoder)")
        args.text_encoder_type = str(cfg.text_encoder)
    model = build_model(args)
    if cfg.gdino_checkpoint is not None:
        try:
            state = torch.load(cfg.gdino_checkpoint, map_location="cpu", weights_only=True)
            result = model.load_state_dict(clean_state_dict(state["model"]), strict=False)
        except Exception as exc:
            raise ModelLoadError(f"{cfg.gdino_checkpoint}: not a valid Grounding DINO checkpoint ({exc})") from exc
        unexpected = [k for k in result.unexpected_keys if k not in BENIGN_UNEXPECTED_GDINO_KEYS]
        if result.missing_keys or unexpected:
            def listed(keys):
                return ", ".join(keys[:10]) + (f" … ({len(keys)} in all)" if len(keys) > 10 else "")

            raise ModelLoadError(
                f"{cfg.gdino_checkpoint}: does not fit the Grounding DINO model of {config_path.name} "
                f"(query.gdino_checkpoint): missing keys: {listed(result.missing_keys) or 'none'}; "
                f"unexpected keys: {listed(unexpected) or 'none'}")
    return model.to(args.device).eval()


@dataclass
class TextDetector:
    """Grounding DINO: (image, text) -> the highest-scoring box (x0, y0, x1, y1) in pixels and its
    score, or None when nothing passes the box and text thresholds."""

    config: QueryConfig

    def __post_init__(self) -> None:
        self._model = None

    def model(self):
        if self._model is None:
            self._model = load_grounding_dino(self.config)
        return self._model

    def __call__(self, image: np.ndarray, text: str) -> tuple[list[float], float] | None:
        import groundingdino.datasets.transforms as T
        import torch
        from groundingdino.util.inference import predict
        from PIL import Image

        model = self.model()
        transform = T.Compose([
            T.RandomResize([self.config.gdino_image_size], max_size=1333), T.ToTensor(),
            T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        ])
        tensor, _ = transform(Image.fromarray(image), None)
        boxes, logits, _ = predict(model, tensor, text, box_threshold=self.config.box_threshold,
                                   text_threshold=self.config.text_threshold, device=resolve_device(self.config.device))
        if len(boxes) == 0:
            return None
        best = int(torch.argmax(logits))
        cx, cy, w, h = boxes[best].tolist()
        height, width = image.shape[:2]
        box = [(cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height]
        return box, float(logits[best])
