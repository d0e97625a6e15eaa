"""The KV cache tensors: one zero-filled buffer, viewed as a (K, V) pair per layer.

Zero-filled because attention reads whole blocks and masks the unused slots, and a masked
NaN would still poison the sum. On CPU the buffer comes from calloc (pages appear on first
touch, so start-up stays fast) and a background thread pre-faults it, so that requests do
not pay page faults the first time a block is used.
"""

from __future__ import annotations

import ctypes
import threading

import numpy as np
import torch

_MADV_POPULATE_WRITE = 23          # Linux >= 5.14; older kernels answer EINVAL and we skip it
_PREFAULT_CHUNK = 64 * 2 ** 20
_THREAD_NAME = "llmops-kv-prefault"


def wait_for_prefault(timeout: float | None = None) -> None:
    """Block until background pre-faulting finished (benchmarks call this before timing)."""
    for thread in threading.enumerate():
        if thread.name == _THREAD_NAME:
            thread.join(timeout)


def allocate_kv_caches(num_layers: int, num_blocks: int, block_size: int, num_kv_heads: int, head_dim: int,
                       dtype: torch.dtype, device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer (K, V), each (num_blocks, block_size, num_kv_heads, head_dim)."""
    shape = (num_layers, 2, num_blocks, block_size, num_kv_heads, head_dim)
    if device.type == "cpu":
        elem = torch.empty((), dtype=dtype).element_size()
        raw = np.zeros(shape[:-1] + (head_dim * elem,), dtype=np.uint8)
        buffer = torch.from_numpy(raw).view(dtype)
        _prefault_in_background(raw)
    else:
        buffer = torch.zeros(shape, dtype=dtype, device=device)
    return [(buffer[i, 0], buffer[i, 1]) for i in range(num_layers)]


def _prefault_in_background(array: np.ndarray) -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        madvise = libc.madvise
    except (OSError, AttributeError):
        return
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    page = 4096
    start = array.ctypes.data
    aligned = (start + page - 1) // page * page
    end = start + array.nbytes

    def run() -> None:
        addr = aligned
        while addr < end:
            length = min(_PREFAULT_CHUNK, (end - addr) // page * page)
            if length <= 0 or madvise(addr, length, _MADV_POPULATE_WRITE) != 0:
                return
            addr += length

    threading.Thread(target=run, name=_THREAD_NAME, daemon=True).start()
