"""KVCacheManager: block tables, prefix-cache hits by chained hashes, stats, free order, usage."""

from __future__ import annotations

import pytest

from llmops.engine.kv_cache import KVCacheManager, hash_block
from llmops.engine.request import Request
from llmops.engine.sampling_params import SamplingParams

BS = 4
NUM_BLOCKS = 12          # 11 usable
EOS = 299


def make_request(rid: str, token_ids: list[int]) -> Request:
    return Request(rid, token_ids, SamplingParams(max_tokens=4), eos_token_ids=(EOS,), max_model_len=64, seed=0)


def manager(enable_prefix_caching: bool = True, num_blocks: int = NUM_BLOCKS) -> KVCacheManager:
    return KVCacheManager(num_blocks, BS, enable_prefix_caching)


def compute_all(kv: KVCacheManager, request: Request, computed: list[int] | None = None) -> None:
    """Admit a request whole (after `computed` hits), mark it computed, index its full blocks."""
    hits = computed or []
    kv.allocate(request, request.num_tokens - len(hits) * BS, hits)
    request.num_computed_tokens = request.num_tokens
    kv.cache_blocks(request)


def refs(kv: KVCacheManager, ids: list[int]) -> list[int]:
    return [kv.pool.blocks[i].ref_cnt for i in ids]


@pytest.mark.parametrize("num_tokens, blocks", [(0, 0), (1, 1), (3, 1), (4, 1), (5, 2), (8, 2), (9, 3), (44, 11)])
def test_blocks_needed(num_tokens, blocks):
    assert manager().blocks_needed(num_tokens) == blocks


@pytest.mark.parametrize("num_tokens, block_ids", [(1, [1]), (4, [1]), (5, [1, 2]), (8, [1, 2]), (9, [1, 2, 3]),
                                                   (13, [1, 2, 3, 4])])
def test_allocate_gives_a_fresh_request_exactly_the_blocks_its_tokens_need(num_tokens, block_ids):
    kv = manager()
    req = make_request("a", list(range(num_tokens)))
    assert kv.can_allocate(req, num_tokens)
    kv.allocate(req, num_tokens)
    assert req.block_ids == block_ids
    assert refs(kv, block_ids) == [1] * len(block_ids)
    assert kv.pool.num_free_blocks == 11 - len(block_ids)


def test_allocate_grows_the_table_only_when_a_block_fills():
    kv = manager()
    req = make_request("a", list(range(10)))
    kv.allocate(req, 3)                   # chunk of 3 tokens
    assert req.block_ids == [1]
    req.num_computed_tokens = 3
    kv.allocate(req, 1)                   # token 4 still fits block 1
    assert req.block_ids == [1]
    req.num_computed_tokens = 4
    kv.allocate(req, 1)                   # token 5 needs a second block
    assert req.block_ids == [1, 2]
    req.num_computed_tokens = 5
    kv.allocate(req, 5)                   # tokens 6..10: 3 blocks in all
    assert req.block_ids == [1, 2, 3]


def test_can_allocate_against_free_blocks():
    kv = manager()
    assert kv.can_allocate(make_request("a", list(range(44))), 44)      # 11 blocks
    assert not kv.can_allocate(make_request("b", list(range(45))), 45)  # 12 blocks
    other = make_request("c", list(range(8)))
    kv.allocate(other, 8)
    assert kv.can_allocate(make_request("d", list(range(36))), 36)      # 9 blocks
    assert not kv.can_allocate(make_request("e", list(range(37))), 37)  # 10 blocks


def test_common_prefix_shares_blocks_between_two_requests():
    kv = manager()
    a = make_request("a", list(range(12)))
    compute_all(kv, a)
    assert a.block_ids == [1, 2, 3]
    b = make_request("b", list(range(8)) + [100, 101, 102])
    hits = kv.get_computed_blocks(b)
    assert hits == [1, 2]
    assert kv.can_allocate(b, 3, hits)
    kv.allocate(b, 3, hits)
    assert b.block_ids == [1, 2, 4]
    assert refs(kv, [1, 2, 3, 4]) == [2, 2, 1, 1]
    assert kv.pool.num_used_blocks == 4


def test_fully_cached_prompt_still_leaves_a_token_to_compute():
    kv = manager()
    compute_all(kv, make_request("a", list(range(12))))
    # 8 tokens = 2 full cached blocks, but the last token must be computed for its logits.
    assert kv.get_computed_blocks(make_request("b", list(range(8)))) == [1]
    assert kv.get_computed_blocks(make_request("c", list(range(9)))) == [1, 2]
    assert kv.get_computed_blocks(make_request("d", list(range(12)))) == [1, 2]
    assert kv.get_computed_blocks(make_request("e", list(range(13)))) == [1, 2, 3]
    assert kv.get_computed_blocks(make_request("f", list(range(4)))) == []


def test_different_prefix_gets_no_hit():
    kv = manager()
    compute_all(kv, make_request("a", list(range(12))))
    assert kv.get_computed_blocks(make_request("b", [50] + list(range(1, 12)))) == []
    assert kv.get_computed_blocks(make_request("c", [0, 1, 2, 3, 4, 5, 6, 70, 8, 9])) == [1]


def test_hashes_are_chained_same_block_after_different_prefix_differs():
    block = [5, 6, 7, 8]
    root_a, root_b = hash_block(None, [1, 2, 3, 4]), hash_block(None, [9, 9, 9, 9])
    assert hash_block(None, [1, 2, 3, 4]) == root_a                    # deterministic
    assert hash_block(root_a, block) != hash_block(root_b, block)
    assert hash_block(root_a, block) == hash_block(root_a, list(block))
    assert hash_block(None, block) != hash_block(None, [5, 6, 7, 9])
    assert hash_block(root_a, [1, 2, 3, 4]) != root_a                  # a repeated block is a new link

    kv = manager()
    compute_all(kv, make_request("a", [1, 2, 3, 4, 5, 6, 7, 8, 0]))
    # Second block equal to a's, after a different first block: nothing is shared.
    assert kv.get_computed_blocks(make_request("b", [9, 9, 9, 9, 5, 6, 7, 8, 0])) == []


def test_repeated_content_within_one_sequence_gets_distinct_blocks():
    kv = manager()
    a = make_request("a", [1, 2, 3, 4] * 3)
    compute_all(kv, a)
    assert len(set(a.block_hashes)) == 3
    assert kv.pool.cached == {h: b for h, b in zip(a.block_hashes, [1, 2, 3])}


def test_cache_blocks_indexes_only_full_computed_blocks():
    kv = manager()
    req = make_request("a", list(range(10)))
    kv.allocate(req, 6)
    req.num_computed_tokens = 6
    kv.cache_blocks(req)
    assert list(kv.pool.cached.values()) == [1]
    kv.allocate(req, 4)
    req.num_computed_tokens = 10
    kv.cache_blocks(req)
    assert list(kv.pool.cached.values()) == [1, 2]       # block 3 holds only 2 tokens
    assert kv.pool.blocks[3].block_hash is None


def test_prefix_stats_count_queries_and_hits():
    kv = manager()
    assert (kv.prefix_stats.queries, kv.prefix_stats.hits) == (0, 0)
    kv.record_lookup(12, 0)
    kv.record_lookup(8, 4)
    assert (kv.prefix_stats.queries, kv.prefix_stats.hits) == (20, 4)


def test_disabled_prefix_caching_never_hits_or_counts():
    kv = manager(enable_prefix_caching=False)
    a = make_request("a", list(range(12)))
    compute_all(kv, a)
    assert kv.pool.cached == {}
    assert all(blk.block_hash is None for blk in kv.pool.blocks)
    assert kv.get_computed_blocks(make_request("b", list(range(12)))) == []
    kv.record_lookup(12, 0)
    assert (kv.prefix_stats.queries, kv.prefix_stats.hits) == (0, 0)


def test_free_releases_tail_first_so_tails_are_evicted_first():
    kv = manager()
    a = make_request("a", list(range(13)))
    compute_all(kv, a)
    assert a.block_ids == [1, 2, 3, 4]
    kv.free(a)
    assert a.block_ids == []
    assert refs(kv, [1, 2, 3, 4]) == [0, 0, 0, 0]
    # Block 4 holds an unhashed partial block: plain, reused first; then the cached tail first.
    assert list(kv.pool.free_queue) == [4, 5, 6, 7, 8, 9, 10, 11, 3, 2, 1]
    kv.allocate(make_request("x", list(range(100, 128))), 28)          # 7 blocks: 4..10
    kv.allocate(make_request("y", list(range(200, 208))), 8)           # 2 blocks: 11, then 3 evicted
    again = make_request("a2", list(range(13)))
    assert kv.get_computed_blocks(again) == [1, 2]                     # the head survives


def test_free_of_shared_blocks_keeps_them_for_the_other_holder():
    kv = manager()
    a = make_request("a", list(range(12)))
    compute_all(kv, a)
    b = make_request("b", list(range(9)))
    hits = kv.get_computed_blocks(b)
    kv.allocate(b, 1, hits)
    assert b.block_ids == [1, 2, 4]
    kv.free(a)
    assert refs(kv, [1, 2, 3, 4]) == [1, 1, 0, 1]
    assert list(kv.pool.free_queue)[-1] == 3
    kv.free(b)                            # 4 is b's partial (plain) block; 2, 1 cached, tail first
    assert list(kv.pool.free_queue)[0] == 4
    assert list(kv.pool.free_queue)[-3:] == [3, 2, 1]


def test_hit_on_a_free_cached_block_reclaims_it_from_the_queue():
    kv = manager(num_blocks=5)            # 4 usable
    a = make_request("a", list(range(8)))
    compute_all(kv, a)
    kv.free(a)                            # blocks 1, 2 free but cached
    b = make_request("b", list(range(8)) + list(range(50, 58)))      # 16 tokens: 2 hits + 2 new blocks
    hits = kv.get_computed_blocks(b)
    assert hits == [1, 2]
    assert kv.can_allocate(b, 8, hits)    # 2 new + 2 reclaimed == 4 free
    c = make_request("c", [90, 91])
    kv.allocate(c, 2)                     # takes block 3
    assert not kv.can_allocate(b, 8, hits)   # 2 + 2 > 3 free
    kv.free(c)
    kv.allocate(b, 8, hits)
    assert b.block_ids == [1, 2, 3, 4]    # block 3 was freed by c most recently: reused first
    assert kv.pool.num_free_blocks == 0
    assert refs(kv, [1, 2, 3, 4]) == [1, 1, 1, 1]


def test_usage_counts_held_blocks_only():
    kv = manager()
    assert kv.usage == 0.0
    a = make_request("a", list(range(12)))
    compute_all(kv, a)
    assert kv.usage == pytest.approx(3 / 11)
    b = make_request("b", list(range(9)))
    kv.allocate(b, 1, kv.get_computed_blocks(b))       # shares 2 blocks, adds 1
    assert kv.usage == pytest.approx(4 / 11)
    kv.free(a)
    kv.free(b)
    assert kv.usage == 0.0                # cached-but-free blocks are not "used"
    kv.allocate(make_request("c", list(range(44))), 44)
    assert kv.usage == 1.0
