"""One sequence's state inside the engine: its tokens, how many are computed, its blocks, its status.

There is no prefill or decode phase: `num_computed_tokens` catches up with `num_tokens`
(prompt plus generated). A request whose computed count is behind by more than one is
still prefilling; one behind, it is decoding.
"""

from __future__ import annotations

import enum
import secrets
import time
from dataclasses import dataclass, field

import torch

from llmops.engine.sampling_params import SamplingParams


class RequestStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    PREEMPTED = "preempted"                 # back in the waiting queue, will recompute
    FINISHED_STOPPED = "stop"               # EOS, a stop token or a stop string
    FINISHED_LENGTH = "length"              # max_tokens or the context length
    FINISHED_ABORTED = "abort"              # the caller gave up

    @property
    def is_finished(self) -> bool:
        return self in _FINISHED

    @property
    def finish_reason(self) -> str | None:
        return self.value if self.is_finished else None


_FINISHED = {RequestStatus.FINISHED_STOPPED, RequestStatus.FINISHED_LENGTH, RequestStatus.FINISHED_ABORTED}


@dataclass
class RequestTimes:
    """Monotonic timestamps of one request's life (seconds, time.monotonic)."""

    arrival: float = field(default_factory=time.monotonic)
    first_scheduled: float | None = None
    first_token: float | None = None
    finished: float | None = None


class Request:
    """A sequence: prompt tokens, generated tokens, KV blocks and sampling state."""

    def __init__(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams,
                 eos_token_ids: tuple[int, ...], max_model_len: int, seed: int | None = None,
                 device: torch.device | str = "cpu") -> None:
        self.request_id = request_id
        self.prompt_token_ids = list(prompt_token_ids)
        self.output_token_ids: list[int] = []
        self.all_token_ids = list(prompt_token_ids)    # prompt + output, the sequence the cache holds
        self.params = params
        self.eos_token_ids = () if params.ignore_eos else eos_token_ids
        self.stop_token_ids = set(params.stop_token_ids or ())
        self.max_tokens = _max_tokens(params, len(prompt_token_ids), max_model_len)
        self.status = RequestStatus.WAITING
        self.num_computed_tokens = 0
        self.num_cached_tokens = 0                     # prompt tokens served by the prefix cache (first admit)
        self.num_preemptions = 0
        self.block_ids: list[int] = []
        self.block_hashes: list[bytes] = []            # chained hashes of this sequence's full blocks
        self.num_cached_blocks = 0                     # leading blocks already indexed in the prefix cache
        self.stop_reason: int | str | None = None      # the stop token id or string that ended it
        self.times = RequestTimes()
        # Per request, on the sampling device: batching cannot change its draws.
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(seed if seed is not None else secrets.randbits(63))
        self.logprobs: list[dict[int, float]] = []     # per output token: id -> logprob (chosen + top-k)
        self.logprob_ranks: list[dict[int, int]] = []

    @property
    def num_tokens(self) -> int:
        return len(self.all_token_ids)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_token_ids)

    @property
    def is_finished(self) -> bool:
        return self.status.is_finished

    def append_token(self, token_id: int) -> None:
        self.output_token_ids.append(token_id)
        self.all_token_ids.append(token_id)

    def check_stop(self) -> RequestStatus | None:
        """After a new token: the finished status it causes, or None to keep going."""
        last = self.output_token_ids[-1]
        if self.num_output_tokens >= self.params.min_tokens:
            if last in self.eos_token_ids or last in self.stop_token_ids:
                self.stop_reason = last if last in self.stop_token_ids else None
                return RequestStatus.FINISHED_STOPPED
        if self.num_output_tokens >= self.max_tokens:
            return RequestStatus.FINISHED_LENGTH
        return None

    def __repr__(self) -> str:
        return (f"Request({self.request_id!r}, status={self.status.value}, tokens={self.num_tokens}, "
                f"computed={self.num_computed_tokens}, blocks={len(self.block_ids)})")


def _max_tokens(params: SamplingParams, num_prompt: int, max_model_len: int) -> int:
    room = max_model_len - num_prompt
    return room if params.max_tokens is None else min(params.max_tokens, room)
