"""`AsyncEngine` on the tiny model: streaming, concurrency, abort (explicit, on break, on
cancellation), bad input, shutdown and a dying loop. Every wait has a timeout: nothing hangs."""

from __future__ import annotations

import asyncio
import time

import pytest

from llmops import LLM, AsyncEngine, EngineDeadError, SamplingParams

TIMEOUT = 20.0
GREEDY = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
LONG = SamplingParams(temperature=0, max_tokens=400, ignore_eos=True)
ENGINE_ARGS = dict(dtype="float32", kv_cache_tokens=512, block_size=4)


def run(coro, timeout: float = TIMEOUT):
    """Run a coroutine on a fresh event loop, failing (not hanging) after `timeout` seconds."""
    async def bounded():
        return await asyncio.wait_for(coro, timeout)
    return asyncio.run(bounded())


def make_engine(folder: str) -> AsyncEngine:
    return AsyncEngine.from_kwargs(model=folder, **ENGINE_ARGS)


@pytest.fixture(scope="module")
def engine(tiny_folder):
    eng = make_engine(tiny_folder)
    yield eng
    eng.shutdown()


@pytest.fixture
def fresh_engine(tiny_folder):
    """An engine of its own, for tests that kill or slow down the loop."""
    eng = make_engine(tiny_folder)
    yield eng
    eng.shutdown()


@pytest.fixture(scope="module")
def llm(tiny_folder) -> LLM:
    return LLM(model=tiny_folder, **ENGINE_ARGS)


async def consumer_started(eng: AsyncEngine, prompt: str) -> asyncio.Task:
    """A task reading a long stream, returned once its first output has arrived."""
    first = asyncio.Event()

    async def consume():
        async for _ in eng.generate(prompt, LONG):
            first.set()
    task = asyncio.create_task(consume())
    await first.wait()
    return task


def slow_down(monkeypatch, eng: AsyncEngine, seconds: float = 0.005) -> None:
    """Make each engine step take a little longer so a long request is surely still running."""
    step = eng.engine.step

    def slow_step():
        time.sleep(seconds)
        return step()
    monkeypatch.setattr(eng.engine, "step", slow_step)


async def collect(eng: AsyncEngine, prompt, params=GREEDY, request_id=None) -> list:
    return [out async for out in eng.generate(prompt, params, request_id)]


async def wait_idle(eng: AsyncEngine, timeout: float = 5.0) -> None:
    """Poll the engine (yielding to the event loop) until no sequence runs or holds blocks."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stats = eng.stats()
        if stats.num_running == 0 and stats.num_waiting == 0 and stats.kv_blocks_used == 0:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"engine still busy: {eng.stats()}")


def assert_well_formed_stream(outs: list) -> None:
    assert outs, "the stream yielded nothing"
    assert [o.finished for o in outs] == [False] * (len(outs) - 1) + [True]
    previous_tokens, previous_text = [], ""
    for out in outs:
        tokens, text = out.outputs[0].token_ids, out.outputs[0].text
        assert len(tokens) > len(previous_tokens) and tokens[:len(previous_tokens)] == previous_tokens
        assert text.startswith(previous_text)
        previous_tokens, previous_text = tokens, text


# ---- streaming ---------------------------------------------------------------------------------

def test_stream_is_cumulative_and_matches_llm_generate(engine, llm):
    outs = run(collect(engine, "hello world"))
    assert_well_formed_stream(outs)
    final = outs[-1]
    assert len(final.outputs[0].token_ids) == 12 and final.outputs[0].finish_reason == "length"
    [expected] = llm.generate("hello world", GREEDY)
    assert final.outputs[0].token_ids == expected.outputs[0].token_ids
    assert final.outputs[0].text == expected.outputs[0].text
    assert final.prompt_token_ids == expected.prompt_token_ids
    assert len({o.request_id for o in outs}) == 1


def test_stream_with_chat_tokens_and_stop_string(engine, llm):
    ids = engine.tokenizer.encode_chat([{"role": "user", "content": "hi"}])
    [full] = llm.generate([ids], SamplingParams(temperature=0, max_tokens=24, ignore_eos=True))
    text = full.outputs[0].text
    stop = next(c for c in text[1:] if c.isascii() and c.isprintable())
    params = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True, stop=stop)
    outs = run(collect(engine, ids, params))
    assert_well_formed_stream_text(outs)
    final = outs[-1].outputs[0]
    assert final.text == text[:text.index(stop)]
    assert final.finish_reason == "stop" and final.stop_reason == stop
    assert all(stop not in o.outputs[0].text for o in outs)


def assert_well_formed_stream_text(outs: list) -> None:
    """With a stop string, text shown mid-stream is never taken back."""
    assert outs[-1].finished and not any(o.finished for o in outs[:-1])
    for before, after in zip(outs, outs[1:]):
        assert after.outputs[0].text.startswith(before.outputs[0].text)


def test_n_completions_stream(engine, llm):
    params = SamplingParams(n=3, temperature=1.0, seed=5, max_tokens=8, ignore_eos=True)
    outs = run(collect(engine, "abc", params))
    final = outs[-1]
    assert final.finished and [c.index for c in final.outputs] == [0, 1, 2]
    [expected] = llm.generate("abc", params)
    assert [c.token_ids for c in final.outputs] == [c.token_ids for c in expected.outputs]


def test_many_concurrent_streams(engine, llm):
    prompts = [f"prompt number {i}" + "!" * i for i in range(12)]
    params = [SamplingParams(temperature=0, max_tokens=4 + i, ignore_eos=True) for i in range(12)]

    async def main():
        return await asyncio.gather(*(collect(engine, p, sp) for p, sp in zip(prompts, params)))
    streams = run(main())
    expected = llm.generate(prompts, params)
    for outs, exp in zip(streams, expected):
        assert_well_formed_stream(outs)
        assert outs[-1].outputs[0].token_ids == exp.outputs[0].token_ids
        assert outs[-1].prompt == exp.prompt
    assert len({outs[-1].request_id for outs in streams}) == 12
    run(wait_idle(engine))


# ---- abort -------------------------------------------------------------------------------------

def test_break_aborts_the_request(fresh_engine, monkeypatch):
    slow_down(monkeypatch, fresh_engine)
    before = fresh_engine.stats().num_generation_tokens

    async def main():
        seen = 0
        async for out in fresh_engine.generate("keep going", LONG):
            seen += 1
            if seen == 3:
                break
        await wait_idle(fresh_engine)
    run(main())
    assert fresh_engine.stats().num_generation_tokens - before < 100    # far fewer than 400
    assert fresh_engine.is_running
    outs = run(collect(fresh_engine, "after the break"))               # still serves
    assert outs[-1].finished


def test_cancelled_consumer_aborts_the_request(fresh_engine, monkeypatch):
    slow_down(monkeypatch, fresh_engine)
    before = fresh_engine.stats().num_generation_tokens

    async def main():
        task = await consumer_started(fresh_engine, "a client that hangs up")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await wait_idle(fresh_engine)
    run(main())
    assert fresh_engine.stats().num_generation_tokens - before < 100
    assert fresh_engine.is_running


def test_explicit_abort_ends_that_stream_while_others_complete(fresh_engine, llm, monkeypatch):
    slow_down(monkeypatch, fresh_engine)

    async def main():
        started = asyncio.Event()

        async def victim():
            outs = []
            async for out in fresh_engine.generate("victim", LONG, request_id="victim"):
                outs.append(out)
                started.set()
            return outs
        victim_task = asyncio.create_task(victim())
        others = [asyncio.create_task(collect(fresh_engine, f"other {i}")) for i in range(3)]
        await started.wait()
        fresh_engine.abort("victim")
        other_outs = await asyncio.gather(*others)
        victim_outs = await asyncio.wait_for(victim_task, 2)
        return victim_outs, other_outs
    victim_outs, other_outs = run(main())
    assert len(victim_outs[-1].outputs[0].token_ids) < 400
    assert victim_outs[-1].outputs[0].finish_reason in (None, "abort")
    for i, outs in enumerate(other_outs):
        [expected] = llm.generate(f"other {i}", GREEDY)
        assert outs[-1].outputs[0].token_ids == expected.outputs[0].token_ids
    run(wait_idle(fresh_engine))


def test_explicit_abort_frees_the_engine(fresh_engine, monkeypatch):
    """What abort(request_id) does reach: the engine stops the request and frees its blocks."""
    slow_down(monkeypatch, fresh_engine)

    async def main():
        agen = fresh_engine.generate("victim", LONG, request_id="victim")
        await agen.__anext__()
        fresh_engine.abort("victim")
        fresh_engine.abort("no-such-request")          # unknown ids are ignored
        await wait_idle(fresh_engine)
        await agen.aclose()
    run(main())
    assert fresh_engine.is_running
    assert run(collect(fresh_engine, "next"))[-1].finished


# ---- bad input ---------------------------------------------------------------------------------

@pytest.mark.parametrize("prompt, match", [
    ("", "empty"), ([], "empty"), ([10 ** 6], "1000000"), ([-1], "-1"), (3.5, "float"), ("x" * 600, "600"),
])
def test_bad_prompt_raises_before_anything_is_queued(engine, prompt, match):
    before = engine.stats()

    async def main():
        with pytest.raises(ValueError, match=match):
            await collect(engine, prompt)
    run(main())
    assert engine.stats() == before
    assert not engine.engine.has_unfinished_requests()
    assert run(collect(engine, "fine"))[-1].finished


def test_bad_params_type_raises_value_error(engine):
    async def main():
        with pytest.raises(ValueError, match="SamplingParams"):
            await collect(engine, "hi", {"temperature": 0})
    run(main())
    assert engine.is_running
    assert run(collect(engine, "fine"))[-1].finished


def test_duplicate_in_flight_request_id(fresh_engine, monkeypatch):
    slow_down(monkeypatch, fresh_engine)

    async def main():
        first = fresh_engine.generate("one", LONG, request_id="same")
        await first.__anext__()
        with pytest.raises(ValueError, match="same"):
            await collect(fresh_engine, "two", GREEDY, request_id="same")
        await first.aclose()                             # aborts the first
        await wait_idle(fresh_engine)
        return await collect(fresh_engine, "three", GREEDY, request_id="same")   # free again
    outs = run(main())
    assert outs[-1].finished and outs[-1].request_id == "same"


# ---- shutdown and a dying loop -----------------------------------------------------------------

def test_shutdown(tiny_folder):
    eng = make_engine(tiny_folder)
    assert eng.is_running
    assert run(collect(eng, "before"))[-1].finished
    eng.shutdown()
    assert not eng.is_running

    async def main():
        with pytest.raises(EngineDeadError):
            await collect(eng, "after")
    run(main())
    eng.shutdown()                                        # a second shutdown is harmless


def test_shutdown_fails_pending_streams(fresh_engine, monkeypatch):
    slow_down(monkeypatch, fresh_engine)

    async def main():
        task = await consumer_started(fresh_engine, "pending")
        await asyncio.to_thread(fresh_engine.shutdown)
        with pytest.raises(EngineDeadError):
            await asyncio.wait_for(task, 5)
    run(main())
    assert not fresh_engine.is_running


def test_dead_loop_fails_pending_streams(fresh_engine, monkeypatch):
    def broken_step():
        raise RuntimeError("kaboom")
    monkeypatch.setattr(fresh_engine.engine, "step", broken_step)

    async def main():
        results = await asyncio.gather(*(collect(fresh_engine, f"doomed {i}") for i in range(3)),
                                       return_exceptions=True)
        assert all(isinstance(r, EngineDeadError) for r in results), results
        assert "kaboom" in str(results[0])
        with pytest.raises(EngineDeadError):
            await collect(fresh_engine, "later")
    run(main())
    assert not fresh_engine.is_running
    assert isinstance(fresh_engine.error, RuntimeError)


def test_stream_started_while_the_loop_dies_does_not_hang(fresh_engine, monkeypatch):
    inner = fresh_engine.engine
    validate = inner.encode_prompt

    def broken():
        raise RuntimeError("kaboom")

    def validate_while_the_loop_dies(prompt):
        monkeypatch.setattr(inner, "has_unfinished_requests", broken)
        deadline = time.monotonic() + 5
        while fresh_engine.error is None and time.monotonic() < deadline:
            time.sleep(0.01)
        return validate(prompt)
    monkeypatch.setattr(inner, "encode_prompt", validate_while_the_loop_dies)

    async def main():
        with pytest.raises(EngineDeadError):
            await asyncio.wait_for(collect(fresh_engine, "unlucky"), 2)
    run(main())
