"""KV cache bookkeeping: which blocks each request holds, prefix-cache lookup by chained block
hashes, and the usage and hit statistics. The tensors themselves live in the model runner."""

from __future__ import annotations

import hashlib
from array import array
from dataclasses import dataclass

from llmops.engine.block_pool import BlockPool
from llmops.engine.request import Request

_ROOT_HASH = b"llmops-prefix-root"


def hash_block(parent: bytes | None, token_ids: list[int]) -> bytes:
    """Chained block hash: equal hashes mean equal token prefixes (up to sha256 collisions)."""
    h = hashlib.sha256(parent or _ROOT_HASH)
    h.update(array("q", token_ids).tobytes())
    return h.digest()


@dataclass
class PrefixCacheStats:
    queries: int = 0       # prompt tokens looked up in the prefix cache
    hits: int = 0          # of those, tokens found cached


class KVCacheManager:
    """Allocates block tables for requests; shares full blocks between equal prefixes."""

    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True) -> None:
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.pool = BlockPool(num_blocks)
        self.prefix_stats = PrefixCacheStats()

    @property
    def usage(self) -> float:
        """Fraction of usable blocks held by requests (0..1)."""
        return self.pool.num_used_blocks / self.pool.num_usable_blocks

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def get_computed_blocks(self, request: Request) -> list[int]:
        """Cached blocks holding the longest computed prefix of the request's tokens.

        Always leaves at least one token to compute, so the request gets logits to sample from.
        """
        if not self.enable_prefix_caching:
            return []
        max_blocks = (request.num_tokens - 1) // self.block_size
        hashes = self._block_hashes(request, max_blocks)
        hits: list[int] = []
        for block_hash in hashes:
            block_id = self.pool.lookup(block_hash)
            if block_id is None:
                break
            hits.append(block_id)
        return hits

    def next_block_hash(self, request: Request, index: int) -> bytes | None:
        """Hash of the request's block `index` if that block is full and not its last token's
        (so it could be shared); None otherwise or without prefix caching."""
        if not self.enable_prefix_caching or (index + 1) * self.block_size > request.num_tokens - 1:
            return None
        return self._block_hashes(request, index + 1)[index]

    def filled_block_hashes(self, request: Request, start_token: int, num_new: int) -> list[bytes]:
        """Hashes of the blocks a chunk of num_new tokens from start_token completes."""
        if not self.enable_prefix_caching:
            return []
        first, end = start_token // self.block_size, (start_token + num_new) // self.block_size
        return self._block_hashes(request, end)[first:end]

    def can_allocate(self, request: Request, num_new_tokens: int, computed: list[int] | None = None) -> bool:
        computed = computed or []
        need = self._new_blocks_needed(request, num_new_tokens, computed)
        reclaimed = sum(1 for b in computed if self.pool.blocks[b].ref_cnt == 0)
        return self.pool.can_allocate(need + reclaimed)

    def allocate(self, request: Request, num_new_tokens: int, computed: list[int] | None = None) -> None:
        """Give the request blocks for num_new_tokens more tokens, after the `computed` hits."""
        computed = computed or []
        need = self._new_blocks_needed(request, num_new_tokens, computed)
        if computed:
            self.pool.touch(list(computed))
            request.block_ids.extend(computed)
            request.num_cached_blocks = len(request.block_ids)   # hits are indexed already
        request.block_ids.extend(self.pool.allocate(need))

    def record_lookup(self, num_query_tokens: int, num_hit_tokens: int) -> None:
        if self.enable_prefix_caching:
            self.prefix_stats.queries += num_query_tokens
            self.prefix_stats.hits += num_hit_tokens

    def cache_blocks(self, request: Request) -> None:
        """Index the request's newly full, computed blocks by their chained hashes."""
        if not self.enable_prefix_caching:
            return
        num_full = request.num_computed_tokens // self.block_size
        if num_full <= request.num_cached_blocks:
            return
        hashes = self._block_hashes(request, num_full)
        for i in range(request.num_cached_blocks, num_full):
            self.pool.cache_block(request.block_ids[i], hashes[i])
        request.num_cached_blocks = num_full

    def free(self, request: Request) -> None:
        """Release the request's blocks, tail first so that tails are evicted before heads."""
        self.pool.free(list(reversed(request.block_ids)))
        request.block_ids = []
        request.num_cached_blocks = 0

    def _new_blocks_needed(self, request: Request, num_new_tokens: int, computed: list[int]) -> int:
        total = request.num_computed_tokens + len(computed) * self.block_size + num_new_tokens
        return max(0, self.blocks_needed(total) - len(request.block_ids) - len(computed))

    def _block_hashes(self, request: Request, num_blocks: int) -> list[bytes]:
        """The first num_blocks chained hashes of the request's tokens, memoized on the request."""
        hashes = request.block_hashes
        bs = self.block_size
        while len(hashes) < num_blocks:
            i = len(hashes)
            hashes.append(hash_block(hashes[-1] if hashes else None, request.all_token_ids[i * bs:(i + 1) * bs]))
        return hashes[:num_blocks]
