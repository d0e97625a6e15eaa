"""The per-row sampling settings of one step, built from the requests being sampled."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from llmops.engine.request import Request


@dataclass
class SamplingBatch:
    """Per-row sampling settings for one step's B sampled rows. Optional tensors are None
    when no row needs that stage, so the common cases skip it entirely."""

    temperature: torch.Tensor                  # (B,) float; 0 marks a greedy row
    generators: list[torch.Generator]          # (B,) one per row
    top_k: torch.Tensor | None = None          # (B,) long; vocab size = keep all
    top_p: torch.Tensor | None = None          # (B,) float in (0, 1]
    min_p: torch.Tensor | None = None          # (B,) float in [0, 1]
    repetition_penalty: torch.Tensor | None = None  # (B,) float
    presence_penalty: torch.Tensor | None = None    # (B,) float
    frequency_penalty: torch.Tensor | None = None   # (B,) float
    output_counts: torch.Tensor | None = None  # (B, V) float: occurrences in the output so far
    seen_mask: torch.Tensor | None = None      # (B, V) bool: token appears in prompt or output
    suppress: list[tuple[int, list[int]]] | None = None  # (row, token ids) banned this step (min_tokens)
    num_logprobs: int = -1                     # top-k logprobs to return (max over rows); -1 = none


def build_sampling_batch(requests: list[Request], vocab_size: int, device: torch.device) -> SamplingBatch:
    """The per-row settings of the B requests sampled this step, as tensors on `device`."""
    params = [r.params for r in requests]
    batch = SamplingBatch(
        temperature=torch.tensor([p.temperature for p in params], dtype=torch.float32, device=device),
        generators=[r.generator for r in requests])
    if any(p.top_k > 0 for p in params):
        batch.top_k = torch.tensor([p.top_k if p.top_k > 0 else vocab_size for p in params], device=device)
    if any(p.top_p < 1.0 for p in params):
        batch.top_p = torch.tensor([p.top_p for p in params], dtype=torch.float32, device=device)
    if any(p.min_p > 0.0 for p in params):
        batch.min_p = torch.tensor([p.min_p for p in params], dtype=torch.float32, device=device)
    _add_penalties(batch, requests, vocab_size, device)
    # Until min_tokens, EOS and stop tokens are banned (ids outside the vocabulary can never occur).
    suppress = [(i, [t for t in (*r.eos_token_ids, *r.stop_token_ids) if t < vocab_size])
                for i, r in enumerate(requests) if r.num_output_tokens < r.params.min_tokens]
    batch.suppress = [(i, ids) for i, ids in suppress if ids] or None
    asked = [p.logprobs for p in params if p.logprobs is not None]
    batch.num_logprobs = max(asked) if asked else -1
    return batch


def _add_penalties(batch: SamplingBatch, requests: list[Request], vocab_size: int, device: torch.device) -> None:
    params = [r.params for r in requests]
    shape = (len(requests), vocab_size)
    if any(p.presence_penalty or p.frequency_penalty for p in params):
        counts = torch.zeros(shape, dtype=torch.float32, device=device)
        for i, r in enumerate(requests):
            if r.output_token_ids:
                out_ids = torch.tensor(r.output_token_ids, device=device)
                counts[i].index_add_(0, out_ids, torch.ones(len(out_ids), device=device))
        batch.output_counts = counts
        batch.presence_penalty = torch.tensor([p.presence_penalty for p in params], device=device)
        batch.frequency_penalty = torch.tensor([p.frequency_penalty for p in params], device=device)
    if any(p.repetition_penalty != 1.0 for p in params):
        seen = torch.zeros(shape, dtype=torch.bool, device=device)
        for i, r in enumerate(requests):
            seen[i, torch.tensor(r.all_token_ids, device=device)] = True
        batch.seen_mask = seen
        batch.repetition_penalty = torch.tensor([p.repetition_penalty for p in params], device=device)
