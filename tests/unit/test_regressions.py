"""Regression tests for the problems a code review found. Each one failed (or crashed the engine)
before its fix; all run on the tiny byte-level model and finish in a few seconds. Every async
wait has a timeout, and every engine started here is shut down, so nothing can hang."""

from __future__ import annotations

import asyncio
import io
import logging
import time

import pytest

from llmops import LLM, AsyncEngine, SamplingParams
from tests.factories import make_model_folder

TIMEOUT = 20.0
ENGINE_ARGS = dict(dtype="float32", kv_cache_tokens=512, block_size=4)
GREEDY = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
LONG = SamplingParams(temperature=0, max_tokens=400, ignore_eos=True)


def make_llm(folder: str, **kwargs) -> LLM:
    args = dict(model=folder, **ENGINE_ARGS)
    args.update(kwargs)
    return LLM(**args)


@pytest.fixture(scope="module")
def llm(tiny_folder) -> LLM:
    """Shared, only ever driven through LLM.generate (which leaves the engine idle)."""
    return make_llm(tiny_folder)


@pytest.fixture
def fresh_llm(tiny_folder) -> LLM:
    """An LLM of its own, for tests that drive the engine step by step."""
    return make_llm(tiny_folder)


@pytest.fixture
def async_engine(tiny_folder):
    """An AsyncEngine over its own LLMEngine: its loop thread must never share an engine that
    the test also steps from the main thread."""
    eng = AsyncEngine.from_kwargs(model=tiny_folder, **ENGINE_ARGS)
    yield eng
    eng.shutdown()


def run(coro, timeout: float = TIMEOUT):
    """Run a coroutine on a fresh event loop, failing (not hanging) after `timeout` seconds."""
    async def bounded():
        return await asyncio.wait_for(coro, timeout)
    return asyncio.run(bounded())


async def collect(eng: AsyncEngine, prompt, params=GREEDY, request_id=None) -> list:
    return [out async for out in eng.generate(prompt, params, request_id)]


def greedy_tokens(llm: LLM, prompt, max_tokens: int = 12) -> list[int]:
    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
    return llm.generate([prompt], params)[0].outputs[0].token_ids


def drain(engine, max_steps: int = 2000) -> dict:
    """Step a synchronous engine until it is idle; the last output of each request id."""
    last = {}
    for _ in range(max_steps):
        if not engine.has_unfinished_requests():
            return last
        for out in engine.step():
            last[out.request_id] = out
    raise AssertionError(f"engine still busy after {max_steps} steps: {engine.stats()}")


def assert_idle(engine) -> None:
    stats = engine.stats()
    assert not engine.has_unfinished_requests()
    assert stats.num_running == 0 and stats.num_waiting == 0 and stats.kv_blocks_used == 0


def wait_until(predicate, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


# ---- 1. a stop token id outside the vocabulary -------------------------------------------------

def test_out_of_vocab_stop_token_is_rejected_and_an_innocent_request_completes(fresh_llm, llm):
    bad = SamplingParams(min_tokens=2, stop_token_ids=[100000])
    engine = fresh_llm.engine
    engine.add_request("innocent", GREEDY, request_id="innocent")
    with pytest.raises(ValueError, match="stop_token_ids"):
        engine.add_request("guilty", bad, request_id="guilty")
    outs = drain(engine)                             # used to raise IndexError in step()
    assert set(outs) == {"innocent"}
    innocent = outs["innocent"].outputs[0]
    assert innocent.finish_reason == "length"
    assert innocent.token_ids == greedy_tokens(llm, "innocent")
    assert_idle(engine)
    # The offline API rejects it too, and the innocent prompt of the same call leaves nothing behind.
    with pytest.raises(ValueError, match="stop_token_ids"):
        fresh_llm.generate(["innocent", "guilty"], [GREEDY, bad])
    assert_idle(engine)
    assert fresh_llm.generate("innocent", GREEDY)[0].outputs[0].token_ids == innocent.token_ids


# ---- 2. a caller whose event loop closes while its stream is live -----------------------------

def test_a_caller_with_a_closed_event_loop_does_not_kill_the_engine(async_engine, llm):
    loop = asyncio.new_event_loop()
    gen = async_engine.generate("abandoned", LONG, request_id="dead-loop")
    try:
        first = loop.run_until_complete(asyncio.wait_for(gen.__anext__(), TIMEOUT))
        assert not first.finished
    finally:
        loop.close()                                 # the stream is still registered and live

    outs = run(collect(async_engine, "another caller"))   # used to get EngineDeadError
    final = outs[-1]
    assert final.finished and final.request_id != "dead-loop"
    assert final.outputs[0].finish_reason == "length"
    assert final.outputs[0].token_ids == greedy_tokens(llm, "another caller")
    assert async_engine.is_running
    # The abandoned request is aborted: it does not run on to its 400 tokens.
    assert wait_until(lambda: async_engine.stats().num_running == 0), async_engine.stats()
    assert async_engine.stats().kv_blocks_used == 0
    assert async_engine.is_running
    del gen                                          # its loop is closed: finalizing it is a no-op


# ---- 3. the attention output under SDPA's math kernel ----------------------------------------

def test_lone_prefill_under_the_math_attention_kernel(fresh_llm):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    expected = greedy_tokens(fresh_llm, "math kernel", 8)
    with sdpa_kernel(SDPBackend.MATH):               # used to fail: .view on a non-contiguous tensor
        [out] = fresh_llm.generate("math kernel", SamplingParams(temperature=0, max_tokens=8, ignore_eos=True))
    assert out.outputs[0].token_ids == expected
    assert out.outputs[0].finish_reason == "length"


# ---- 4. retrying with the same request_id right after a disconnect ---------------------------

def test_retry_with_the_same_id_after_a_disconnect_gets_only_its_own_outputs(async_engine, llm):
    params = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
    expected = greedy_tokens(llm, "retry me", 8)     # computed on another engine

    async def scenario():
        for attempt in range(10):
            gen = async_engine.generate("retry me", params, request_id="same")
            async for first in gen:
                assert not first.finished
                break                                # the client disconnects ...
            await gen.aclose()                       # ... and the server closes its stream
            outs = await collect(async_engine, "retry me", params, request_id="same")   # ... retry at once
            assert outs, f"attempt {attempt}: the retry got nothing"
            assert all(o.request_id == "same" for o in outs)
            assert [o.finished for o in outs] == [False] * (len(outs) - 1) + [True], attempt
            final = outs[-1].outputs[0]
            assert final.finish_reason == "length", (attempt, final)
            assert final.token_ids == expected, attempt
            for before, after in zip(outs, outs[1:]):   # no stream of another request mixed in
                a, b = before.outputs[0].token_ids, after.outputs[0].token_ids
                assert len(b) > len(a) and b[:len(a)] == a, attempt

    run(scenario(), 60)
    assert async_engine.is_running
    assert wait_until(lambda: async_engine.stats().kv_blocks_used == 0), async_engine.stats()


# ---- 5. child ids of an n > 1 group ----------------------------------------------------------

def test_a_live_child_id_cannot_be_taken_and_abort_spares_other_requests(fresh_llm, llm):
    engine = fresh_llm.engine
    engine.add_request("group", SamplingParams(n=2, temperature=0, max_tokens=30, ignore_eos=True),
                       request_id="a")
    for taken in ("a", "a-0", "a-1"):
        with pytest.raises(ValueError, match="already in use"):
            engine.add_request("x", GREEDY, request_id=taken)
    engine.add_request("bystander", GREEDY, request_id="b")
    engine.step()
    final = engine.abort("a")
    assert final.finished and [c.finish_reason for c in final.outputs] == ["abort", "abort"]
    assert engine.abort("a") is None                 # already gone
    outs = drain(engine)
    assert set(outs) == {"b"}
    assert outs["b"].finished and outs["b"].outputs[0].finish_reason == "length"
    assert outs["b"].outputs[0].token_ids == greedy_tokens(llm, "bystander")
    assert_idle(engine)


def _group_where_child_0_stops_first(llm: LLM) -> tuple[SamplingParams, int]:
    """Seeded n=2 sampling params, plus a stop token that ends child 0 early and never child 1."""
    for seed in range(20):
        params = SamplingParams(n=2, temperature=1.0, seed=seed, max_tokens=30, ignore_eos=True)
        [out] = llm.generate("group", params)
        c0, c1 = (c.token_ids for c in out.outputs)
        for pos in range(1, 8):
            token = c0[pos]
            if token not in c0[:pos] and token not in c1:
                stopping = SamplingParams(n=2, temperature=1.0, seed=seed, max_tokens=30, ignore_eos=True,
                                          stop_token_ids=[token])
                return stopping, pos + 1
    pytest.fail("no seed gives children that stop at different times")


def test_abort_of_a_group_spares_a_request_that_reused_a_finished_child_id(fresh_llm, llm):
    params, child_0_len = _group_where_child_0_stops_first(llm)
    engine = fresh_llm.engine
    engine.add_request("group", params, request_id="a")
    while True:                                      # until child "a-0" has stopped, "a-1" still runs
        outs = {o.request_id: o for o in engine.step()}
        if "a" in outs and outs["a"].outputs[0].finish_reason is not None:
            break
    group = outs["a"]
    assert group.outputs[0].finish_reason == "stop" and len(group.outputs[0].token_ids) == child_0_len
    assert group.outputs[1].finish_reason is None and not group.finished
    engine.add_request("user", GREEDY, request_id="a-0")     # the finished child's id is free again
    engine.add_request("bystander", GREEDY, request_id="b")
    final = engine.abort("a")                        # used to abort the user's "a-0" as well
    assert [c.finish_reason for c in final.outputs] == ["stop", "abort"]
    outs = drain(engine)
    assert set(outs) == {"a-0", "b"}
    for request_id, prompt in (("a-0", "user"), ("b", "bystander")):
        completion = outs[request_id].outputs[0]
        assert outs[request_id].finished and completion.finish_reason == "length"
        assert completion.token_ids == greedy_tokens(llm, prompt)
    assert_idle(engine)


# ---- 6. the engine keeps its own copy of the sampling params --------------------------------

def test_mutating_params_after_add_request_does_not_reach_the_engine(fresh_llm, llm):
    params = SamplingParams(temperature=0.8, seed=11, max_tokens=6, ignore_eos=True)
    [expected] = llm.generate("mutate", SamplingParams(temperature=0.8, seed=11, max_tokens=6, ignore_eos=True))
    engine = fresh_llm.engine
    engine.add_request("mutate", params, request_id="m")
    params.top_k = None                              # used to crash step(): None > 0
    params.temperature = 0.0
    params.max_tokens = 1
    outs = drain(engine)
    done = outs["m"].outputs[0]
    assert outs["m"].finished and done.finish_reason == "length"
    assert done.token_ids == expected.outputs[0].token_ids       # same seeded draws, all 6 tokens
    assert_idle(engine)


@pytest.mark.parametrize("field, value", [("top_k", None), ("top_p", 5.0), ("temperature", float("nan")),
                                          ("max_tokens", 0)])
def test_params_made_invalid_before_add_request_are_rejected_by_name(fresh_llm, field, value):
    params = SamplingParams(temperature=0, max_tokens=4)
    setattr(params, field, value)
    with pytest.raises(ValueError, match=field):
        fresh_llm.engine.add_request("x", params)
    with pytest.raises(ValueError, match=field):
        fresh_llm.generate("x", params)
    assert_idle(fresh_llm.engine)


# ---- 7. limits on logprobs and n -------------------------------------------------------------

def test_logprobs_above_20_are_rejected():
    assert SamplingParams(logprobs=20).logprobs == 20
    with pytest.raises(ValueError, match="logprobs"):
        SamplingParams(logprobs=21)


def test_n_above_max_num_seqs_is_rejected(tiny_folder):
    small = make_llm(tiny_folder, max_num_seqs=4)
    [ok] = small.generate("n", SamplingParams(n=4, temperature=0, max_tokens=2, ignore_eos=True))
    assert len(ok.outputs) == 4
    with pytest.raises(ValueError, match=r"\bn\b.*max_num_seqs"):
        small.generate("n", SamplingParams(n=5, temperature=0, max_tokens=2))
    with pytest.raises(ValueError, match=r"\bn\b.*max_num_seqs"):
        small.engine.add_request("n", SamplingParams(n=5, temperature=0, max_tokens=2))
    assert_idle(small.engine)


# ---- 8. temperature: non-finite values, and the greedy limit --------------------------------

@pytest.mark.parametrize("value", [float("inf"), float("nan")])
def test_non_finite_temperature_is_rejected(value):
    with pytest.raises(ValueError, match="temperature"):
        SamplingParams(temperature=value)


def test_vanishing_temperature_is_greedy(llm):
    expected = greedy_tokens(llm, "cold", 12)
    for temperature in (1e-45, 1e-30):
        params = SamplingParams(temperature=temperature, max_tokens=12, ignore_eos=True)
        [out] = llm.generate("cold", params)
        assert out.outputs[0].token_ids == expected, temperature


# ---- 9. a stop token id's text is not part of the output -----------------------------------

def test_stop_token_text_is_not_part_of_the_output(llm):
    tokenizer = llm.get_tokenizer()
    for prompt in ("math", "greedy", "hello world", "stop here", "abc", "xyz", "cold", "zz top"):
        full = greedy_tokens(llm, prompt, 16)
        stop = full[3]
        if stop not in full[:3] and 32 < stop < 127:     # a printable ASCII byte, first seen at position 3
            break
    else:
        pytest.fail("no prompt's greedy run has a fresh printable token at position 3")
    params = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True, stop_token_ids=[stop])
    [out] = llm.generate(prompt, params)
    completion = out.outputs[0]
    assert completion.token_ids == full[:4] and completion.token_ids[-1] == stop
    assert completion.finish_reason == "stop" and completion.stop_reason == stop
    assert completion.text == tokenizer.decode(completion.token_ids[:-1])
    assert not completion.text.endswith(tokenizer.decode([stop]))


# ---- 10. a text prompt whose tokens lie beyond the model's vocabulary ------------------------

@pytest.fixture(scope="module")
def small_vocab_folder(tmp_path_factory) -> str:
    """The byte tokenizer (<s>=256, </s>=257) on a model with only 256 embeddings."""
    folder = tmp_path_factory.mktemp("small-vocab")
    make_model_folder(folder, "llama", vocab_size=256)
    return str(folder)


def test_text_prompt_beyond_the_model_vocabulary_is_rejected(small_vocab_folder):
    small = make_llm(small_vocab_folder)
    assert small.get_tokenizer().encode("<s>hi") == [256, ord("h"), ord("i")]
    with pytest.raises(ValueError, match=r"\[0, 256\).*256"):     # used to crash inside step()
        small.generate("<s>hi", GREEDY)
    assert_idle(small.engine)
    [ok] = small.generate("hi", GREEDY)                           # in-vocabulary text still works
    assert len(ok.outputs[0].token_ids) == 12


# ---- 11. prefix-cache lookups count once per request ----------------------------------------

def test_prefix_cache_queries_count_each_request_once_despite_preemption(tiny_folder):
    prompts = [[10 + i] + list(range(40, 40 + n - 1)) for i, n in enumerate((5, 17, 9, 30, 12, 24))]
    small = make_llm(tiny_folder, kv_cache_tokens=96)
    outs = small.generate(prompts, SamplingParams(temperature=0, max_tokens=20, ignore_eos=True))
    assert all(len(o.outputs[0].token_ids) == 20 for o in outs)
    stats = small.engine.stats()
    assert stats.num_preemptions > 0                 # re-admissions happened ...
    assert stats.prefix_cache_queries == sum(len(p) for p in prompts)   # ... and did not count again
    assert 0 <= stats.prefix_cache_hits <= stats.prefix_cache_queries


# ---- 12. log records reach the application's logging configuration --------------------------

def test_engine_logs_reach_the_applications_root_handler(tiny_folder):
    from llmops.log import get_logger

    root, package = logging.getLogger(), logging.getLogger("llmops")
    saved_root = root.handlers[:]
    saved_package = (package.handlers[:], package.propagate, package.level)
    buf = io.StringIO()
    app_handler = logging.StreamHandler(buf)         # what logging.basicConfig(stream=buf) installs
    app_handler.setFormatter(logging.Formatter("%(name)s %(message)s"))
    try:
        root.handlers[:] = []                        # llmops imported before the app configures logging
        get_logger("llmops.engine.llm_engine")
        root.handlers[:] = saved_root + [app_handler]
        make_llm(tiny_folder)
    finally:
        root.handlers[:] = saved_root
        package.handlers[:], package.propagate = saved_package[0], saved_package[1]
        package.setLevel(saved_package[2])
    lines = [line for line in buf.getvalue().splitlines() if "KV cache" in line]
    assert lines and lines[0].startswith("llmops."), buf.getvalue()


def test_engine_logs_are_captured_by_caplog(tiny_folder, caplog):
    with caplog.at_level(logging.INFO, logger="llmops"):
        make_llm(tiny_folder)
    assert any(r.name.startswith("llmops") and "KV cache" in r.getMessage() for r in caplog.records)


# ---- also kept: per-request generators live on the engine's device ---------------------------

def test_seed_generators_live_on_the_engine_device(fresh_llm):
    import torch

    engine = fresh_llm.engine
    engine.add_request("seeded", SamplingParams(seed=3, max_tokens=2), request_id="seeded")
    child = engine.scheduler.requests["seeded"]
    assert child.generator.device == torch.device(engine.device)
    engine.abort("seeded")
    assert_idle(engine)
