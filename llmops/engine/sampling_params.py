"""Per-request sampling settings, validated on construction (ValueError naming the field)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

MAX_LOGPROBS = 20          # top logprobs per token at most (as the OpenAI API)
_MIN_TEMPERATURE = 1e-5    # below this, sampling is greedy


@dataclass
class SamplingParams:
    """How to pick tokens for one request. Field names follow vLLM / the OpenAI API."""

    n: int = 1                                   # completions per prompt
    temperature: float = 1.0                     # 0 = greedy
    top_p: float = 1.0                           # nucleus mass kept, in (0, 1]
    top_k: int = 0                               # keep the k most likely tokens; 0 or -1 = all
    min_p: float = 0.0                           # drop tokens below min_p * p(max), in [0, 1]
    repetition_penalty: float = 1.0              # > 1 discourages tokens seen in prompt or output
    presence_penalty: float = 0.0                # OpenAI: subtract once per token seen in output
    frequency_penalty: float = 0.0               # OpenAI: subtract per occurrence in output
    seed: int | None = None                      # same seed => same tokens, also when batched
    max_tokens: int | None = 16                  # new tokens at most; None = up to the context length
    min_tokens: int = 0                          # suppress EOS / stop tokens until this many
    stop: list[str] | str | None = None          # stop strings; not included in the output text
    stop_token_ids: list[int] | None = None      # extra token ids that end the request
    ignore_eos: bool = False                     # keep going past the EOS token
    logprobs: int | None = None                  # also return this many top logprobs (0 = chosen only)
    skip_special_tokens: bool = True             # drop special tokens from the output text
    stop_strings: list[str] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        if isinstance(self.temperature, (int, float)) and 0 < self.temperature < _MIN_TEMPERATURE:
            self.temperature = 0.0  # dividing logits by ~0 overflows: treat it as the greedy limit it is
        if self.stop is not None and not isinstance(self.stop, (str, list, tuple)):
            raise ValueError(f"stop must be a string or a list of strings, got {self.stop!r}")
        if self.stop_token_ids is not None and not isinstance(self.stop_token_ids, (list, tuple)):
            raise ValueError(f"stop_token_ids must be a list of integers, got {self.stop_token_ids!r}")
        self.stop_strings = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        self._validate()

    def _validate(self) -> None:
        _check_int("n", self.n, 1)
        _check_float("temperature", self.temperature, 0.0, None)
        _check_float("top_p", self.top_p, 0.0, 1.0)
        if self.top_p <= 0.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        _check_int("top_k", self.top_k, -1)
        _check_float("min_p", self.min_p, 0.0, 1.0)
        _check_float("repetition_penalty", self.repetition_penalty, 0.0, None)
        if self.repetition_penalty <= 0.0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        _check_float("presence_penalty", self.presence_penalty, -2.0, 2.0)
        _check_float("frequency_penalty", self.frequency_penalty, -2.0, 2.0)
        if self.seed is not None:
            _check_int("seed", self.seed, -(2 ** 63))
            if self.seed + self.n > 2 ** 63:
                raise ValueError(f"seed must be < 2**63 - n, got {self.seed}")
        if self.max_tokens is not None:
            _check_int("max_tokens", self.max_tokens, 1)
        _check_int("min_tokens", self.min_tokens, 0)
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise ValueError(f"min_tokens ({self.min_tokens}) must not exceed max_tokens ({self.max_tokens})")
        if self.logprobs is not None:
            _check_int("logprobs", self.logprobs, 0)
            if self.logprobs > MAX_LOGPROBS:
                raise ValueError(f"logprobs must be <= {MAX_LOGPROBS}, got {self.logprobs}")
        for s in self.stop_strings:
            if not isinstance(s, str) or not s:
                raise ValueError(f"stop must hold non-empty strings, got {s!r}")
        for t in self.stop_token_ids or []:
            _check_int("stop_token_ids", t, 0)

    @property
    def is_greedy(self) -> bool:
        return self.temperature == 0.0


def _check_int(name: str, value: object, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")


def _check_float(name: str, value: object, low: float, high: float | None) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if value < low or (high is not None and value > high):
        bound = f"[{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be {bound}, got {value}")
