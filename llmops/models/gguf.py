"""Convert a GGUF file into a Hugging Face model folder.

The folder holds config.json, model.safetensors (float32, HF tensor names), tokenizer.json
and tokenizer_config.json, so the rest of llmops only ever loads Hugging Face folders.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from llmops.models.gguf_config import hf_config
from llmops.models.gguf_file import GGUFFile, GGUFTensor, can_dequantize, dequantize_tensor
from llmops.models.gguf_tokenizer import build_tokenizer

# GGUF tensor name -> HF tensor name (per-layer names are under blk.N / model.layers.N).
_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_LAYER_TENSOR = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)")
# Tensors whose content lives in config.json instead (llama.cpp's Llama 3 rope divisors).
_CONFIG_ONLY = {"rope_freqs.weight"}


def convert_gguf(src: Path, dst: Path) -> None:
    """Write the model in GGUF file `src` as a Hugging Face folder at `dst` (which must not exist).

    The folder is built next to `dst` and renamed into place, so `dst` is either complete or absent.
    """
    src, dst = Path(src), Path(dst)
    gguf = GGUFFile(src)
    if dst.exists():
        raise FileExistsError(f"destination already exists: {dst}")
    config = hf_config(gguf)
    plan = tensor_plan(gguf, config)
    tokenizer, tokenizer_config = build_tokenizer(gguf, config["max_position_embeddings"])
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.parent / f".{dst.name}.tmp-{uuid.uuid4().hex}"
    tmp.mkdir()
    try:
        write_safetensors(tmp / "model.safetensors", _hf_tensors(plan, config))
        _write_json(tmp / "config.json", config)
        _write_json(tmp / "tokenizer_config.json", tokenizer_config)
        tokenizer.save(str(tmp / "tokenizer.json"))
        try:
            os.rename(tmp, dst)
        except OSError as exc:  # dst appeared meanwhile (another import won the race)
            raise FileExistsError(f"destination already exists: {dst}") from exc
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def hf_tensor_name(gguf_name: str, num_layers: int) -> str | None:
    """The HF name for a GGUF tensor name; None when the name is not part of a Llama/Qwen2 model."""
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    match = _LAYER_TENSOR.fullmatch(gguf_name)
    if match is None or match.group(2) not in _LAYER_NAMES or int(match.group(1)) >= num_layers:
        return None
    layer, part, kind = match.groups()
    return f"model.layers.{layer}.{_LAYER_NAMES[part]}.{kind}"


def tensor_plan(gguf: GGUFFile, config: dict[str, Any]) -> list[tuple[str, GGUFTensor]]:
    """(HF name, GGUF tensor) pairs to write; ValueError for unknown, missing or undecodable tensors."""
    plan: list[tuple[str, GGUFTensor]] = []
    for tensor in gguf.tensors:
        if tensor.name in _CONFIG_ONLY:
            continue
        name = hf_tensor_name(tensor.name, config["num_hidden_layers"])
        if name is None:
            raise ValueError(f"tensor {tensor.name!r} is not part of a {config['model_type']} model")
        if not can_dequantize(tensor.tensor_type):
            raise ValueError(
                f"tensor {tensor.name!r} has type {tensor.tensor_type.name}, which cannot be dequantized")
        plan.append((name, tensor))
    missing = sorted(set(_required_names(config)) - {name for name, _ in plan})
    if missing:
        raise ValueError(f"{gguf.path}: missing tensors for HF names {missing[:8]}")
    return plan


def unpermute_rotary(weight: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's Q/K row permutation (HF rotate-half layout -> interleaved pairs).

    llama.cpp writes w.reshape(n_head, 2, D // 2, *rest).swapaxes(1, 2); this is its inverse.
    Works for weights (rows, cols) and biases (rows,).
    """
    half = weight.shape[0] // n_head // 2
    return weight.reshape(n_head, half, 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def write_safetensors(path: Path, tensors: Iterator[tuple[str, tuple[int, ...], Iterator[np.ndarray]]]) -> None:
    """Stream float32 tensors into a safetensors file, one tensor in memory at a time.

    `tensors` yields (name, shape, lazy array); the header needs every shape up front, so it
    is materialized first, then each array is produced and written in order.
    """
    entries = list(tensors)
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape, _ in entries:
        size = 4 * int(np.prod(shape, dtype=np.int64))
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
    blob += b" " * (-len(blob) % 8)  # data must start 8-byte aligned
    with open(path, "wb") as f:
        f.write(len(blob).to_bytes(8, "little"))
        f.write(blob)
        for name, shape, produce in entries:
            array = next(produce)
            if array.shape != tuple(shape) or array.dtype != np.float32:
                raise ValueError(f"tensor {name!r}: produced {array.dtype}{array.shape}, declared float32{shape}")
            f.write(memoryview(np.ascontiguousarray(array)).cast("B"))


def _hf_tensors(plan: list[tuple[str, GGUFTensor]],
                config: dict[str, Any]) -> Iterator[tuple[str, tuple[int, ...], Iterator[np.ndarray]]]:
    for name, tensor in plan:
        yield name, tensor.shape, _lazy(_hf_array, name, tensor, config)
    if config.get("attention_bias"):  # HF Llama biases o_proj too; llama.cpp files have none
        present = {name for name, _ in plan}
        for layer in range(config["num_hidden_layers"]):
            name = f"model.layers.{layer}.self_attn.o_proj.bias"
            if name not in present:
                yield name, (config["hidden_size"],), _lazy(np.zeros, config["hidden_size"], np.float32)


def _lazy(fn: Any, *args: Any) -> Iterator[np.ndarray]:
    yield fn(*args)


def _hf_array(name: str, tensor: GGUFTensor, config: dict[str, Any]) -> np.ndarray:
    array = dequantize_tensor(tensor)
    if config["model_type"] == "llama":  # only llama.cpp's "llama" converter permutes Q/K
        if ".q_proj." in name:
            array = unpermute_rotary(array, config["num_attention_heads"])
        elif ".k_proj." in name:
            array = unpermute_rotary(array, config["num_key_value_heads"])
    return array


def _required_names(config: dict[str, Any]) -> list[str]:
    names = ["model.embed_tokens.weight", "model.norm.weight"]
    parts = list(_LAYER_NAMES.values())
    for layer in range(config["num_hidden_layers"]):
        names += [f"model.layers.{layer}.{part}.weight" for part in parts]
        if config["model_type"] == "qwen2":
            names += [f"model.layers.{layer}.self_attn.{p}_proj.bias" for p in "qkv"]
    return names


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
