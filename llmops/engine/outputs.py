"""The contracts between the scheduler, the model runner and callers. Nothing else crosses."""

from __future__ import annotations

from dataclasses import dataclass, field

from llmops.engine.request import Request


@dataclass
class ScheduledChunk:
    """num_tokens of one request to compute this step, starting at its num_computed_tokens."""

    request: Request
    num_tokens: int

    @property
    def samples(self) -> bool:
        """The chunk reaches the end of the known tokens, so the step samples a new one."""
        return self.request.num_computed_tokens + self.num_tokens == self.request.num_tokens


@dataclass
class SchedulerOutput:
    """One step's batch. Single-token chunks (decodes) come first, then longer prefill chunks."""

    decodes: list[ScheduledChunk] = field(default_factory=list)    # one token each
    prefills: list[ScheduledChunk] = field(default_factory=list)   # more than one token each
    preempted: list[Request] = field(default_factory=list)         # sent back to the queue this step

    @property
    def chunks(self) -> list[ScheduledChunk]:
        return self.decodes + self.prefills

    @property
    def num_scheduled_tokens(self) -> int:
        return len(self.decodes) + sum(c.num_tokens for c in self.prefills)

    @property
    def is_empty(self) -> bool:
        return not self.decodes and not self.prefills


@dataclass
class SampledToken:
    """What the runner sampled for one request this step."""

    token_id: int
    logprobs: dict[int, float] | None = None   # chosen token and top-k: token id -> logprob
    ranks: dict[int, int] | None = None        # token id -> rank in the full distribution (1 = best)


@dataclass
class ModelRunnerOutput:
    sampled: dict[str, SampledToken] = field(default_factory=dict)   # request id -> token


@dataclass
class Logprob:
    """One candidate token's log probability at one position."""

    logprob: float
    rank: int                         # 1 = most likely token
    decoded_token: str | None = None


@dataclass
class CompletionOutput:
    """One of a request's n completions, cumulative so far."""

    index: int                                    # 0..n-1
    text: str                                     # decoded text so far (stop string excluded)
    token_ids: list[int]                          # generated token ids so far
    finish_reason: str | None = None              # "stop" | "length" | "abort" | None while running
    stop_reason: int | str | None = None          # the stop token id or stop string that ended it
    logprobs: list[dict[int, Logprob]] | None = None  # per generated token, when asked for

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass
class RequestMetrics:
    """Timings of one request, seconds (monotonic clock)."""

    arrival_time: float
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    finished_time: float | None = None


@dataclass
class RequestOutput:
    """What callers get back for one prompt: its n completions, cumulative."""

    request_id: str
    prompt: str | None                            # the prompt text, when given as text
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool                                # all n completions are done
    num_cached_tokens: int = 0                    # prompt tokens served by the prefix cache
    metrics: RequestMetrics | None = None


@dataclass
class EngineStats:
    """A snapshot of the engine's load and counters since start."""

    num_running: int                  # sequences holding KV blocks
    num_waiting: int                  # sequences queued (incl. preempted)
    kv_blocks_used: int
    kv_blocks_total: int
    kv_usage: float                   # used / total, 0..1
    prefix_cache_queries: int         # prompt tokens looked up
    prefix_cache_hits: int            # of those, tokens found cached
    num_preemptions: int
    num_prompt_tokens: int            # prompt tokens computed (cache hits excluded)
    num_generation_tokens: int        # tokens sampled
