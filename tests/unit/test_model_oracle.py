"""Our Llama-family implementation against transformers on the same weights (float32)."""

from __future__ import annotations

import pytest
import torch

from llmops.engine.kv_cache import KVCacheManager
from llmops.engine.model_runner import ModelRunner
from llmops.engine.outputs import ScheduledChunk, SchedulerOutput
from llmops.engine.request import Request
from llmops.engine.sampling_params import SamplingParams
from llmops.models.loader import load_model
from tests.factories import VARIANTS, make_model_folder, reference_greedy

CPU = torch.device("cpu")


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


class Harness:
    """A model runner driven by hand: prefill in chunks, then decode, reading logits each time."""

    def __init__(self, folder, block_size: int = 4, num_blocks: int = 64) -> None:
        model = load_model(folder, torch.float32, CPU)
        self.runner = ModelRunner(model, num_blocks, block_size, torch.float32, CPU)
        self.kv = KVCacheManager(num_blocks, block_size, enable_prefix_caching=False)

    def request(self, ids: list[int]) -> Request:
        return Request("r", ids, SamplingParams(), (), max_model_len=10_000)

    def run_chunk(self, request: Request, n: int) -> torch.Tensor:
        self.kv.allocate(request, n)
        chunk = ScheduledChunk(request, n)
        out = SchedulerOutput(decodes=[chunk] if n == 1 else [], prefills=[chunk] if n > 1 else [])
        logits, _ = self.runner.compute_logits(out)
        request.num_computed_tokens += n
        return logits


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_last_position_logits_match_transformers(tmp_path, variant):
    hf = make_model_folder(tmp_path, variant)
    ids = torch.randint(0, 256, (37,), generator=torch.Generator().manual_seed(1)).tolist()
    with torch.no_grad():
        ref = hf(torch.tensor([ids])).logits[0, -1]
    h = Harness(tmp_path)
    ours = h.run_chunk(h.request(ids), len(ids))[0]
    assert rel_err(ours, ref) < 1e-4


@pytest.mark.parametrize("variant", ["llama", "qwen2", "llama3"])
def test_chunked_prefill_and_decode_match_transformers(tmp_path, variant):
    """Prefill in uneven chunks through the paged cache, then decode token by token."""
    hf = make_model_folder(tmp_path, variant)
    ids = torch.randint(0, 256, (30,), generator=torch.Generator().manual_seed(2)).tolist()
    h = Harness(tmp_path)
    req = h.request(ids)
    for n in (7, 1, 13):
        h.run_chunk(req, n)
    last = h.run_chunk(req, 30 - 21)[0]
    with torch.no_grad():
        ref = hf(torch.tensor([ids])).logits[0]
    assert rel_err(last, ref[-1]) < 1e-4
    for step in range(5):   # decode: append the greedy token and compare again
        token = int(last.argmax())
        ids.append(token)
        req.append_token(token)
        last = h.run_chunk(req, 1)[0]
        with torch.no_grad():
            ref_last = hf(torch.tensor([ids])).logits[0, -1]
        assert rel_err(last, ref_last) < 1e-4, f"decode step {step}"


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_greedy_tokens_match_transformers(tmp_path, variant):
    from llmops import LLM

    hf = make_model_folder(tmp_path, variant)
    llm = LLM(model=str(tmp_path), dtype="float32", kv_cache_tokens=512, block_size=4)
    prompts = [[5, 6, 7, 8, 9, 10, 11], [40, 41, 42], list(range(100, 123))]
    outs = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=24, ignore_eos=True))
    for prompt, out in zip(prompts, outs):
        assert out.outputs[0].token_ids == reference_greedy(hf, prompt, 24)


def test_bfloat16_stays_close_to_float32(tmp_path):
    make_model_folder(tmp_path, "llama")
    ids = list(range(1, 30))
    f32 = Harness(tmp_path)
    ref = f32.run_chunk(f32.request(ids), len(ids))[0]
    model = load_model(tmp_path, torch.bfloat16, CPU)
    runner = ModelRunner(model, 64, 4, torch.bfloat16, CPU)
    kv = KVCacheManager(64, 4, enable_prefix_caching=False)
    req = Request("r", ids, SamplingParams(), (), max_model_len=10_000)
    kv.allocate(req, len(ids))
    logits, _ = runner.compute_logits(SchedulerOutput(prefills=[ScheduledChunk(req, len(ids))]))
    assert rel_err(logits[0], ref) < 3e-2


def test_load_rejects_missing_tensor(tmp_path):
    from safetensors.torch import load_file, save_file

    make_model_folder(tmp_path, "llama")
    weights = load_file(tmp_path / "model.safetensors")
    del weights["model.layers.1.mlp.up_proj.weight"]
    save_file(weights, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match="missing"):
        load_model(tmp_path, torch.float32, CPU)


def test_load_rejects_unsupported_architecture(tmp_path):
    import json

    make_model_folder(tmp_path, "llama")
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["model_type"] = "gpt_neox"
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="gpt_neox"):
        load_model(tmp_path, torch.float32, CPU)
