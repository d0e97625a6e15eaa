"""A model architecture's hyperparameters, parsed and validated from a Hugging Face config.json."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmops.json_file import read_json_object

# model_type -> the family implementation that covers it (all Llama-shaped today).
SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2")
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")


@dataclass(frozen=True)
class ArchConfig:
    """Hyperparameters of one Llama-family model (Llama 2/3, SmolLM2, TinyLlama, Mistral, Qwen2)."""

    model_type: str                  # "llama" | "mistral" | "qwen2"
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    max_position_embeddings: int
    tie_word_embeddings: bool
    attention_bias: bool             # q/k/v projections carry a bias (Qwen2)
    rope_scaling: dict[str, Any] | None = None  # HF rope_scaling dict, rope_type in SUPPORTED_ROPE_TYPES
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = field(default_factory=tuple)

    @property
    def num_queries_per_kv(self) -> int:
        return self.num_attention_heads // self.num_key_value_heads

    @classmethod
    def from_dict(cls, cfg: dict[str, Any]) -> "ArchConfig":
        model_type = cfg.get("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(
                f"config.json model_type {model_type!r} is not supported; supported: {SUPPORTED_MODEL_TYPES}")
        heads = _positive(cfg, "num_attention_heads")
        hidden = _positive(cfg, "hidden_size")
        kv_heads = int(cfg.get("num_key_value_heads") or heads)
        if heads % kv_heads:
            raise ValueError(f"num_attention_heads ({heads}) must be a multiple of num_key_value_heads ({kv_heads})")
        head_dim = int(cfg.get("head_dim") or hidden // heads)
        eos = cfg.get("eos_token_id")
        eos_ids = tuple(eos) if isinstance(eos, list) else (() if eos is None else (int(eos),))
        sliding = cfg.get("sliding_window") if cfg.get("use_sliding_window", True) else None
        max_pos = _positive(cfg, "max_position_embeddings")
        # transformers >= 5 writes `rope_parameters` (theta inside); older files `rope_scaling` + `rope_theta`.
        rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
        theta = cfg.get("rope_theta", rope.get("rope_theta", 10000.0))
        if sliding:  # no sliding-window attention: stay within the window so results stay exact
            max_pos = min(max_pos, int(sliding))
        return cls(
            model_type=model_type,
            vocab_size=_positive(cfg, "vocab_size"),
            hidden_size=hidden,
            intermediate_size=_positive(cfg, "intermediate_size"),
            num_hidden_layers=_positive(cfg, "num_hidden_layers"),
            num_attention_heads=heads,
            num_key_value_heads=kv_heads,
            head_dim=head_dim,
            rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
            rope_theta=float(theta),
            max_position_embeddings=max_pos,
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            attention_bias=bool(cfg.get("attention_bias", model_type == "qwen2")),
            rope_scaling=_rope_scaling(rope),
            bos_token_id=cfg.get("bos_token_id"),
            eos_token_ids=eos_ids,
        )

    @classmethod
    def from_folder(cls, folder: Path) -> "ArchConfig":
        path = Path(folder) / "config.json"
        if not path.is_file():
            raise FileNotFoundError(f"no config.json in model folder {folder}")
        return cls.from_dict(read_json_object(path))


def _positive(cfg: dict[str, Any], key: str) -> int:
    value = cfg.get(key)
    if not isinstance(value, int) or value < 1:
        raise ValueError(f"config.json field {key!r} must be a positive integer, got {value!r}")
    return value


def _rope_scaling(raw: dict[str, Any] | None) -> dict[str, Any] | None:
    if not raw:
        return None
    rope_type = raw.get("rope_type", raw.get("type", "default"))
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise ValueError(f"rope_scaling type {rope_type!r} is not supported; supported: {SUPPORTED_ROPE_TYPES}")
    return None if rope_type == "default" else {**raw, "rope_type": rope_type}
