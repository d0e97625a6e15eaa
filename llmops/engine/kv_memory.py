"""The KV cache tensors: one zero-filled buffer, viewed as a (K, V) pair per layer.

Zero-filled because attention reads whole blocks and masks the unused slots, and a masked
NaN would still poison the sum. On CPU the buffer comes from calloc: the OS hands out zero
pages on first touch, so start-up stays fast and memory grows only as blocks are used (the
block pool reuses the most recently freed blocks first, which keeps that footprint small).
"""

from __future__ import annotations

import numpy as np
import torch


def allocate_kv_caches(num_layers: int, num_blocks: int, block_size: int, num_kv_heads: int, head_dim: int,
                       dtype: torch.dtype, device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer (K, V), each (num_blocks, block_size, num_kv_heads, head_dim)."""
    shape = (num_layers, 2, num_blocks, block_size, num_kv_heads, head_dim)
    if device.type == "cpu":
        elem = torch.empty((), dtype=dtype).element_size()
        raw = np.zeros(shape[:-1] + (head_dim * elem,), dtype=np.uint8)
        buffer = torch.from_numpy(raw).view(dtype)
    else:
        buffer = torch.zeros(shape, dtype=dtype, device=device)
    return [(buffer[i, 0], buffer[i, 1]) for i in range(num_layers)]
