"""A request's output does not depend on what else runs: alone, batched, chunked, preempted
and recomputed, or served from the prefix cache (float32, tiny model)."""

from __future__ import annotations

import pytest

from llmops import LLM, SamplingParams

GREEDY = SamplingParams(temperature=0, max_tokens=20, ignore_eos=True)
PROMPTS = [list(range(10, 10 + n)) for n in (5, 17, 9, 30, 3, 12)]


def make_llm(folder: str, **kwargs) -> LLM:
    args = dict(model=folder, dtype="float32", kv_cache_tokens=1024, block_size=4)
    args.update(kwargs)
    return LLM(**args)


@pytest.fixture(scope="module")
def alone(tiny_folder):
    llm = make_llm(tiny_folder)
    return [llm.generate([p], GREEDY)[0].outputs[0].token_ids for p in PROMPTS]


def test_batched_equals_alone(tiny_folder, alone):
    outs = make_llm(tiny_folder).generate(PROMPTS, GREEDY)
    assert [o.outputs[0].token_ids for o in outs] == alone


def test_small_token_budget_chunks_prefill_without_changing_output(tiny_folder, alone):
    llm = make_llm(tiny_folder, max_num_batched_tokens=7, max_num_seqs=3)
    outs = llm.generate(PROMPTS, GREEDY)
    assert [o.outputs[0].token_ids for o in outs] == alone


@pytest.mark.parametrize("prefix_caching", [True, False])
def test_preempted_and_recomputed_equals_alone(tiny_folder, alone, prefix_caching):
    # 24 blocks of 4 tokens cannot hold all six sequences (up to 50 tokens each): preemption.
    llm = make_llm(tiny_folder, kv_cache_tokens=96, enable_prefix_caching=prefix_caching)
    outs = llm.generate(PROMPTS, GREEDY)
    assert llm.engine.stats().num_preemptions > 0
    assert [o.outputs[0].token_ids for o in outs] == alone
    assert llm.engine.stats().kv_blocks_used == 0


def test_prefix_cache_hit_equals_alone(tiny_folder, alone):
    llm = make_llm(tiny_folder)
    first = llm.generate([PROMPTS[3]], GREEDY)[0]
    second = llm.generate([PROMPTS[3]], GREEDY)[0]
    assert first.num_cached_tokens == 0
    assert second.num_cached_tokens == 28        # 7 full blocks of 4; the last token is recomputed
    assert second.outputs[0].token_ids == first.outputs[0].token_ids == alone[3]
    stats = llm.engine.stats()
    assert stats.prefix_cache_hits == 28 and stats.prefix_cache_queries == 60


def test_shared_prefix_across_requests(tiny_folder):
    llm = make_llm(tiny_folder)
    base = list(range(50, 74))
    a = llm.generate([base + [1, 2, 3]], GREEDY)[0]
    b = llm.generate([base + [4, 5]], GREEDY)[0]
    assert b.num_cached_tokens == 24
    fresh = make_llm(tiny_folder, enable_prefix_caching=False).generate([base + [4, 5]], GREEDY)[0]
    assert b.outputs[0].token_ids == fresh.outputs[0].token_ids
    assert a.outputs[0].token_ids != b.outputs[0].token_ids or a.prompt_token_ids != b.prompt_token_ids


def test_seeded_sampling_is_independent_of_batch(tiny_folder):
    llm = make_llm(tiny_folder)
    params = SamplingParams(temperature=1.0, top_p=0.9, seed=1234, max_tokens=16, ignore_eos=True)
    alone = llm.generate([PROMPTS[1]], params)[0].outputs[0].token_ids
    others = SamplingParams(temperature=0.8, max_tokens=10, ignore_eos=True)
    batch = llm.generate([PROMPTS[0], PROMPTS[1], PROMPTS[2]], [others, params, others])
    assert batch[1].outputs[0].token_ids == alone
    again = llm.generate([PROMPTS[1]], params)[0].outputs[0].token_ids
    assert again == alone
    other_seed = SamplingParams(temperature=1.0, top_p=0.9, seed=99, max_tokens=16, ignore_eos=True)
    assert llm.generate([PROMPTS[1]], other_seed)[0].outputs[0].token_ids != alone


def test_decodes_of_very_different_lengths_are_attended_in_separate_groups(tiny_folder, alone):
    """Length-sorted decodes split where a request has over twice its group's first block count."""
    from llmops.engine.outputs import ScheduledChunk
    from llmops.engine.request import Request

    llm = make_llm(tiny_folder)
    runner = llm.engine.runner
    chunks = []
    for i, blocks in enumerate([1, 2, 3, 7, 8, 20]):
        r = Request(str(i), [1] * (4 * blocks), SamplingParams(), (), 10_000)
        r.block_ids = list(range(1, blocks + 1))
        r.num_computed_tokens = 4 * blocks - 1
        chunks.append(ScheduledChunk(r, 1))
    groups = runner._decode_groups(chunks)
    assert [(g.start, g.count, g.block_tables.shape[1]) for g in groups] == [(0, 2, 2), (2, 1, 3), (3, 2, 8), (5, 1, 20)]
    assert groups[2].mask.shape == (2, 1, 1, 32)
