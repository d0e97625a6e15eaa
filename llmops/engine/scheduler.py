"""Token-budget continuous batching: admit, chunk prefills, preempt when blocks run out.

Each step spends `max_num_batched_tokens`: running requests first (one token each when
decoding, a chunk when still prefilling), then waiting requests in arrival order while
blocks and `max_num_seqs` last. When a running request cannot get a block, the newest
running request is preempted: its blocks are freed and it goes back to the front of the
queue to recompute (cheaply, when its blocks are still in the prefix cache).
"""

from __future__ import annotations

import time
from collections import deque

from llmops.config import SchedulerConfig
from llmops.engine.kv_cache import KVCacheManager
from llmops.engine.outputs import ModelRunnerOutput, ScheduledChunk, SchedulerOutput
from llmops.engine.request import Request, RequestStatus


class Scheduler:
    def __init__(self, config: SchedulerConfig, kv_cache: KVCacheManager) -> None:
        self.max_num_seqs = config.max_num_seqs
        self.max_num_batched_tokens = config.max_num_batched_tokens
        self.kv_cache = kv_cache
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.requests: dict[str, Request] = {}
        self.num_preemptions = 0

    @property
    def num_unfinished(self) -> int:
        return len(self.waiting) + len(self.running)

    def add_request(self, request: Request) -> None:
        if request.request_id in self.requests:
            raise ValueError(f"request_id {request.request_id!r} is already in use")
        self.requests[request.request_id] = request
        self.waiting.append(request)

    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        budget = self._schedule_running(out, self.max_num_batched_tokens)
        if not out.preempted:  # nothing admitted while running requests are being evicted
            self._schedule_waiting(out, budget)
        return out

    def _schedule_running(self, out: SchedulerOutput, budget: int) -> int:
        i = 0
        while i < len(self.running) and budget > 0:
            request = self.running[i]
            num_new = min(request.num_tokens - request.num_computed_tokens, budget)
            if not self._make_room(request, num_new, out):
                break  # the request preempted itself; everything after it is gone too
            self._add_chunk(out, ScheduledChunk(request, num_new))
            budget -= num_new
            i += 1
        return budget

    def _make_room(self, request: Request, num_new: int, out: SchedulerOutput) -> bool:
        """Preempt the newest running requests until `request` fits; False if it went itself."""
        while not self.kv_cache.can_allocate(request, num_new):
            victim = self.running.pop()
            self._preempt(victim)
            out.preempted.append(victim)
            if victim is request:
                return False
        self.kv_cache.allocate(request, num_new)
        return True

    def _schedule_waiting(self, out: SchedulerOutput, budget: int) -> None:
        pending: set[bytes] = set()   # hashes of blocks that requests admitted this step will fill
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            request = self.waiting[0]
            hits = self.kv_cache.get_computed_blocks(request)
            if self.kv_cache.next_block_hash(request, len(hits)) in pending:
                # Its next block is being computed right now by an earlier request: wait one step
                # and share it from the prefix cache instead of computing it twice.
                break
            num_hit_tokens = len(hits) * self.kv_cache.block_size
            num_new = min(request.num_tokens - num_hit_tokens, budget)
            if not self.kv_cache.can_allocate(request, num_new, hits):
                break  # first come, first served: nobody overtakes the head of the queue
            pending.update(self.kv_cache.filled_block_hashes(request, num_hit_tokens, num_new))
            self.waiting.popleft()
            self.kv_cache.allocate(request, num_new, hits)
            if request.status == RequestStatus.WAITING:  # first admission; re-admissions are recomputes
                self.kv_cache.record_lookup(request.num_tokens, num_hit_tokens)
                request.num_cached_tokens = num_hit_tokens
                request.times.first_scheduled = time.monotonic()
            request.num_computed_tokens = num_hit_tokens
            request.status = RequestStatus.RUNNING
            self.running.append(request)
            self._add_chunk(out, ScheduledChunk(request, num_new))
            budget -= num_new

    @staticmethod
    def _add_chunk(out: SchedulerOutput, chunk: ScheduledChunk) -> None:
        (out.decodes if chunk.num_tokens == 1 else out.prefills).append(chunk)

    def _preempt(self, request: Request) -> None:
        self.kv_cache.free(request)
        request.status = RequestStatus.PREEMPTED
        request.num_computed_tokens = 0
        request.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(request)

    def update(self, out: SchedulerOutput, result: ModelRunnerOutput) -> list[Request]:
        """Advance computed counts, append sampled tokens, finish requests. Returns the requests
        that got a new token this step (finished ones included)."""
        updated = []
        now = time.monotonic()
        for chunk in out.chunks:
            request = chunk.request
            request.num_computed_tokens += chunk.num_tokens
            self.kv_cache.cache_blocks(request)
            sampled = result.sampled.get(request.request_id)
            if sampled is None:
                continue
            request.append_token(sampled.token_id)
            if sampled.logprobs is not None:
                request.logprobs.append(sampled.logprobs)
                request.logprob_ranks.append(sampled.ranks or {})
            if request.times.first_token is None:
                request.times.first_token = now
            status = request.check_stop()
            if status is not None:
                self._finish(request, status)
            updated.append(request)
        return updated

    def finish_requests(self, request_ids: list[str], status: RequestStatus) -> list[Request]:
        """Finish (e.g. abort, or stop on a stop string) requests by id; unknown ids are ignored."""
        done = []
        for request in map(self.requests.get, request_ids):
            if request is not None and not request.is_finished:
                self._finish(request, status)
                done.append(request)
        return done

    def finish(self, request: Request, status: RequestStatus) -> None:
        """Finish one request (by object) that is still waiting or running."""
        if not request.is_finished:
            self._finish(request, status)

    def _finish(self, request: Request, status: RequestStatus) -> None:
        if request in self.running:
            self.running.remove(request)
        elif request in self.waiting:
            self.waiting.remove(request)
        self.kv_cache.free(request)
        request.status = status
        request.times.finished = time.monotonic()
        if self.requests.get(request.request_id) is request:
            del self.requests[request.request_id]
