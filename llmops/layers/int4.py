"""Exact 4-bit weights for small batches on CPU.

A checkpoint imported from a 4-bit GGUF (Q4_0, Q4_1, ...) holds weights that sit exactly on a
grid of 16 levels per group of 32 (a scale and a minimum per group). For such a weight the
packed 4-bit form loses nothing, and a matmul over a few rows reads 4x fewer bytes than
bfloat16: that is what bounds decoding one or a few sequences on a CPU. Weights that are not
on such a grid are left alone (the check is exact up to float rounding).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

GROUP_SIZE = 32
MAX_ROWS = 4            # at more rows per step the bfloat16 oneDNN matmul is as fast or faster
_TOLERANCE = 1e-5       # max |requantized - original| / max |original|
_CHUNK_ROWS = 256


@dataclass
class Int4Weight:
    packed: torch.Tensor              # the kernel's packed 4-bit layout of (N, K)
    scales_and_zeros: torch.Tensor    # (K / GROUP_SIZE, N, 2) bfloat16: w = (q - 8) * scale + zero
    group_size: int = GROUP_SIZE

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        """x: (M, K) bfloat16 -> (M, N) bfloat16."""
        return torch._weight_int4pack_mm_for_cpu(x, self.packed, self.group_size, self.scales_and_zeros)


def available() -> bool:
    return hasattr(torch, "_weight_int4pack_mm_for_cpu") and hasattr(torch, "_convert_weight_to_int4pack_for_cpu")


def quantize_if_exact(weight: torch.Tensor) -> Int4Weight | None:
    """The 4-bit form of a float32 (N, K) weight if it is exactly on a 4-bit group grid, else None."""
    n, k = weight.shape
    if weight.dtype != torch.float32 or weight.device.type != "cpu" or k % GROUP_SIZE or not available():
        return None
    weight = weight.detach()
    limit = _TOLERANCE * float(weight.abs().max())
    codes = torch.empty(n, k, dtype=torch.int32)
    scales = torch.empty(n, k // GROUP_SIZE)
    lows = torch.empty(n, k // GROUP_SIZE)
    # Row chunks keep the temporaries small and warm; the first chunk off the grid ends the check.
    for start in range(0, n, _CHUNK_ROWS):
        rows = slice(start, min(n, start + _CHUNK_ROWS))
        q, scale, low, error = _quantize_rows(weight[rows])
        if error > limit:
            return None
        codes[rows], scales[rows], lows[rows] = q, scale, low
    packed = torch._convert_weight_to_int4pack_for_cpu(codes, 1)
    zeros = lows + 8 * scales
    scales_and_zeros = torch.stack((scales, zeros), dim=-1).transpose(0, 1).contiguous().to(torch.bfloat16)
    return Int4Weight(packed, scales_and_zeros)


def _quantize_rows(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """(R, K) float32 -> codes (R, K) int32, scale and minimum (R, K/G), max reconstruction error."""
    r, k = rows.shape
    groups = rows.reshape(r, k // GROUP_SIZE, GROUP_SIZE)
    low, high = groups.amin(-1), groups.amax(-1)
    scale = (high - low) / 15
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    q = (groups - low.unsqueeze(-1)).div_(scale.unsqueeze(-1)).round_().clamp_(0, 15)
    error = float((q * scale.unsqueeze(-1) + low.unsqueeze(-1) - groups).abs_().max())
    return q.reshape(r, k).to(torch.int32), scale, low, error
