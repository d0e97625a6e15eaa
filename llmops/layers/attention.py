"""Paged attention: write this step's K/V into cache slots, attend over each request's blocks.

The KV cache of one layer is a pair of tensors (num_blocks, block_size, num_kv_heads, head_dim).
Block 0 is the null block: zero-filled, never handed out, used to pad block tables.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from llmops.layers.attention_metadata import AttentionMetadata, DecodeGroup, PrefillChunk


def write_kv(k_cache: torch.Tensor, v_cache: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
             slot_mapping: torch.Tensor) -> None:
    """k, v: (N, Hkv, D) go into the flat slots (num_blocks * block_size) named by slot_mapping."""
    k_cache.view(-1, *k_cache.shape[2:]).index_copy_(0, slot_mapping, k)
    v_cache.view(-1, *v_cache.shape[2:]).index_copy_(0, slot_mapping, v)


def gather_blocks(cache: torch.Tensor, block_tables: torch.Tensor) -> torch.Tensor:
    """block_tables: (B, nb) -> (B, Hkv, nb * block_size, D), each request's context in order."""
    b, nb = block_tables.shape
    blocks = cache.index_select(0, block_tables.reshape(-1))     # (B*nb, bs, Hkv, D)
    return blocks.view(b, nb * cache.shape[1], *cache.shape[2:]).transpose(1, 2)


def paged_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor,
                    v_cache: torch.Tensor, meta: AttentionMetadata, scale: float) -> torch.Tensor:
    """q: (N, Hq, D), k/v: (N, Hkv, D) for this step's tokens -> (N, Hq, D)."""
    write_kv(k_cache, v_cache, k, v, meta.slot_mapping)
    if not meta.prefills and len(meta.decode_groups) == 1:   # the common decode-only step
        return _decode(q, k_cache, v_cache, meta.decode_groups[0], scale)
    if not meta.decode_groups and len(meta.prefills) == 1:   # one prefill chunk alone
        return _prefill(q, k, v, k_cache, v_cache, meta.prefills[0], scale)
    out = torch.empty_like(q)
    for group in meta.decode_groups:
        rows = slice(group.start, group.start + group.count)
        out[rows] = _decode(q[rows], k_cache, v_cache, group, scale)
    for chunk in meta.prefills:
        rows = slice(chunk.start, chunk.start + chunk.num_tokens)
        out[rows] = _prefill(q[rows], k[rows], v[rows], k_cache, v_cache, chunk, scale)
    return out


def _decode(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
            group: DecodeGroup, scale: float) -> torch.Tensor:
    """One query token per request. q: (Bd, Hq, D) -> (Bd, Hq, D)."""
    bd, hq, d = q.shape
    hkv = k_cache.shape[2]
    keys = gather_blocks(k_cache, group.block_tables)           # (Bd, Hkv, L, D)
    values = gather_blocks(v_cache, group.block_tables)
    # Grouped-query attention without repeating K/V: the G query heads sharing a KV head
    # become G query rows of that head. (Bd, Hkv, G, D)
    qg = q.view(bd, hkv, hq // hkv, d)
    out = F.scaled_dot_product_attention(qg, keys, values, attn_mask=group.mask, scale=scale)
    return out.reshape(bd, hq, d)


def _prefill(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor,
             v_cache: torch.Tensor, chunk: PrefillChunk, scale: float) -> torch.Tensor:
    """A chunk of T tokens, causal within itself, after num_cached tokens. q: (T, Hq, D)."""
    t, hq, d = q.shape
    qh = q.transpose(0, 1).unsqueeze(0)                          # (1, Hq, T, D)
    if chunk.block_table is None:
        kh, vh = k.transpose(0, 1).unsqueeze(0), v.transpose(0, 1).unsqueeze(0)   # (1, Hkv, T, D)
        out = F.scaled_dot_product_attention(qh, kh, vh, is_causal=True, scale=scale, enable_gqa=True)
    else:
        table = chunk.block_table.unsqueeze(0)
        length = chunk.num_cached + t
        kh = gather_blocks(k_cache, table)[:, :, :length]        # (1, Hkv, L, D)
        vh = gather_blocks(v_cache, table)[:, :, :length]
        out = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=chunk.mask, scale=scale, enable_gqa=True)
    return out.squeeze(0).transpose(0, 1)                        # (T, Hq, D)
