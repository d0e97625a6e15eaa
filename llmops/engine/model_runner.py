"""Scheduled batch -> input tensors -> forward -> logits -> sampled tokens.

Owns the KV cache tensors: per layer a (K, V) pair of (num_blocks, block_size, Hkv, D).
"""

from __future__ import annotations

import torch

from llmops.engine.kv_memory import allocate_kv_caches
from llmops.engine.outputs import ModelRunnerOutput, SampledToken, ScheduledChunk, SchedulerOutput
from llmops.engine.request import Request
from llmops.engine.sampler import SamplerOutput, sample
from llmops.engine.sampling_batch import build_sampling_batch
from llmops.layers.attention_metadata import AttentionMetadata, DecodeGroup, PrefillChunk
from llmops.models.llama import LlamaForCausalLM


class ModelRunner:
    def __init__(self, model: LlamaForCausalLM, num_blocks: int, block_size: int,
                 dtype: torch.dtype, device: torch.device) -> None:
        self.model = model
        self.block_size = block_size
        self.device = device
        self.vocab_size = model.cfg.vocab_size
        cfg = model.cfg
        self.kv_caches = allocate_kv_caches(cfg.num_hidden_layers, num_blocks, block_size,
                                            cfg.num_key_value_heads, cfg.head_dim, dtype, device)

    @staticmethod
    def kv_bytes_per_token(model_cfg, dtype: torch.dtype) -> int:
        elem = torch.empty((), dtype=dtype).element_size()
        return 2 * model_cfg.num_hidden_layers * model_cfg.num_key_value_heads * model_cfg.head_dim * elem

    @torch.inference_mode()
    def execute(self, out: SchedulerOutput) -> ModelRunnerOutput:
        logits, requests = self.compute_logits(out)
        if not requests:
            return ModelRunnerOutput()
        return _to_output(requests, sample(logits, build_sampling_batch(requests, self.vocab_size, self.device)))

    @torch.inference_mode()
    def compute_logits(self, out: SchedulerOutput) -> tuple[torch.Tensor, list[Request]]:
        """Run the batch; (B, V) float32 logits for the B requests whose chunk ends their tokens."""
        # Decodes sorted by context length so that similar lengths share one attention call.
        decodes = sorted(out.decodes, key=lambda c: len(c.request.block_ids))
        input_ids, positions, meta = self._prepare(decodes, out.prefills)
        hidden = self.model(input_ids, positions, self.kv_caches, meta)   # (N, hidden)
        rows, requests, offset = [], [], 0
        for chunk in decodes + out.prefills:
            offset += chunk.num_tokens
            if chunk.samples:
                rows.append(offset - 1)            # the chunk's last token predicts the next one
                requests.append(chunk.request)
        if not rows:
            return torch.empty(0, self.vocab_size), []
        return self.model.logits(hidden[torch.tensor(rows, device=self.device)]), requests

    def _prepare(self, decodes: list[ScheduledChunk], prefills: list[ScheduledChunk]
                 ) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata]:
        """Flatten all chunks into one batch: decodes first, then prefill chunks."""
        ids: list[int] = []
        pos: list[int] = []
        slots: list[int] = []
        bs = self.block_size
        for chunk in decodes + prefills:
            r, start = chunk.request, chunk.request.num_computed_tokens
            ids.extend(r.all_token_ids[start:start + chunk.num_tokens])
            for p in range(start, start + chunk.num_tokens):
                pos.append(p)
                slots.append(r.block_ids[p // bs] * bs + p % bs)
        dev = self.device
        meta = AttentionMetadata(
            slot_mapping=torch.tensor(slots, dtype=torch.long, device=dev),
            decode_groups=self._decode_groups(decodes),
            prefills=self._prefill_chunks(len(decodes), prefills))
        return (torch.tensor(ids, dtype=torch.long, device=dev),
                torch.tensor(pos, dtype=torch.long, device=dev), meta)

    def _decode_groups(self, decodes: list[ScheduledChunk]) -> list[DecodeGroup]:
        """Split length-sorted decodes where a request has over twice the blocks of its group's
        first: padding then costs at most about 2x, instead of everyone paying for the longest."""
        groups, first = [], 0
        for i in range(1, len(decodes) + 1):
            if i == len(decodes) or len(decodes[i].request.block_ids) > 2 * len(decodes[first].request.block_ids):
                groups.append(self._decode_group(decodes, first, i))
                first = i
        return groups

    def _decode_group(self, decodes: list[ScheduledChunk], first: int, end: int) -> DecodeGroup:
        """Block tables padded with the null block, and the matching key mask."""
        members = [c.request for c in decodes[first:end]]
        width = len(members[-1].block_ids)
        tables = [r.block_ids + [0] * (width - len(r.block_ids)) for r in members]
        lengths = torch.tensor([r.num_computed_tokens + 1 for r in members], device=self.device)
        keys = torch.arange(width * self.block_size, device=self.device)
        mask = (keys.unsqueeze(0) < lengths.unsqueeze(1))[:, None, None, :]   # (count, 1, 1, L)
        return DecodeGroup(first, end - first, torch.tensor(tables, dtype=torch.long, device=self.device), mask)

    def _prefill_chunks(self, start: int, prefills: list[ScheduledChunk]) -> list[PrefillChunk]:
        chunks = []
        for chunk in prefills:
            r, cached, n = chunk.request, chunk.request.num_computed_tokens, chunk.num_tokens
            table = mask = None
            if cached:
                nb = -(-(cached + n) // self.block_size)
                table = torch.tensor(r.block_ids[:nb], dtype=torch.long, device=self.device)
                q_pos = torch.arange(cached, cached + n, device=self.device)
                mask = torch.arange(cached + n, device=self.device).unsqueeze(0) <= q_pos.unsqueeze(1)
            chunks.append(PrefillChunk(start, n, cached, table, mask))
            start += n
        return chunks


def _to_output(requests: list[Request], result: SamplerOutput) -> ModelRunnerOutput:
    out = ModelRunnerOutput()
    token_ids = result.token_ids.tolist()
    lps = result.logprobs.tolist() if result.logprobs is not None else None
    lp_ids = result.logprob_ids.tolist() if result.logprob_ids is not None else None
    ranks = result.ranks.tolist() if result.ranks is not None else None
    for i, r in enumerate(requests):
        sampled = SampledToken(token_ids[i])
        k = r.params.logprobs
        if k is not None and lps is not None:
            ids, values = lp_ids[i][:1 + k], lps[i][:1 + k]
            sampled.logprobs = dict(zip(ids[1:], values[1:]))
            sampled.logprobs[ids[0]] = values[0]
            sampled.ranks = {tid: rank for rank, tid in enumerate(ids[1:], start=1)}
            sampled.ranks[ids[0]] = ranks[i]
        out.sampled[r.request_id] = sampled
    return out
