"""Scheduler: token budget, decodes first, chunked prefill, FCFS admission, preemption, finishing.

The model runner is faked: every chunk that reaches the end of its known tokens gets a sampled
token chosen by the test.
"""

from __future__ import annotations

from typing import Callable

import pytest

from llmops.config import SchedulerConfig
from llmops.engine.kv_cache import KVCacheManager
from llmops.engine.outputs import ModelRunnerOutput, SampledToken, SchedulerOutput
from llmops.engine.request import Request, RequestStatus
from llmops.engine.sampling_params import SamplingParams
from llmops.engine.scheduler import Scheduler

BS = 4
EOS = 99
TOKEN = 7                 # what the fake runner samples unless told otherwise


def make_scheduler(num_blocks: int = 12, budget: int = 64, max_num_seqs: int = 8,
                   prefix_caching: bool = True) -> Scheduler:
    kv = KVCacheManager(num_blocks, BS, prefix_caching)
    return Scheduler(SchedulerConfig(max_num_seqs=max_num_seqs, max_num_batched_tokens=budget), kv)


def make_request(rid: str, num_prompt: int, base: int = 0, max_model_len: int = 64, **params) -> Request:
    """Prompt of distinct tokens base, base+1, ... (pick bases so prompts share no prefix unless wanted)."""
    params.setdefault("max_tokens", 8)
    return Request(rid, [base + i for i in range(num_prompt)], SamplingParams(**params),
                   eos_token_ids=(EOS,), max_model_len=max_model_len, seed=0)


def step(sched: Scheduler, token: int | Callable[[Request], int] = TOKEN) -> SchedulerOutput:
    """One engine step with a fake runner; returns the scheduler output."""
    out = sched.schedule()
    pick = token if callable(token) else (lambda _r: token)
    sampled = {c.request.request_id: SampledToken(pick(c.request)) for c in out.chunks if c.samples}
    sched.update(out, ModelRunnerOutput(sampled=sampled))
    return out


def shape(out: SchedulerOutput) -> tuple[list[tuple[str, int]], list[tuple[str, int]], list[str]]:
    """(decodes, prefills, preempted) as (request id, tokens) pairs: easy to compare exactly."""
    return ([(c.request.request_id, c.num_tokens) for c in out.decodes],
            [(c.request.request_id, c.num_tokens) for c in out.prefills],
            [r.request_id for r in out.preempted])


def ids(requests) -> list[str]:
    return [r.request_id for r in requests]


# ---- budget, chunking, ordering --------------------------------------------------------------

def test_token_budget_is_spent_exactly_with_chunked_prefill():
    sched = make_scheduler(budget=6)
    a, b = make_request("a", 10, base=0), make_request("b", 3, base=100)
    sched.add_request(a)
    sched.add_request(b)

    out = step(sched)
    assert shape(out) == ([], [("a", 6)], [])
    assert out.num_scheduled_tokens == 6
    assert a.num_computed_tokens == 6 and a.output_token_ids == []
    assert a.block_ids == [1, 2]
    assert ids(sched.waiting) == ["b"] and ids(sched.running) == ["a"]

    out = step(sched)
    assert shape(out) == ([], [("a", 4), ("b", 2)], [])
    assert out.num_scheduled_tokens == 6
    assert a.output_token_ids == [TOKEN] and b.output_token_ids == []
    assert a.block_ids == [1, 2, 3] and b.block_ids == [4]
    assert b.num_computed_tokens == 2

    out = step(sched)
    assert shape(out) == ([("a", 1), ("b", 1)], [], [])     # b's last prompt token samples
    assert b.output_token_ids == [TOKEN]

    out = step(sched)
    assert shape(out) == ([("a", 1), ("b", 1)], [], [])
    assert a.num_output_tokens == 3 and b.num_output_tokens == 2


def test_budget_is_never_exceeded_over_a_whole_run():
    sched = make_scheduler(num_blocks=40, budget=5)
    for i, n in enumerate([9, 2, 7, 1, 12]):
        sched.add_request(make_request(f"r{i}", n, base=20 * i, max_tokens=3))
    steps = 0
    while sched.num_unfinished:
        out = step(sched)
        assert 0 < out.num_scheduled_tokens <= 5
        steps += 1
        assert steps < 100
    assert sched.kv_cache.pool.num_free_blocks == 39


def test_decodes_come_first_then_prefill_chunks_take_the_rest():
    sched = make_scheduler(budget=6)
    a = make_request("a", 3)
    sched.add_request(a)
    assert shape(step(sched)) == ([], [("a", 3)], [])
    b = make_request("b", 10, base=100)
    sched.add_request(b)
    assert shape(step(sched)) == ([("a", 1)], [("b", 5)], [])
    out = step(sched)
    assert shape(out) == ([("a", 1)], [("b", 5)], [])
    assert out.prefills[0].request is b
    assert b.output_token_ids == [TOKEN]      # the second chunk reached the end and sampled


def test_decodes_use_up_the_budget_before_new_requests_are_admitted():
    sched = make_scheduler(budget=2)
    a, b = make_request("a", 1), make_request("b", 1, base=10)
    sched.add_request(a)
    sched.add_request(b)
    assert shape(step(sched)) == ([("a", 1), ("b", 1)], [], [])
    sched.add_request(make_request("c", 3, base=20))
    assert shape(step(sched)) == ([("a", 1), ("b", 1)], [], [])
    assert ids(sched.waiting) == ["c"]


def test_max_num_seqs_caps_running_requests():
    sched = make_scheduler(max_num_seqs=2)
    for i, rid in enumerate("abc"):
        sched.add_request(make_request(rid, 3, base=10 * i, max_tokens=2))
    assert shape(step(sched)) == ([], [("a", 3), ("b", 3)], [])
    assert ids(sched.waiting) == ["c"]
    assert shape(step(sched)) == ([("a", 1), ("b", 1)], [], [])   # a and b finish (max_tokens=2)
    assert ids(sched.running) == [] and ids(sched.waiting) == ["c"]
    assert shape(step(sched)) == ([], [("c", 3)], [])


def test_fcfs_head_of_queue_blocks_smaller_requests_behind_it():
    sched = make_scheduler(num_blocks=5)      # 4 usable blocks
    a = make_request("a", 9, base=0, max_tokens=2)          # 3 blocks
    b = make_request("b", 8, base=100)                      # 2 blocks: does not fit beside a
    c = make_request("c", 3, base=200)                      # 1 block: would fit, but b is first
    for r in (a, b, c):
        sched.add_request(r)
    assert shape(step(sched)) == ([], [("a", 9)], [])
    assert ids(sched.waiting) == ["b", "c"]
    assert shape(step(sched)) == ([("a", 1)], [], [])       # a finishes; c still waits behind b
    assert a.status == RequestStatus.FINISHED_LENGTH
    assert c.status == RequestStatus.WAITING and c.block_ids == []
    assert shape(step(sched)) == ([], [("b", 8), ("c", 3)], [])


def test_duplicate_request_id_is_rejected():
    sched = make_scheduler()
    sched.add_request(make_request("a", 3))
    with pytest.raises(ValueError, match="'a' is already in use"):
        sched.add_request(make_request("a", 4))


def test_nothing_to_do_gives_an_empty_output():
    out = make_scheduler().schedule()
    assert out.is_empty and out.num_scheduled_tokens == 0 and out.preempted == []


# ---- preemption ------------------------------------------------------------------------------

def test_newest_running_request_is_preempted_to_the_front_of_the_queue_and_resumes():
    sched = make_scheduler(num_blocks=5, prefix_caching=False)   # 4 usable blocks
    a = make_request("a", 8, base=0, max_tokens=4)
    b = make_request("b", 8, base=100, max_tokens=4)
    c = make_request("c", 3, base=200, max_tokens=2)
    for r in (a, b, c):
        sched.add_request(r)
    tokens = iter(range(10, 100))

    def sample(_request: Request) -> int:
        return next(tokens)

    # 1: a and b take all four blocks; c waits.
    assert shape(step(sched, sample)) == ([], [("a", 8), ("b", 8)], [])
    assert (a.block_ids, b.block_ids) == ([1, 2], [3, 4])
    assert ids(sched.waiting) == ["c"]
    b_first = list(b.output_token_ids)

    # 2: a's decode needs a third block: b (newest) is preempted and goes back in front of c.
    out = step(sched, sample)
    assert shape(out) == ([("a", 1)], [], ["b"])
    assert b.status == RequestStatus.PREEMPTED
    assert b.num_computed_tokens == 0 and b.block_ids == []
    assert b.num_preemptions == 1 and sched.num_preemptions == 1
    assert b.output_token_ids == b_first                     # generated tokens are kept
    assert ids(sched.waiting) == ["b", "c"] and ids(sched.running) == ["a"]
    assert a.block_ids == [1, 2, 3]                          # b freed 4 then 3: the most recent is reused first
    assert sched.kv_cache.pool.num_free_blocks == 1

    # 3: b (3 blocks) does not fit yet; c would, but may not overtake b.
    assert shape(step(sched, sample)) == ([("a", 1)], [], [])
    assert ids(sched.waiting) == ["b", "c"]

    # 4: a's 4th token: a finishes and frees its blocks.
    assert shape(step(sched, sample)) == ([("a", 1)], [], [])
    assert a.status == RequestStatus.FINISHED_LENGTH and a.num_output_tokens == 4

    # 5: b recomputes prompt + its one output token; c fits beside it.
    assert shape(step(sched, sample)) == ([], [("b", 9), ("c", 3)], [])
    assert b.status == RequestStatus.RUNNING

    assert shape(step(sched, sample)) == ([("b", 1), ("c", 1)], [], [])   # c finishes
    assert shape(step(sched, sample)) == ([("b", 1)], [], [])              # b finishes
    assert b.status == RequestStatus.FINISHED_LENGTH
    assert b.num_output_tokens == 4 and b.output_token_ids[0] == b_first[0]
    assert c.num_output_tokens == 2 and c.num_preemptions == 0
    assert sched.num_unfinished == 0 and sched.num_preemptions == 1
    assert sched.kv_cache.pool.num_free_blocks == 4


def test_newest_request_preempts_itself_when_it_is_the_one_that_needs_a_block():
    sched = make_scheduler(num_blocks=4, prefix_caching=False)   # 3 usable blocks
    a = make_request("a", 3, base=0)          # 1 block, room for one more token
    b = make_request("b", 8, base=100)        # 2 blocks, full
    sched.add_request(a)
    sched.add_request(b)
    assert shape(step(sched)) == ([], [("a", 3), ("b", 8)], [])
    out = step(sched)
    assert shape(out) == ([("a", 1)], [], ["b"])
    assert a.block_ids == [1] and a.num_output_tokens == 2
    assert b.status == RequestStatus.PREEMPTED and ids(sched.waiting) == ["b"]
    assert sched.kv_cache.pool.num_free_blocks == 2


def test_preempted_request_hits_its_own_cached_blocks_when_readmitted():
    sched = make_scheduler(num_blocks=5)      # 4 usable blocks, prefix caching on
    kv = sched.kv_cache
    a = make_request("a", 8, base=0, max_tokens=4)
    b = make_request("b", 8, base=100, max_tokens=4)
    sched.add_request(a)
    sched.add_request(b)
    step(sched)                                # a [1, 2], b [3, 4], all four blocks hashed
    assert len(kv.pool.cached) == 4
    assert shape(step(sched)) == ([("a", 1)], [], ["b"])
    # b freed [4, 3]; a took block 4 and evicted b's second block from the cache.
    assert a.block_ids == [1, 2, 4]
    assert kv.pool.lookup(b.block_hashes[0]) == 3 and kv.pool.lookup(b.block_hashes[1]) is None
    step(sched)
    step(sched)                                # a finishes
    assert a.is_finished
    out = sched.schedule()
    assert shape(out) == ([], [("b", 5)], [])  # 9 tokens, the first block (4 tokens) is a hit
    assert b.num_computed_tokens == 4
    assert b.block_ids[0] == 3
    assert b.num_cached_tokens == 0            # counted on first admission only
    # Lookups count on first admission only (a 8, b 8); b's re-admission is a recompute.
    assert (kv.prefix_stats.queries, kv.prefix_stats.hits) == (8 + 8, 0)


def test_prefix_hits_on_admission_are_counted_and_shared():
    sched = make_scheduler()
    kv = sched.kv_cache
    a = make_request("a", 10, base=0, max_tokens=1)
    sched.add_request(a)
    step(sched)                                # a computes 10 tokens and finishes
    assert a.is_finished
    b = make_request("b", 10, base=0, max_tokens=1)
    sched.add_request(b)
    out = sched.schedule()
    assert shape(out) == ([], [("b", 2)], [])  # 2 cached blocks, 2 tokens to compute
    assert b.num_cached_tokens == 8 and b.num_computed_tokens == 8
    assert b.block_ids[:2] == [1, 2]
    assert (kv.prefix_stats.queries, kv.prefix_stats.hits) == (20, 8)


# ---- finishing -------------------------------------------------------------------------------

def run_to_end(sched: Scheduler, tokens: list[int]) -> None:
    it = iter(tokens)
    for _ in range(len(tokens) + 5):
        if not sched.num_unfinished:
            return
        step(sched, lambda _r: next(it))
    raise AssertionError("request did not finish")


def test_finish_on_eos():
    sched = make_scheduler()
    r = make_request("a", 3)
    sched.add_request(r)
    run_to_end(sched, [5, 6, EOS, 8])
    assert r.output_token_ids == [5, 6, EOS]
    assert r.status == RequestStatus.FINISHED_STOPPED
    assert r.status.finish_reason == "stop" and r.stop_reason is None
    assert r.block_ids == [] and sched.kv_cache.pool.num_used_blocks == 0
    assert "a" not in sched.requests and sched.num_unfinished == 0


def test_finish_on_stop_token_id():
    sched = make_scheduler()
    r = make_request("a", 3, stop_token_ids=[42])
    sched.add_request(r)
    run_to_end(sched, [5, 42, 6])
    assert r.output_token_ids == [5, 42]
    assert r.status == RequestStatus.FINISHED_STOPPED and r.stop_reason == 42


def test_finish_on_max_tokens():
    sched = make_scheduler()
    r = make_request("a", 3, max_tokens=3)
    sched.add_request(r)
    run_to_end(sched, [5, 6, 7, 8])
    assert r.output_token_ids == [5, 6, 7]
    assert r.status == RequestStatus.FINISHED_LENGTH and r.status.finish_reason == "length"


def test_finish_at_the_context_length():
    sched = make_scheduler()
    r = make_request("a", 5, max_model_len=8, max_tokens=None)
    sched.add_request(r)
    run_to_end(sched, [1, 2, 3, 4])
    assert r.output_token_ids == [1, 2, 3] and r.status == RequestStatus.FINISHED_LENGTH
    capped = make_request("b", 5, max_model_len=8, max_tokens=10)
    assert capped.max_tokens == 3


def test_ignore_eos_keeps_generating():
    sched = make_scheduler()
    r = make_request("a", 3, max_tokens=3, ignore_eos=True)
    sched.add_request(r)
    run_to_end(sched, [EOS, EOS, EOS, EOS])
    assert r.output_token_ids == [EOS, EOS, EOS]
    assert r.status == RequestStatus.FINISHED_LENGTH


def test_min_tokens_defers_eos_and_stop_tokens():
    sched = make_scheduler()
    r = make_request("a", 3, min_tokens=3, stop_token_ids=[42])
    sched.add_request(r)
    run_to_end(sched, [EOS, 42, EOS, 8])
    assert r.output_token_ids == [EOS, 42, EOS]
    assert r.status == RequestStatus.FINISHED_STOPPED and r.stop_reason is None


def test_update_returns_the_requests_that_got_a_token():
    sched = make_scheduler(budget=6)
    a, b = make_request("a", 3, base=0, max_tokens=1), make_request("b", 10, base=100)
    sched.add_request(a)
    sched.add_request(b)
    out = sched.schedule()
    assert shape(out) == ([], [("a", 3), ("b", 3)], [])
    updated = sched.update(out, ModelRunnerOutput(sampled={"a": SampledToken(5)}))
    assert updated == [a]
    assert a.is_finished and b.num_computed_tokens == 3


def test_logprobs_from_the_runner_are_kept_per_token():
    sched = make_scheduler()
    r = make_request("a", 3)
    sched.add_request(r)
    out = sched.schedule()
    sched.update(out, ModelRunnerOutput(sampled={"a": SampledToken(5, {5: -0.5, 6: -1.0}, {5: 1, 6: 2})}))
    assert r.logprobs == [{5: -0.5, 6: -1.0}] and r.logprob_ranks == [{5: 1, 6: 2}]


def test_finish_requests_aborts_running_and_waiting_and_frees_blocks():
    sched = make_scheduler(num_blocks=5)       # 4 usable
    a = make_request("a", 8, base=0)
    b = make_request("b", 12, base=100)        # does not fit beside a
    sched.add_request(a)
    sched.add_request(b)
    step(sched)
    assert ids(sched.running) == ["a"] and ids(sched.waiting) == ["b"]
    assert sched.kv_cache.pool.num_used_blocks == 2
    done = sched.finish_requests(["a", "nope", "b"], RequestStatus.FINISHED_ABORTED)
    assert done == [a, b]
    assert a.status == RequestStatus.FINISHED_ABORTED and a.status.finish_reason == "abort"
    assert b.status == RequestStatus.FINISHED_ABORTED
    assert a.block_ids == [] and sched.kv_cache.pool.num_used_blocks == 0
    assert sched.running == [] and list(sched.waiting) == [] and sched.requests == {}
    assert sched.finish_requests(["a"], RequestStatus.FINISHED_ABORTED) == []
    assert sched.schedule().is_empty


def test_aborting_one_request_lets_the_next_one_in():
    sched = make_scheduler(num_blocks=5)
    a = make_request("a", 12, base=0)
    b = make_request("b", 8, base=100)
    sched.add_request(a)
    sched.add_request(b)
    assert shape(step(sched)) == ([], [("a", 12)], [])
    sched.finish_requests(["a"], RequestStatus.FINISHED_ABORTED)
    assert shape(step(sched)) == ([], [("b", 8)], [])
    assert b.block_ids == [4, 3]               # a freed [3, 2, 1] after the never-used block 4


# ---- sharing a prefix that is being computed in the same step ---------------------------------

def test_request_waits_one_step_to_share_a_block_being_computed():
    sched = make_scheduler()
    a = make_request("a", 10, base=0)                        # blocks [0..3], [4..7], then 8, 9
    b = Request("b", list(range(8)) + [50, 51, 52], SamplingParams(max_tokens=8), (EOS,), 64, seed=0)
    c = make_request("c", 5, base=200)                       # behind b: first come, first served
    for r in (a, b, c):
        sched.add_request(r)
    out = step(sched)
    assert shape(out) == ([], [("a", 10)], [])               # b's first block is being filled by a
    assert ids(sched.waiting) == ["b", "c"]
    out = step(sched)
    assert shape(out) == ([("a", 1)], [("b", 3), ("c", 5)], [])
    assert b.num_cached_tokens == 8 and b.block_ids[:2] == a.block_ids[:2]
    assert sched.kv_cache.prefix_stats.hits == 8


def test_only_full_shareable_blocks_make_a_request_wait():
    sched = make_scheduler()
    a = make_request("a", 6, base=0)                         # fills block [0..3] only
    b = make_request("b", 4, base=0)                         # same 4 tokens: its block 0 holds its last token
    sched.add_request(a)
    sched.add_request(b)
    out = step(sched)                                        # b cannot share a block it must recompute
    assert shape(out) == ([], [("a", 6), ("b", 4)], [])


def test_no_waiting_without_prefix_caching():
    sched = make_scheduler(prefix_caching=False)
    sched.add_request(make_request("a", 10, base=0))
    sched.add_request(make_request("b", 10, base=0))
    assert shape(step(sched)) == ([], [("a", 10), ("b", 10)], [])
