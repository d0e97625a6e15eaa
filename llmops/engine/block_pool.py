"""The pool of KV cache blocks: reference counts, a least-recently-used free queue and the
prefix-cache index (block hash -> block).

Block 0 is the null block: never handed out, it pads block tables. A freed block that carries
a hash stays findable by that hash until it is handed out again, oldest-freed first.
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
        # Free blocks in eviction order: the front is handed out first (least recently freed).
        self.free_queue: OrderedDict[int, None] = OrderedDict((i, None) for i in range(1, num_blocks))
        self.cached: dict[bytes, int] = {}  # block hash -> block id

    @property
    def num_usable_blocks(self) -> int:
        return self.num_blocks - 1

    @property
    def num_free_blocks(self) -> int:
        return len(self.free_queue)

    @property
    def num_used_blocks(self) -> int:
        return self.num_usable_blocks - self.num_free_blocks

    def can_allocate(self, n: int) -> bool:
        return n <= len(self.free_queue)

    def allocate(self, n: int) -> list[int]:
        """Hand out n blocks (ref count 1), evicting their old prefix-cache entries."""
        if not self.can_allocate(n):
            raise RuntimeError(f"asked for {n} blocks with {len(self.free_queue)} free")
        ids = []
        for _ in range(n):
            block_id, _ = self.free_queue.popitem(last=False)
            block = self.blocks[block_id]
            if block.block_hash is not None:
                if self.cached.get(block.block_hash) == block_id:
                    del self.cached[block.block_hash]
                block.block_hash = None
            block.ref_cnt = 1
            ids.append(block_id)
        return ids

    def lookup(self, block_hash: bytes) -> int | None:
        """The block holding this hash, whether in use or free-but-cached."""
        return self.cached.get(block_hash)

    def touch(self, block_ids: list[int]) -> None:
        """Take a reference on cached blocks (prefix-cache hits), pulling free ones out of the queue."""
        for block_id in block_ids:
            block = self.blocks[block_id]
            if block.ref_cnt == 0:
                del self.free_queue[block_id]
            block.ref_cnt += 1

    def free(self, block_ids: list[int]) -> None:
        """Drop one reference each; pass a sequence's blocks tail first so tails are evicted first."""
        for block_id in block_ids:
            block = self.blocks[block_id]
            block.ref_cnt -= 1
            if block.ref_cnt < 0:
                raise RuntimeError(f"block {block_id} freed more often than allocated")
            if block.ref_cnt == 0:
                self.free_queue[block_id] = None

    def cache_block(self, block_id: int, block_hash: bytes) -> None:
        """Record a full, computed block under its hash (first writer wins on duplicates)."""
        block = self.blocks[block_id]
        if block.block_hash is not None:
            return
        if block_hash not in self.cached:
            block.block_hash = block_hash
            self.cached[block_hash] = block_id

    def reset_prefix_cache(self) -> None:
        """Forget all hashes (e.g. after weights change)."""
        for block in self.blocks:
            block.block_hash = None
        self.cached.clear()
