"""Regression tests for problems a code review found: each failed before its fix."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import pytest
import torch

from llmops import LLM, AsyncEngine, SamplingParams
from tests.factories import make_model_folder

GREEDY = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)


@pytest.fixture(scope="module")
def llm(tiny_folder):
    return LLM(model=tiny_folder, dtype="float32", kv_cache_tokens=512, block_size=4)


@pytest.fixture
def async_engine(llm):
    engine = AsyncEngine(engine=llm.engine)
    yield engine
    engine.shutdown()


def greedy_tokens(llm, prompt, params=GREEDY):
    return llm.generate([prompt], params)[0].outputs[0].token_ids


def wait_idle(engine, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stats = engine.stats()
        if stats.num_running == 0 and stats.num_waiting == 0 and stats.kv_blocks_used == 0:
            return stats
        time.sleep(0.02)
    return engine.stats()


def test_out_of_vocab_stop_token_is_rejected_and_others_still_run(llm):
    with pytest.raises(ValueError, match="stop_token_ids"):
        llm.generate(["hi", "there"], [GREEDY, SamplingParams(min_tokens=2, stop_token_ids=[100000])])
    assert len(greedy_tokens(llm, "hi")) == 12


def test_a_caller_with_a_closed_event_loop_does_not_kill_the_engine(llm, async_engine):
    params = SamplingParams(temperature=0, max_tokens=200, ignore_eos=True)
    loop = asyncio.new_event_loop()
    gen = async_engine.generate("abandoned", params, request_id="dead-loop")
    loop.run_until_complete(gen.__anext__())
    loop.close()                                     # no aclose(): the stream is still registered

    async def other():
        final = None
        async for out in async_engine.generate("other", GREEDY):
            final = out
        return final

    final = asyncio.run(asyncio.wait_for(other(), 30))
    assert final.finished and len(final.outputs[0].token_ids) == 12
    assert async_engine.is_running
    assert wait_idle(async_engine).num_running == 0


def test_lone_prefill_under_the_math_attention_kernel(llm):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    expected = greedy_tokens(llm, "math kernel")
    with sdpa_kernel(SDPBackend.MATH):
        assert greedy_tokens(llm, "math kernel") == expected


def test_retry_with_the_same_id_after_a_disconnect_gets_its_own_outputs(llm, async_engine):
    params = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
    expected = greedy_tokens(llm, "retry me", params)

    async def scenario():
        for _ in range(10):
            async with contextlib.aclosing(async_engine.generate("retry me", params, request_id="same")) as gen:
                async for _out in gen:
                    break                            # disconnect after the first output
            final = None
            async for out in async_engine.generate("retry me", params, request_id="same"):
                final = out
            assert final.request_id == "same"
            assert final.outputs[0].token_ids == expected
            assert final.outputs[0].finish_reason == "length"

    asyncio.run(asyncio.wait_for(scenario(), 60))
    assert wait_idle(async_engine).kv_blocks_used == 0


def test_child_ids_cannot_be_taken_and_abort_spares_other_requests(llm):
    engine = llm.engine
    long = SamplingParams(n=2, temperature=0, max_tokens=30, ignore_eos=True)
    engine.add_request("group", long, request_id="a")
    with pytest.raises(ValueError, match="already in use"):
        engine.add_request("x", GREEDY, request_id="a-0")
    engine.add_request("bystander", GREEDY, request_id="b")
    engine.step()
    final = engine.abort("a")
    assert [c.finish_reason for c in final.outputs] == ["abort", "abort"]
    outputs = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            outputs[out.request_id] = out
    assert outputs["b"].finished and len(outputs["b"].outputs[0].token_ids) == 12
    assert "a" not in outputs


def test_the_engine_keeps_its_own_copy_of_the_sampling_params(llm):
    engine = llm.engine
    params = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)
    engine.add_request("mutate", params, request_id="m")
    params.top_k = None                              # after queueing: must not reach the engine
    done = None
    while engine.has_unfinished_requests():
        for out in engine.step():
            done = out
    assert done.finished and len(done.outputs[0].token_ids) == 6
    bad = SamplingParams(temperature=0)
    bad.top_p = 5.0                                  # invalid before queueing: rejected by name
    with pytest.raises(ValueError, match="top_p"):
        engine.add_request("x", bad)


def test_limits_on_logprobs_and_n(llm):
    with pytest.raises(ValueError, match="logprobs"):
        SamplingParams(logprobs=21)
    with pytest.raises(ValueError, match="n must be"):
        llm.generate(["x"], SamplingParams(n=llm.engine.config.scheduler.max_num_seqs + 1))


@pytest.mark.parametrize("value", [float("inf"), float("nan")])
def test_non_finite_temperature_is_rejected(value):
    with pytest.raises(ValueError, match="temperature"):
        SamplingParams(temperature=value)


def test_vanishing_temperature_is_greedy(llm):
    tiny = SamplingParams(temperature=1e-45, max_tokens=12, ignore_eos=True)
    assert greedy_tokens(llm, "cold", tiny) == greedy_tokens(llm, "cold")


def test_stop_token_text_is_not_part_of_the_output(llm):
    tokens = greedy_tokens(llm, "stop here")
    stop = next(t for t in tokens[3:] if t < 256 and t not in tokens[:3])
    out = llm.generate(["stop here"], SamplingParams(temperature=0, max_tokens=12, stop_token_ids=[stop]))[0]
    completion = out.outputs[0]
    assert completion.token_ids[-1] == stop and completion.finish_reason == "stop"
    assert completion.stop_reason == stop
    assert completion.text == llm.get_tokenizer().decode(completion.token_ids[:-1])


def test_text_prompt_beyond_the_model_vocabulary_is_rejected(tmp_path):
    make_model_folder(tmp_path, "llama", vocab_size=256)       # the tokenizer's <s> (256) does not fit
    small = LLM(model=str(tmp_path), dtype="float32", kv_cache_tokens=256, block_size=4)
    with pytest.raises(ValueError, match="vocab|256"):
        small.generate(["<s>hi"])
    assert not small.engine.has_unfinished_requests()


def test_prefix_cache_lookups_count_once_per_request(tiny_folder):
    prompts = [list(range(10, 10 + n)) for n in (5, 17, 9, 30, 3, 12)]
    small = LLM(model=tiny_folder, dtype="float32", kv_cache_tokens=96, block_size=4)
    small.generate(prompts, SamplingParams(temperature=0, max_tokens=20, ignore_eos=True))
    stats = small.engine.stats()
    assert stats.num_preemptions > 0
    assert stats.prefix_cache_queries == sum(len(p) for p in prompts)


def test_engine_logs_reach_the_application_handler(tiny_folder, caplog):
    with caplog.at_level(logging.INFO, logger="llmops"):
        LLM(model=tiny_folder, dtype="float32", kv_cache_tokens=256, block_size=4)
    assert any(r.name.startswith("llmops") and "KV cache" in r.getMessage() for r in caplog.records)


def test_seed_generators_live_on_the_engine_device(llm):
    engine = llm.engine
    engine.add_request("seeded", SamplingParams(seed=3, max_tokens=2), request_id="seeded")
    child = engine.scheduler.requests["seeded"]
    assert child.generator.device == torch.device(engine.device)
    engine.abort("seeded")
