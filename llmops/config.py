"""The root configuration: one dataclass per subsystem, composed into `LLMOpsConfig`.

Every field carries its help text in `metadata["help"]`; the CLI derives its flags from these
fields (see `llmops.cli.options`) so a setting is defined once and validated once.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

DTYPES = ("auto", "float32", "bfloat16")
DEVICES = ("auto", "cpu", "cuda")


def _help(text: str, **extra: Any) -> dict[str, Any]:
    return {"help": text, **extra}


@dataclass
class ModelConfig:
    """Which model to run, and on what."""

    model: str | None = field(default=None, metadata=_help(
        "model to load: a stored model name, a Hugging Face folder or a .gguf file "
        "(default: the built-in SmolLM2-135M-Instruct)"))
    dtype: str = field(default="auto", metadata=_help(
        "weights and activations dtype: auto (bfloat16 where the CPU runs it fast), float32, bfloat16",
        choices=DTYPES))
    device: str = field(default="auto", metadata=_help(
        "device: auto (cuda when available, else cpu), cpu, cuda", choices=DEVICES))
    max_model_len: int | None = field(default=None, metadata=_help(
        "longest prompt + output in tokens (default: the model's context length)"))
    int4_small_batch: bool = field(default=True, metadata=_help(
        "bfloat16 on CPU: steps of a few tokens use exact 4-bit copies of weights that sit on a "
        "4-bit grid (models imported from 4-bit GGUFs)"))

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}, got {self.device!r}")
        if self.max_model_len is not None and self.max_model_len < 1:
            raise ValueError(f"max_model_len must be >= 1, got {self.max_model_len}")


@dataclass
class CacheConfig:
    """The paged KV cache."""

    block_size: int = field(default=16, metadata=_help("tokens per KV cache block"))
    kv_cache_tokens: int | None = field(default=None, metadata=_help(
        "KV cache capacity in tokens (default: a share of free memory, printed at start)"))
    enable_prefix_caching: bool = field(default=True, metadata=_help(
        "share KV blocks between requests with the same prompt prefix"))

    def __post_init__(self) -> None:
        if self.block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {self.block_size}")
        if self.kv_cache_tokens is not None and self.kv_cache_tokens < self.block_size:
            raise ValueError(
                f"kv_cache_tokens must be >= block_size ({self.block_size}), got {self.kv_cache_tokens}")


@dataclass
class SchedulerConfig:
    """Continuous batching limits."""

    max_num_seqs: int = field(default=64, metadata=_help("most sequences running in one step"))
    max_num_batched_tokens: int = field(default=2048, metadata=_help(
        "token budget of one step (decode tokens plus prefill chunks)"))

    def __post_init__(self) -> None:
        if self.max_num_seqs < 1:
            raise ValueError(f"max_num_seqs must be >= 1, got {self.max_num_seqs}")
        if self.max_num_batched_tokens < 1:
            raise ValueError(f"max_num_batched_tokens must be >= 1, got {self.max_num_batched_tokens}")


@dataclass
class LLMOpsConfig:
    """The root config: one member per subsystem."""

    model: ModelConfig = field(default_factory=ModelConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)

    @classmethod
    def from_flat(cls, **kwargs: Any) -> "LLMOpsConfig":
        """Build from flat keyword arguments (`dtype=..., block_size=...`), as `LLM()` takes them."""
        parts: dict[str, Any] = {}
        for member in fields(cls):
            sub_cls = member.default_factory  # type: ignore[misc]
            names = {f.name for f in fields(sub_cls)}
            parts[member.name] = sub_cls(**{k: kwargs.pop(k) for k in list(kwargs) if k in names})
        if kwargs:
            raise ValueError(f"unknown config field(s): {', '.join(sorted(kwargs))}")
        return cls(**parts)
