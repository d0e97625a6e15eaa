"""Load a Hugging Face model folder (config.json + *.safetensors) into our model classes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import safe_open

from llmops.layers import int4
from llmops.models.arch import ArchConfig
from llmops.models.llama import LlamaForCausalLM

# model_type -> implementation; the Llama family covers all supported types today.
ARCHITECTURES: dict[str, type[LlamaForCausalLM]] = {
    "llama": LlamaForCausalLM, "mistral": LlamaForCausalLM, "qwen2": LlamaForCausalLM,
}


def load_model(folder: Path, dtype: torch.dtype, device: torch.device,
               max_positions: int | None = None, int4_small_batch: bool = True) -> LlamaForCausalLM:
    """Build the architecture named in config.json and fill it from the folder's safetensors.

    With `int4_small_batch` (bfloat16 on CPU), linear weights that sit exactly on a 4-bit grid
    (a 4-bit GGUF's) also get a packed 4-bit copy that small batches use.
    """
    folder = Path(folder)
    cfg = ArchConfig.from_folder(folder)
    positions = max_positions or cfg.max_position_embeddings
    int4_check = int4_small_batch and dtype == torch.bfloat16 and device.type == "cpu" and int4.available()
    with torch.device("meta"):
        model = ARCHITECTURES[cfg.model_type](cfg)
    if not int4_check:
        model.to(dtype=dtype)        # still meta: weights are cast one tensor at a time as they load
    model.to_empty(device=device)
    if cfg.tie_word_embeddings:
        model.lm_head.weight = model.embed_tokens.weight
    model.load_weights(_iter_safetensors(folder))
    if int4_check:                   # the grid check needs the float32 weights
        model.prepare_int4()
        model.to(dtype=dtype)
    model.init_rotary(positions, device)
    model.pack_weights()
    return model.eval()


def _iter_safetensors(folder: Path) -> Iterator[tuple[str, torch.Tensor]]:
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors weights in model folder {folder}")
    for path in files:
        try:
            with safe_open(str(path), framework="pt") as f:
                for name in f.keys():
                    yield name, f.get_tensor(name)
        except Exception as exc:  # safetensors raises its own error types for corrupt headers
            if isinstance(exc, ValueError):
                raise
            raise ValueError(f"cannot read weights file {path}: {exc}") from exc
