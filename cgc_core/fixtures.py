"""Small inputs in the real on-disk layouts, for tests and checks that cannot download anything.

- `write_lerf_mask_fixture`: a rendered synthetic scene in the LERF-Mask layout (images/,
  images_train/, sparse/0/, test_mask/<i>/<prompt>.png) without the synthetic ground-truth folder,
  so every reader and protocol treats it as a LERF-Mask scene.
- `write_local_bert`: a small BERT (config, weights, vocabulary) in a local folder, the text
  encoder Grounding DINO is built with (`query.text_encoder`) when no Hugging Face cache exists.
- `random_model_overrides`: the config overrides that build Grounding DINO (SwinT) and SAM (ViT-B)
  with random weights on CPU, small enough to run in tests. Their boxes and masks are meaningless;
  what they prove is that the real code runs end to end.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from .config import SyntheticConfig


def write_lerf_mask_fixture(out_dir: str | Path, preset: str = "tiny", seed: int = 0) -> Path:
    """Render the synthetic `preset` and keep only its LERF-Mask layout in `out_dir` (replaced)."""
    from .scene.synthetic import write_synthetic_scene

    out_dir = Path(out_dir)
    with tempfile.TemporaryDirectory(dir=out_dir.parent if out_dir.parent.exists() else None) as tmp:
        rendered = write_synthetic_scene(SyntheticConfig(preset=preset, seed=seed, supersample=1), Path(tmp) / "scene")
        shutil.rmtree(rendered / "ground_truth")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        shutil.copytree(rendered, out_dir)
    return out_dir


def write_local_bert(folder: str | Path, words: list[str] | None = None) -> Path:
    """A one-layer BERT with Grounding DINO's hidden size (768) and a small vocabulary, saved with
    its tokenizer in `folder` (which must not exist)."""
    from transformers import BertConfig, BertModel, BertTokenizer

    folder = Path(folder)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", "?", *(words or [])]
    folder.mkdir(parents=True)
    (folder / "vocab.txt").write_text("\n".join(dict.fromkeys(vocab)) + "\n")
    BertTokenizer(str(folder / "vocab.txt")).save_pretrained(folder)
    config = BertConfig(vocab_size=len(dict.fromkeys(vocab)), hidden_size=768, num_hidden_layers=1,
                        num_attention_heads=4, intermediate_size=256)
    BertModel(config).save_pretrained(folder)
    return folder


def random_model_overrides(text_encoder: str | Path) -> list[str]:
    """Overrides for the text and box protocols with randomly initialised Grounding DINO (SwinT-OGC,
    the local BERT `text_encoder`) and SAM ViT-B at a 256-pixel input, on CPU; box and text
    thresholds 0, so that random weights still return a box."""
    return [
        "query.allow_random_weights=true", f"query.text_encoder={text_encoder}", "query.device=cpu",
        "query.gdino_image_size=256", "query.box_threshold=0.0", "query.text_threshold=0.0",
        "query.sam.model_type=vit_b", "query.sam.allow_random_weights=true", "query.sam.device=cpu",
        "query.sam.image_size=256",
    ]
