"""What the attention layers need to know about one step's flattened batch.

Built once per step by the model runner and shared by every layer. The batch holds the
scheduled tokens of all requests back to back: first one token for each decoding request,
then the prefill chunk of each prefilling request.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class PrefillChunk:
    """One request's prefill chunk inside the flattened batch."""

    start: int                        # index of the chunk's first token in the batch
    num_tokens: int                   # T: tokens in this chunk
    num_cached: int                   # tokens of this request already in the KV cache before the chunk
    block_table: torch.Tensor | None  # (num_blocks,) long; None when num_cached == 0 (attend to the chunk only)
    mask: torch.Tensor | None         # (T, num_cached + T) bool, True = attend; None when num_cached == 0


@dataclass
class DecodeGroup:
    """Decode rows of similar context length, attended in one call (padding stays small)."""

    start: int                        # index of the group's first token in the batch
    count: int                        # rows in the group, one token each
    block_tables: torch.Tensor        # (count, max_blocks) long, padded with the null block 0
    mask: torch.Tensor                # (count, 1, 1, max_blocks * block_size) bool, True = attend


@dataclass
class AttentionMetadata:
    """Per-step attention inputs, shared by all layers."""

    slot_mapping: torch.Tensor                 # (N,) long: flat cache slot for each token's new K/V
    decode_groups: list[DecodeGroup] = field(default_factory=list)   # cover rows 0..Bd-1 in order
    prefills: list[PrefillChunk] = field(default_factory=list)
