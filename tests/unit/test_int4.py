"""Exact 4-bit copies of weights that sit on a 4-bit grid, used for small bfloat16 batches."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from llmops import LLM, SamplingParams
from llmops.layers import int4
from llmops.layers.linear import Linear
from tests.factories import make_model_folder

pytestmark = pytest.mark.skipif(not int4.available(), reason="this torch has no CPU int4 kernel")


def on_grid(n: int, k: int, seed: int = 0) -> torch.Tensor:
    """A float32 (n, k) weight exactly on a Q4_1-style grid: w = q * scale + minimum per group of 32."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randint(0, 16, (n, k // 32, 32), generator=g).float()
    q[..., 0], q[..., 1] = 0, 15                      # every group spans the full range, as llama.cpp's do
    scale = torch.rand(n, k // 32, 1, generator=g) * 0.01 + 0.001
    low = -torch.rand(n, k // 32, 1, generator=g) * 0.05
    return (q * scale + low).view(n, k)


def test_weight_on_a_grid_is_kept_exactly():
    w = on_grid(64, 128)
    packed = int4.quantize_if_exact(w)
    assert packed is not None
    x = torch.randn(3, 128, dtype=torch.bfloat16)
    ref = x.float() @ w.t()
    dense_bf16 = (x @ w.to(torch.bfloat16).t()).float()
    err = ((packed.matmul(x).float() - ref).norm() / ref.norm()).item()
    assert err < 2 * ((dense_bf16 - ref).norm() / ref.norm()).item() + 1e-3


@pytest.mark.parametrize("make", [lambda: torch.randn(64, 128), lambda: on_grid(64, 96)[:, :90].contiguous(),
                                  lambda: on_grid(64, 128).to(torch.bfloat16)])
def test_weights_off_the_grid_or_unsupported_are_left_alone(make):
    assert int4.quantize_if_exact(make()) is None


def test_one_off_grid_value_late_in_the_weight_is_caught():
    w = on_grid(600, 128)
    w[550, 7] += 1e-3                                  # in the third row chunk
    assert int4.quantize_if_exact(w) is None


def test_linear_uses_4_bits_for_few_rows_and_bfloat16_beyond():
    layer = Linear(128, 64)
    layer.weight.data = on_grid(64, 128)
    assert layer.prepare_int4()
    layer.to(torch.bfloat16)
    layer.pack()
    calls = []
    original = layer.int4.matmul
    layer.int4.matmul = lambda x: calls.append(x.shape[0]) or original(x)
    for rows in (1, int4.MAX_ROWS, int4.MAX_ROWS + 1, 32):
        layer(torch.randn(rows, 128, dtype=torch.bfloat16))
    assert calls == [1, int4.MAX_ROWS]


def test_engine_on_grid_weights_answers_like_the_dense_path(tmp_path):
    make_model_folder(tmp_path, "llama")
    weights = load_file(tmp_path / "model.safetensors")
    for name, t in weights.items():
        if t.dim() == 2 and "embed" not in name and "lm_head" not in name:
            weights[name] = on_grid(*t.shape, seed=len(name)) * 5
    save_file(weights, tmp_path / "model.safetensors")
    kwargs = dict(model=str(tmp_path), dtype="bfloat16", kv_cache_tokens=512, block_size=4)
    with_int4 = LLM(**kwargs)
    layers = [m for m in with_int4.engine.runner.model.modules() if isinstance(m, Linear)]
    assert sum(m.int4 is not None for m in layers) == len(layers) - 1      # all but the head
    dense = LLM(**kwargs, int4_small_batch=False)
    assert all(m.int4 is None for m in dense.engine.runner.model.modules() if isinstance(m, Linear))
    params = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True, logprobs=0)
    a = with_int4.generate([[5, 6, 7, 8]], params)[0].outputs[0]
    b = dense.generate([[5, 6, 7, 8]], params)[0].outputs[0]
    # Same weights, two bfloat16 kernels: the first token's distribution agrees closely.
    assert a.token_ids[0] == b.token_ids[0]
    assert abs(a.logprobs[0][a.token_ids[0]].logprob - b.logprobs[0][b.token_ids[0]].logprob) < 0.05
