"""The real default model (SmolLM2-135M-Instruct, imported from the installed GGUF on first use)
against transformers on the same stored folder: logits, greedy tokens, sensible answers,
bfloat16, a second start that reuses the store, and batch invariance."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from llmops import LLM, ModelStore, SamplingParams
from llmops.models.store import DEFAULT_MODEL_NAME, DEFAULT_MODEL_PACKAGE
from tests.factories import reference_greedy
from tests.unit.test_model_oracle import Harness, rel_err

pytestmark = pytest.mark.slow

# A small KV cache: the default one (a share of free memory) is pre-faulted in the background,
# which only costs start-up time here.
KV_TOKENS = 4096
CHAT_PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "List three primary colors.",
]
BATCH_PROMPTS = CHAT_PROMPTS + [
    "What is 2 + 2?",
    "Name a planet in the solar system.",
    "Translate 'good morning' into French.",
    "Give me one tip for writing clean code.",
    "Why is the sky blue? Answer in one sentence.",
]
NEAR_TIE = 1e-3


def chat(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


@pytest.fixture(scope="module")
def store_home(tmp_path_factory):
    """One LLMOPS_HOME for the module, so the default model is imported once."""
    if importlib.util.find_spec(DEFAULT_MODEL_PACKAGE) is None:
        pytest.skip(f"the default model package {DEFAULT_MODEL_PACKAGE} is not installed")
    return tmp_path_factory.mktemp("default-model-home")


@pytest.fixture(autouse=True)
def _shared_store(store_home, monkeypatch):
    """Every test of this module sees the module's store (overrides the per-test one)."""
    monkeypatch.setenv("LLMOPS_HOME", str(store_home))


def _llm_in(store_home, **kwargs) -> LLM:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LLMOPS_HOME", str(store_home))
        return LLM(kv_cache_tokens=KV_TOKENS, **kwargs)


@pytest.fixture(scope="module")
def llm(store_home) -> LLM:
    return _llm_in(store_home, dtype="float32")


@pytest.fixture(scope="module")
def folder(llm, store_home):
    path = llm.engine.model_path
    assert path == ModelStore(store_home / "models").get(DEFAULT_MODEL_NAME).path
    return path


@pytest.fixture(scope="module")
def hf(folder):
    transformers = pytest.importorskip("transformers")
    return transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


def test_last_position_logits_match_transformers(llm, folder, hf):
    tokenizer = llm.get_tokenizer()
    prompts = [tokenizer.encode_chat(chat(CHAT_PROMPTS[0])),
               tokenizer.encode("The quick brown fox jumps over the lazy dog. " * 3)]
    harness = Harness(folder, block_size=16, num_blocks=32)
    for ids in prompts:
        with torch.no_grad():
            ref = hf(torch.tensor([ids])).logits[0]
        request = harness.request(list(ids))
        half = len(ids) // 2
        harness.run_chunk(request, half)                           # chunked prefill through the cache
        ours = harness.run_chunk(request, len(ids) - half)[0]
        assert rel_err(ours, ref[-1]) < 1e-4
        harness = Harness(folder, block_size=16, num_blocks=32)


def test_engine_logprobs_match_transformers(llm, hf):
    """Through the whole engine: the logprob of each generated token equals transformers'."""
    ids = llm.get_tokenizer().encode_chat(chat(CHAT_PROMPTS[2]))
    [out] = llm.generate([ids], SamplingParams(temperature=0, max_tokens=16, ignore_eos=True, logprobs=1))
    tokens = out.outputs[0].token_ids
    with torch.no_grad():
        ref = torch.log_softmax(hf(torch.tensor([ids + tokens])).logits[0].float(), dim=-1)
    for i, (token, position) in enumerate(zip(tokens, out.outputs[0].logprobs)):
        expected = ref[len(ids) - 1 + i, token].item()
        assert abs(position[token].logprob - expected) < 1e-3, f"position {i}"


def test_greedy_tokens_match_transformers(llm, hf):
    tokenizer = llm.get_tokenizer()
    prompts = [tokenizer.encode_chat(chat(p)) for p in CHAT_PROMPTS]
    outs = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=32, ignore_eos=True))
    for prompt, out in zip(prompts, outs):
        assert out.outputs[0].token_ids == reference_greedy(hf, prompt, 32), tokenizer.decode(prompt)


def test_capital_of_france(llm):
    [out] = llm.chat(chat("What is the capital of France?"), SamplingParams(temperature=0, max_tokens=32))
    completion = out.outputs[0]
    assert "Paris" in completion.text
    assert completion.finish_reason == "stop"           # the model ends its answer with EOS
    assert completion.text == llm.get_tokenizer().decode(completion.token_ids)


def test_bfloat16_answers_sensibly(store_home):
    bf16 = _llm_in(store_home, dtype="bfloat16")
    assert bf16.engine.dtype == torch.bfloat16
    [out] = bf16.chat(chat("What is the capital of France?"), SamplingParams(temperature=0, max_tokens=32))
    assert "Paris" in out.outputs[0].text
    # The Q4_1 file's linear weights sit on a 4-bit grid: all but the Q8_0 head get exact 4-bit copies,
    # which a single request's decode steps use.
    from llmops.layers.linear import Linear
    layers = [m for m in bf16.engine.runner.model.modules() if isinstance(m, Linear)]
    assert sum(m.int4 is not None for m in layers) == len(layers) - 1


def test_second_start_reuses_the_store(llm, folder, store_home):
    store = ModelStore(store_home / "models")
    watched = sorted(p for p in folder.iterdir() if p.is_file())
    assert {"model.safetensors", "manifest.json"} <= {p.name for p in watched}
    before = {p.name: p.stat().st_mtime_ns for p in watched}
    entries = store.list()
    assert [e.name for e in entries] == [DEFAULT_MODEL_NAME]

    second = LLM(dtype="float32", kv_cache_tokens=256)        # LLMOPS_HOME is the module's store
    assert second.engine.model_path == folder
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir() if p.is_file()} == before
    assert store.list() == entries
    assert not any(p.name.startswith(".staging") for p in (store_home / "models").iterdir())


def _first_difference(a: list[int], b: list[int]) -> int | None:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def test_batched_equals_alone(llm):
    tokenizer = llm.get_tokenizer()
    prompts = [tokenizer.encode_chat(chat(p)) for p in BATCH_PROMPTS]
    params = SamplingParams(temperature=0, max_tokens=32, logprobs=2)
    alone = [llm.generate([p], params)[0].outputs[0] for p in prompts]
    batched = [o.outputs[0] for o in llm.generate(prompts, params)]
    for text, a, b in zip(BATCH_PROMPTS, alone, batched):
        i = _first_difference(a.token_ids, b.token_ids)
        if i is None:
            continue
        assert i < len(a.logprobs), f"{text!r}: one run stopped early at {i} without a differing token"
        top = sorted((lp.logprob for lp in a.logprobs[i].values()), reverse=True)
        gap = top[0] - top[1]
        assert gap < NEAR_TIE, f"{text!r}: batched differs from alone at token {i} (top-2 gap {gap:.2e})"
    stats = llm.engine.stats()
    assert stats.num_running == 0 and stats.kv_blocks_used == 0
