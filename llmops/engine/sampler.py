"""logits -> token ids. Pure tensor functions; every row samples with its own generator so
that a seeded request draws the same tokens whatever else shares its batch."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from llmops.engine.sampling_batch import SamplingBatch

__all__ = ["SamplingBatch", "SamplerOutput", "sample"]


@dataclass
class SamplerOutput:
    token_ids: torch.Tensor                    # (B,) long
    logprobs: torch.Tensor | None = None       # (B, 1 + k): chosen token first, then the top k
    logprob_ids: torch.Tensor | None = None    # (B, 1 + k) long
    ranks: torch.Tensor | None = None          # (B,) long rank of the chosen token (1 = best)


def sample(logits: torch.Tensor, batch: SamplingBatch) -> SamplerOutput:
    """logits: (B, V) float32 -> sampled ids and, when asked, logprobs of the raw distribution."""
    raw_logprobs = torch.log_softmax(logits, dim=-1) if batch.num_logprobs >= 0 else None
    logits = _apply_penalties(logits, batch)
    greedy = batch.temperature == 0
    if bool(greedy.all()):
        token_ids = logits.argmax(dim=-1)
    else:
        token_ids = _sample_random(logits, batch)
        if bool(greedy.any()):
            token_ids = torch.where(greedy, logits.argmax(dim=-1), token_ids)
    out = SamplerOutput(token_ids=token_ids)
    if raw_logprobs is not None:
        _gather_logprobs(raw_logprobs, token_ids, batch.num_logprobs, out)
    return out


def _apply_penalties(logits: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
    if batch.suppress:
        logits = logits.clone()
        for row, ids in batch.suppress:
            logits[row, ids] = float("-inf")
    if batch.repetition_penalty is not None and batch.seen_mask is not None:
        penalty = batch.repetition_penalty.unsqueeze(1)                     # (B, 1)
        scaled = torch.where(logits > 0, logits / penalty, logits * penalty)
        logits = torch.where(batch.seen_mask, scaled, logits)
    if batch.output_counts is not None:
        counts = batch.output_counts
        if batch.frequency_penalty is not None:
            logits = logits - batch.frequency_penalty.unsqueeze(1) * counts
        if batch.presence_penalty is not None:
            logits = logits - batch.presence_penalty.unsqueeze(1) * (counts > 0).to(logits.dtype)
    return logits


def _sample_random(logits: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
    temperature = torch.where(batch.temperature == 0, torch.ones_like(batch.temperature), batch.temperature)
    logits = logits / temperature.unsqueeze(1)
    if batch.top_k is not None:
        logits = _top_k(logits, batch.top_k)
    if batch.top_p is not None:
        logits = _top_p(logits, batch.top_p)
    probs = torch.softmax(logits, dim=-1)
    if batch.min_p is not None:
        keep = probs >= batch.min_p.unsqueeze(1) * probs.max(dim=-1, keepdim=True).values
        probs = torch.where(keep, probs, torch.zeros_like(probs))
    # Exponential race: argmax(p / E) with E ~ Exp(1) draws from p; each row uses its own generator.
    noise = torch.empty_like(probs)
    for row, generator in enumerate(batch.generators):
        noise[row].exponential_(generator=generator)
    return (probs / noise.clamp_(min=1e-30)).argmax(dim=-1)


def _top_k(logits: torch.Tensor, top_k: torch.Tensor) -> torch.Tensor:
    k = top_k.clamp(1, logits.shape[-1])
    kth = logits.topk(int(k.max()), dim=-1).values.gather(1, (k - 1).unsqueeze(1))   # (B, 1)
    return logits.masked_fill(logits < kth, float("-inf"))


def _top_p(logits: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    # Drop a token when the mass before it already reaches top_p (the best token always stays).
    drop = (cum - sorted_logits.softmax(dim=-1)) >= top_p.unsqueeze(1)
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.empty_like(logits).scatter_(1, order, sorted_logits)


def _gather_logprobs(raw: torch.Tensor, token_ids: torch.Tensor, k: int, out: SamplerOutput) -> None:
    chosen = raw.gather(1, token_ids.unsqueeze(1))                          # (B, 1)
    out.ranks = (raw > chosen).sum(dim=-1) + 1
    k = min(k, raw.shape[-1])
    if k > 0:
        top = raw.topk(k, dim=-1)
        out.logprobs = torch.cat((chosen, top.values), dim=1)
        out.logprob_ids = torch.cat((token_ids.unsqueeze(1), top.indices), dim=1)
    else:
        out.logprobs, out.logprob_ids = chosen, token_ids.unsqueeze(1)
