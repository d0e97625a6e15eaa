"""BlockPool: the null block, reference counts, the LRU free queue and the hash index."""

from __future__ import annotations

import pytest

from llmops.engine.block_pool import BlockPool

NUM_BLOCKS = 12          # blocks 1..11 usable, block 0 is the null block
H1, H2, H3 = b"hash-1", b"hash-2", b"hash-3"


@pytest.fixture
def pool() -> BlockPool:
    return BlockPool(NUM_BLOCKS)


def free_order(pool: BlockPool) -> list[int]:
    return list(pool.free_queue)


def test_fresh_pool_state(pool):
    assert pool.num_usable_blocks == 11
    assert pool.num_free_blocks == 11
    assert pool.num_used_blocks == 0
    assert free_order(pool) == list(range(1, 12))
    assert [b.ref_cnt for b in pool.blocks] == [0] * 12
    assert all(b.block_hash is None for b in pool.blocks)
    assert pool.cached == {}


@pytest.mark.parametrize("num_blocks", [0, 1, -3])
def test_rejects_pools_without_a_usable_block(num_blocks):
    with pytest.raises(ValueError, match="num_blocks"):
        BlockPool(num_blocks)


def test_smallest_pool_has_one_usable_block():
    pool = BlockPool(2)
    assert pool.num_usable_blocks == 1
    assert pool.allocate(1) == [1]
    assert not pool.can_allocate(1)


def test_allocate_hands_out_lowest_ids_first_with_ref_count_one(pool):
    assert pool.allocate(3) == [1, 2, 3]
    assert pool.allocate(2) == [4, 5]
    assert [pool.blocks[i].ref_cnt for i in range(12)] == [0, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0]
    assert free_order(pool) == [6, 7, 8, 9, 10, 11]
    assert pool.num_used_blocks == 5
    assert pool.num_free_blocks == 6


def test_allocate_zero_blocks_is_a_no_op(pool):
    assert pool.allocate(0) == []
    assert pool.num_free_blocks == 11


def test_null_block_is_never_handed_out(pool):
    first = pool.allocate(11)
    assert sorted(first) == list(range(1, 12))
    assert 0 not in first
    pool.free(first)
    second = pool.allocate(11)
    assert 0 not in second
    assert pool.blocks[0].ref_cnt == 0


def test_can_allocate(pool):
    assert pool.can_allocate(0)
    assert pool.can_allocate(11)
    assert not pool.can_allocate(12)
    pool.allocate(4)
    assert pool.can_allocate(7)
    assert not pool.can_allocate(8)


def test_allocating_more_than_free_raises_and_changes_nothing(pool):
    pool.allocate(9)
    with pytest.raises(RuntimeError, match="asked for 3 blocks with 2 free"):
        pool.allocate(3)
    assert free_order(pool) == [10, 11]


def test_plain_blocks_are_reused_most_recently_freed_first(pool):
    pool.allocate(5)                      # 1..5 in use, 6..11 free
    pool.free([3])
    pool.free([1])
    pool.free([5, 2])                     # within one call: in the order given
    assert free_order(pool) == [2, 5, 1, 3, 6, 7, 8, 9, 10, 11]
    assert pool.allocate(3) == [2, 5, 1]  # warm memory first
    assert free_order(pool) == [3, 6, 7, 8, 9, 10, 11]


def test_cached_blocks_are_evicted_only_after_plain_ones_least_recently_freed_first(pool):
    blocks = pool.allocate(11)
    for i, h in zip((0, 1, 2), (H1, H2, H3)):
        pool.cache_block(blocks[i], h)
    pool.free([blocks[1]])                # cached: 2
    pool.free([blocks[5]])                # plain: 6
    pool.free([blocks[0], blocks[2]])     # cached: 2, 1, 3
    assert free_order(pool) == [6, 2, 1, 3]
    assert pool.allocate(2) == [6, 2]     # the plain block, then the oldest cached one
    assert pool.lookup(H2) is None and pool.lookup(H1) == 1 and pool.lookup(H3) == 3


def test_ref_counts_shared_block_returns_to_queue_only_at_zero(pool):
    [b] = pool.allocate(1)
    pool.touch([b])                       # a second holder
    assert pool.blocks[b].ref_cnt == 2
    assert b not in pool.free_queue
    pool.free([b])
    assert pool.blocks[b].ref_cnt == 1
    assert b not in pool.free_queue
    assert pool.num_free_blocks == 10
    pool.free([b])
    assert pool.blocks[b].ref_cnt == 0
    assert free_order(pool)[0] == b
    assert pool.num_free_blocks == 11


def test_double_free_raises(pool):
    [b] = pool.allocate(1)
    pool.free([b])
    with pytest.raises(RuntimeError, match=f"block {b} freed more often than allocated"):
        pool.free([b])


def test_freeing_a_never_allocated_block_raises(pool):
    with pytest.raises(RuntimeError, match="freed more often"):
        pool.free([7])
    with pytest.raises(RuntimeError, match="freed more often"):
        pool.free([0])                    # the null block is never held either


def test_cached_hash_survives_free(pool):
    [b] = pool.allocate(1)
    pool.cache_block(b, H1)
    assert pool.lookup(H1) == b
    pool.free([b])
    assert pool.lookup(H1) == b
    assert pool.blocks[b].block_hash == H1
    assert pool.blocks[b].ref_cnt == 0
    assert b in pool.free_queue


def test_cached_hash_is_evicted_when_the_block_is_handed_out_again(pool):
    a, b = pool.allocate(2)               # 1, 2
    pool.cache_block(a, H1)
    pool.cache_block(b, H2)
    pool.free([b, a])                     # queue: 3..11, 2, 1
    assert pool.allocate(9) == list(range(3, 12))
    assert pool.lookup(H1) == a and pool.lookup(H2) == b     # not reached yet
    assert pool.allocate(1) == [b]        # the least recently freed goes first
    assert pool.lookup(H2) is None
    assert pool.blocks[b].block_hash is None
    assert pool.lookup(H1) == a           # still findable
    assert pool.cached == {H1: a}


def test_lookup_of_unknown_hash_is_none(pool):
    assert pool.lookup(H3) is None


def test_touch_pulls_free_cached_block_out_of_the_queue(pool):
    a, b = pool.allocate(2)
    pool.cache_block(a, H1)
    pool.free([b, a])                     # plain: 2, 3..11; cached: 1
    assert pool.num_free_blocks == 11
    assert free_order(pool) == [2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 1]
    pool.touch([pool.lookup(H1)])
    assert pool.blocks[a].ref_cnt == 1
    assert a not in pool.free_queue
    assert free_order(pool) == [2, 3, 4, 5, 6, 7, 8, 9, 10, 11]
    assert pool.num_free_blocks == 10
    assert pool.lookup(H1) == a           # touching keeps the hash
    pool.free([a])
    assert free_order(pool)[-1] == a      # back at the most-recent end


def test_touch_of_block_in_use_only_adds_a_reference(pool):
    [a] = pool.allocate(1)
    before = free_order(pool)
    pool.touch([a, a])
    assert pool.blocks[a].ref_cnt == 3
    assert free_order(pool) == before


def test_cache_block_first_writer_wins(pool):
    a, b = pool.allocate(2)
    pool.cache_block(a, H1)
    pool.cache_block(b, H1)               # same content computed twice
    assert pool.lookup(H1) == a
    assert pool.blocks[b].block_hash is None
    pool.cache_block(a, H2)               # a block keeps its first hash
    assert pool.blocks[a].block_hash == H1
    assert pool.lookup(H2) is None
    assert pool.cached == {H1: a}


def test_reallocating_the_duplicate_does_not_evict_the_original(pool):
    a, b = pool.allocate(2)
    pool.cache_block(a, H1)
    pool.cache_block(b, H1)
    pool.free([b])
    pool.allocate(10)                     # 3..11 then b
    assert pool.lookup(H1) == a


def test_reset_prefix_cache_forgets_all_hashes(pool):
    a, b = pool.allocate(2)
    pool.cache_block(a, H1)
    pool.cache_block(b, H2)
    pool.free([a])
    pool.reset_prefix_cache()
    assert pool.cached == {}
    assert pool.lookup(H1) is None and pool.lookup(H2) is None
    assert all(blk.block_hash is None for blk in pool.blocks)
    assert pool.blocks[b].ref_cnt == 1    # references are untouched
