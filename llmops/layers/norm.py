"""RMSNorm (statistics accumulated in float32 by the fused kernel, whatever the activation dtype)."""

from __future__ import annotations

import torch


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x: (N, hidden) -> (N, hidden) in x's dtype."""
    return torch.nn.functional.rms_norm(x, weight.shape, weight, eps)
