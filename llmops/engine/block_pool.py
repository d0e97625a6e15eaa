"""The pool of KV cache blocks: reference counts, the free blocks and the prefix-cache index
(block hash -> block).

Block 0 is the null block: never handed out, it pads block tables. Free blocks come in two
kinds. Plain ones (no hash: never full, or forgotten) are handed out first, most recently
freed first, so the memory in use stays small and warm. Blocks that carry a hash stay findable
by it while free and are evicted only when no plain block is left, least recently freed first.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass


@dataclass
class Block:
    block_id: int
    ref_cnt: int = 0
    block_hash: bytes | None = None     # set once the block is full and computed


class BlockPool:
    """Blocks 1..num_blocks-1 are usable; block 0 is the null block."""

    def __init__(self, num_blocks: int) -> None:
        if num_blocks < 2:
            raise ValueError(f"num_blocks must be >= 2 (one is the null block), got {num_blocks}")
        self.num_blocks = num_blocks
        self.blocks = [Block(i) for i in range(num_blocks)]
        self.free_plain: list[int] = list(range(num_blocks - 1, 0, -1))   # a stack: pop() is next
        self.free_cached: OrderedDict[int, None] = OrderedDict()          # LRU: the front is evicted first
        self.cached: dict[bytes, int] = {}  # block hash -> block id

    @property
    def num_usable_blocks(self) -> int:
        return self.num_blocks - 1

    @property
    def num_free_blocks(self) -> int:
        return len(self.free_plain) + len(self.free_cached)

    @property
    def num_used_blocks(self) -> int:
        return self.num_usable_blocks - self.num_free_blocks

    @property
    def free_queue(self) -> list[int]:
        """Free block ids in the order they would be handed out."""
        return self.free_plain[::-1] + list(self.free_cached)

    def can_allocate(self, n: int) -> bool:
        return n <= self.num_free_blocks

    def allocate(self, n: int) -> list[int]:
        """Hand out n blocks (ref count 1): plain ones first, then evict cached ones."""
        if not self.can_allocate(n):
            raise RuntimeError(f"asked for {n} blocks with {self.num_free_blocks} free")
        ids = []
        for _ in range(n):
            if self.free_plain:
                block_id = self.free_plain.pop()
            else:
                block_id, _ = self.free_cached.popitem(last=False)
                self._forget(self.blocks[block_id])
            self.blocks[block_id].ref_cnt = 1
            ids.append(block_id)
        return ids

    def lookup(self, block_hash: bytes) -> int | None:
        """The block holding this hash, whether in use or free-but-cached."""
        return self.cached.get(block_hash)

    def touch(self, block_ids: list[int]) -> None:
        """Take a reference on cached blocks (prefix-cache hits), pulling free ones out of the LRU."""
        for block_id in block_ids:
            block = self.blocks[block_id]
            if block.ref_cnt == 0:
                del self.free_cached[block_id]
            block.ref_cnt += 1

    def free(self, block_ids: list[int]) -> None:
        """Drop one reference each; pass a sequence's blocks tail first so tails are evicted first."""
        for block_id in block_ids:
            block = self.blocks[block_id]
            if block.ref_cnt <= 0:
                raise RuntimeError(f"block {block_id} freed more often than allocated")
            block.ref_cnt -= 1
            if block.ref_cnt == 0:
                if block.block_hash is None:
                    self.free_plain.append(block_id)
                else:
                    self.free_cached[block_id] = None

    def cache_block(self, block_id: int, block_hash: bytes) -> None:
        """Record a full, computed block under its hash (first writer wins on duplicates)."""
        block = self.blocks[block_id]
        if block.block_hash is not None or block_hash in self.cached:
            return
        block.block_hash = block_hash
        self.cached[block_hash] = block_id
        if block.ref_cnt == 0:  # not expected (blocks are cached while in use), but keep the lists exact
            self.free_plain.remove(block_id)
            self.free_cached[block_id] = None

    def reset_prefix_cache(self) -> None:
        """Forget all hashes (e.g. after weights change); cached free blocks become plain."""
        for block_id in self.free_cached:
            self.free_plain.append(block_id)
        self.free_cached.clear()
        for block in self.blocks:
            block.block_hash = None
        self.cached.clear()

    def _forget(self, block: Block) -> None:
        if block.block_hash is not None and self.cached.get(block.block_hash) == block.block_id:
            del self.cached[block.block_hash]
        block.block_hash = None
