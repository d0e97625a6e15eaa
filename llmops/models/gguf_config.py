"""GGUF metadata -> a Hugging Face config.json dict (LlamaConfig / Qwen2Config compatible)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from llmops.models.gguf_file import GGUFFile, dequantize_tensor

# GGUF general.architecture -> (HF model_type, HF architectures entry)
ARCHITECTURES: dict[str, tuple[str, str]] = {
    "llama": ("llama", "LlamaForCausalLM"),
    "qwen2": ("qwen2", "Qwen2ForCausalLM"),
}

# Defaults llama.cpp assumes when a key is absent.
_DEFAULT_EPS = {"llama": 1e-5, "qwen2": 1e-6}
_DEFAULT_THETA = {"llama": 10000.0, "qwen2": 1000000.0}
_LLAMA3_ORIGINAL_CONTEXT = 8192  # Llama 3.x's pre-extension context; only the ratios below matter


def check_architecture(gguf: GGUFFile) -> str:
    arch = gguf.architecture
    if arch not in ARCHITECTURES:
        raise ValueError(
            f"GGUF architecture {arch!r} is not supported; supported: {', '.join(ARCHITECTURES)}")
    return arch


def hf_config(gguf: GGUFFile) -> dict[str, Any]:
    """config.json for the model in `gguf`; sizes are cross-checked against the tensor shapes."""
    arch = check_architecture(gguf)
    model_type, class_name = ARCHITECTURES[arch]
    n_head = gguf.require(f"{arch}.attention.head_count", int)
    n_kv_head = _kv_heads(gguf, arch, n_head)
    embed = _shape(gguf, "token_embd.weight")                     # (V, hidden)
    q_rows = _shape(gguf, "blk.0.attn_q.weight")[0]               # (H * D, hidden)
    hidden = gguf.require(f"{arch}.embedding_length", int)
    if embed[1] != hidden:
        raise ValueError(f"{arch}.embedding_length is {hidden} but token_embd.weight has {embed[1]} columns")
    head_dim = gguf.get(f"{arch}.attention.key_length") or q_rows // n_head
    if head_dim * n_head != q_rows:
        raise ValueError(f"blk.0.attn_q.weight has {q_rows} rows, not head_count {n_head} x head_dim {head_dim}")
    max_positions = int(gguf.get(f"{arch}.context_length", 2048))
    config: dict[str, Any] = {
        "architectures": [class_name],
        "model_type": model_type,
        "hidden_size": hidden,
        "intermediate_size": _shape(gguf, "blk.0.ffn_gate.weight")[0],
        "num_hidden_layers": gguf.require(f"{arch}.block_count", int),
        "num_attention_heads": n_head,
        "num_key_value_heads": n_kv_head,
        "head_dim": int(head_dim),
        "rms_norm_eps": _f32(gguf.get(f"{arch}.attention.layer_norm_rms_epsilon", _DEFAULT_EPS[arch])),
        "rope_theta": _f32(gguf.get(f"{arch}.rope.freq_base", _DEFAULT_THETA[arch])),
        "rope_scaling": rope_scaling(gguf, arch, int(head_dim)),
        "max_position_embeddings": max_positions,
        "vocab_size": embed[0],
        "tie_word_embeddings": gguf.tensor("output.weight") is None,
        "bos_token_id": gguf.get("tokenizer.ggml.bos_token_id"),
        "eos_token_id": _eos_ids(gguf),
        "hidden_act": "silu",
        "torch_dtype": "float32",
    }
    if arch == "llama":
        config["attention_bias"] = gguf.tensor("blk.0.attn_q.bias") is not None
        config["mlp_bias"] = False
    else:
        config["use_sliding_window"] = False
    return config


def rope_scaling(gguf: GGUFFile, arch: str, head_dim: int) -> dict[str, Any] | None:
    """HF rope_scaling from the scaling keys, or from a `rope_freqs` tensor (how llama.cpp stores Llama 3)."""
    kind = gguf.get(f"{arch}.rope.scaling.type")
    factor = gguf.get(f"{arch}.rope.scaling.factor", gguf.get(f"{arch}.rope.scale_linear"))
    original = gguf.get(f"{arch}.rope.scaling.original_context_length")
    if kind is None and factor is not None:
        kind = "linear"  # legacy files carry only rope.scale_linear
    if kind not in (None, "none"):
        scaling: dict[str, Any] = {"rope_type": kind, "factor": _f32(factor if factor is not None else 1.0)}
        if original is not None:
            scaling["original_max_position_embeddings"] = int(original)
        return scaling
    freqs = gguf.tensor("rope_freqs.weight")
    if freqs is None:
        return None
    theta = float(gguf.get(f"{arch}.rope.freq_base", _DEFAULT_THETA[arch]))
    return llama3_scaling(dequantize_tensor(freqs), theta, head_dim,
                          int(original or _LLAMA3_ORIGINAL_CONTEXT))


def llama3_scaling(factors: np.ndarray, theta: float, head_dim: int,
                   original_context: int) -> dict[str, Any] | None:
    """Recover Llama 3 rope_scaling parameters from llama.cpp's per-frequency divisors.

    llama.cpp stores rope_freqs[i] = 1 for short wavelengths, `factor` for long ones and a
    smooth blend between; the blend is linear in 1/wavelength, so two blended entries fix
    low_freq_factor / original_context and high_freq_factor / original_context.
    """
    factors = factors.astype(np.float64).reshape(-1)
    inv_freq = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    if factors.shape != inv_freq.shape:
        raise ValueError(f"rope_freqs.weight has {factors.size} entries; expected head_dim / 2 = {inv_freq.size}")
    factor = float(factors.max())
    if factor <= 1.0 + 1e-6:
        return None
    low, high = 1.0, 4.0  # Llama 3's values, kept when fewer than two blended entries exist
    blend = (factors > 1.0 + 1e-4) & (factors < factor * (1 - 1e-4))
    if blend.sum() >= 2:
        # smooth s = (1/f - 1/factor) / (1 - 1/factor); 1/wavelength = (low + s (high - low)) / L
        smooth = (1.0 / factors[blend] - 1.0 / factor) / (1.0 - 1.0 / factor)
        slope, intercept = np.polyfit(smooth, inv_freq[blend] / (2 * math.pi), 1)
        low = _round(intercept * original_context)
        high = _round((intercept + slope) * original_context)
    scaling = {"rope_type": "llama3", "factor": _round(factor), "low_freq_factor": low,
               "high_freq_factor": high, "original_max_position_embeddings": original_context}
    if not np.allclose(_llama3_factors(inv_freq, scaling), factors, rtol=1e-3):
        raise ValueError("rope_freqs.weight does not follow the Llama 3 rope scaling formula")
    return scaling


def _llama3_factors(inv_freq: np.ndarray, s: dict[str, Any]) -> np.ndarray:
    """The divisors llama.cpp's converter writes for Llama 3 scaling `s`."""
    wavelen = 2 * math.pi / inv_freq
    old, low, high, factor = (s["original_max_position_embeddings"], s["low_freq_factor"],
                              s["high_freq_factor"], s["factor"])
    smooth = (old / wavelen - low) / (high - low)
    blended = 1.0 / ((1 - smooth) / factor + smooth)
    return np.where(wavelen < old / high, 1.0, np.where(wavelen > old / low, factor, blended))


def _eos_ids(gguf: GGUFFile) -> int | list[int] | None:
    """End-of-sequence id, plus end-of-turn/message ids where they differ (Llama 3 chat models)."""
    ids = [gguf.get(f"tokenizer.ggml.{role}_token_id") for role in ("eos", "eot", "eom")]
    unique = list(dict.fromkeys(i for i in ids if i is not None))
    return unique[0] if len(unique) == 1 else (unique or None)


def _kv_heads(gguf: GGUFFile, arch: str, n_head: int) -> int:
    value = gguf.get(f"{arch}.attention.head_count_kv", n_head)
    if isinstance(value, list):  # per-layer counts: only uniform ones map onto an HF config
        if len(set(value)) != 1:
            raise ValueError(f"{arch}.attention.head_count_kv varies per layer ({value}); not supported")
        value = value[0]
    if not isinstance(value, int) or value < 1 or n_head % value:
        raise ValueError(f"{arch}.attention.head_count_kv {value!r} must divide head_count {n_head}")
    return value


def _shape(gguf: GGUFFile, name: str) -> tuple[int, ...]:
    tensor = gguf.tensor(name)
    if tensor is None:
        raise ValueError(f"{gguf.path}: required tensor {name!r} is missing")
    return tensor.shape


def _f32(value: float) -> float:
    """GGUF stores float32: give back the shortest decimal that rounds to the same float32."""
    return float(str(np.float32(value)))


def _round(value: float) -> float:
    return float(f"{value:.6g}")
