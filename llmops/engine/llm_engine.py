"""The synchronous engine: add_request / step / abort. One step = schedule, run, update, detokenize."""

from __future__ import annotations

import dataclasses
import itertools
import time
from pathlib import Path

from llmops.config import LLMOpsConfig
from llmops.engine.device import available_memory_bytes, resolve_device, resolve_dtype
from llmops.engine.kv_cache import KVCacheManager
from llmops.engine.model_runner import ModelRunner
from llmops.engine.output_processor import RequestGroup
from llmops.engine.outputs import EngineStats, RequestOutput
from llmops.engine.request import Request, RequestStatus
from llmops.engine.sampling_params import SamplingParams
from llmops.engine.scheduler import Scheduler
from llmops.log import get_logger
from llmops.models.loader import load_model
from llmops.models.store import ModelStore
from llmops.tokenizer import Tokenizer

_KV_MEMORY_SHARE = 0.1   # default KV cache: this share of available memory, capped by what can be used
logger = get_logger(__name__)


class LLMEngine:
    def __init__(self, config: LLMOpsConfig | None = None) -> None:
        self.config = config or LLMOpsConfig()
        started = time.monotonic()
        self.model_path: Path = ModelStore().resolve(self.config.model.model)
        self.model_name = self.config.model.model or self.model_path.name
        self.device = resolve_device(self.config.model.device)
        self.dtype = resolve_dtype(self.config.model.dtype, self.device)
        self.tokenizer = Tokenizer.from_folder(self.model_path)
        self.max_positions = self._max_positions()
        model = load_model(self.model_path, self.dtype, self.device, self.max_positions,
                           self.config.model.int4_small_batch)
        self.arch = model.cfg
        self.eos_token_ids = self._eos_ids()
        num_blocks = self._num_blocks()
        block_size = self.config.cache.block_size
        self.max_model_len = min(self.max_positions, (num_blocks - 1) * block_size)
        self.kv_cache = KVCacheManager(num_blocks, block_size, self.config.cache.enable_prefix_caching)
        self.scheduler = Scheduler(self.config.scheduler, self.kv_cache)
        self.runner = ModelRunner(model, num_blocks, block_size, self.dtype, self.device)
        self._groups: dict[str, RequestGroup] = {}
        self._child_index: dict[str, tuple[RequestGroup, int]] = {}
        self._ids = itertools.count()
        self.num_prompt_tokens = 0
        self.num_generation_tokens = 0
        logger.info("loaded %s (%s, %s) in %.2f s", self.model_name, self.device, str(self.dtype).removeprefix("torch."),
                    time.monotonic() - started)

    # ---- requests -------------------------------------------------------------------------
    def add_request(self, prompt: str | list[int], params: SamplingParams | None = None,
                    request_id: str | None = None) -> str:
        """Validate and queue one prompt (n sequences). Raises ValueError before changing any state."""
        params = self.check_params(params)
        if request_id is None:
            request_id = next(i for i in (f"req-{n}" for n in self._ids) if i not in self._groups)
        if not isinstance(request_id, str) or not request_id:
            raise ValueError("request_id must be a non-empty string")
        child_ids = [request_id] if params.n == 1 else [f"{request_id}-{k}" for k in range(params.n)]
        if request_id in self._groups or any(c in self._child_index for c in child_ids):
            raise ValueError(f"request_id {request_id!r} is already in use")
        token_ids = self.encode_prompt(prompt)
        text = prompt if isinstance(prompt, str) else None
        children = [Request(child_id, token_ids, params, self.eos_token_ids, self.max_model_len,
                            None if params.seed is None else params.seed + k, self.device)
                    for k, child_id in enumerate(child_ids)]
        group = RequestGroup(request_id, text, children, self.tokenizer)
        self._groups[request_id] = group
        for k, child in enumerate(children):
            self._child_index[child.request_id] = (group, k)
            self.scheduler.add_request(child)
        return request_id

    def check_params(self, params: SamplingParams | None) -> SamplingParams:
        """A validated private copy: later changes to the caller's object cannot reach the engine."""
        params = params or SamplingParams()
        if not isinstance(params, SamplingParams):
            raise ValueError(f"sampling params must be a SamplingParams, got {type(params).__name__}")
        params = dataclasses.replace(params)        # re-runs validation on the current field values
        if params.n > self.config.scheduler.max_num_seqs:
            raise ValueError(f"n must be <= max_num_seqs ({self.config.scheduler.max_num_seqs}), got {params.n}")
        bad = [t for t in params.stop_token_ids or [] if t >= self.arch.vocab_size]
        if bad:
            raise ValueError(f"stop_token_ids must be < the vocabulary size {self.arch.vocab_size}, got {bad[0]}")
        return params

    def encode_prompt(self, prompt: str | list[int]) -> list[int]:
        """Prompt text or ids -> validated token ids (non-empty, in vocabulary, within the context)."""
        if isinstance(prompt, str):
            if not prompt:
                raise ValueError("prompt must not be empty")
            token_ids = self.tokenizer.encode(prompt)
        elif isinstance(prompt, (list, tuple)):
            token_ids = list(prompt)
        else:
            raise ValueError(f"prompt must be a string or a list of token ids, got {type(prompt).__name__}")
        if not token_ids:
            raise ValueError("prompt must not be empty")
        vocab = self.arch.vocab_size
        bad = [t for t in token_ids if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < vocab]
        if bad:  # also catches a tokenizer whose added tokens lie beyond the model's embedding
            raise ValueError(f"prompt token ids must be integers in [0, {vocab}) (the model vocabulary); "
                             f"got {bad[0]!r}")
        if len(token_ids) >= self.max_model_len:
            raise ValueError(f"prompt has {len(token_ids)} tokens, but the context length (max_model_len) "
                             f"is {self.max_model_len}: at most {self.max_model_len - 1} prompt tokens fit")
        return token_ids

    def abort(self, request_id: str) -> RequestOutput | None:
        """Stop a request and free its blocks. Returns its final output (finish_reason "abort"
        for the sequences it stopped), or None if it was unknown or already done."""
        group = self._groups.pop(request_id, None)
        if group is None:
            return None
        for child in group.children:
            if not child.is_finished:  # by object: a finished child's id may already name another request
                self.scheduler.finish(child, RequestStatus.FINISHED_ABORTED)
                self._child_index.pop(child.request_id, None)
        return group.output()

    def reset_prefix_cache(self) -> bool:
        """Forget cached prefixes (only when no request holds blocks). Returns whether it did."""
        if self.kv_cache.pool.num_used_blocks:
            return False
        self.kv_cache.pool.reset_prefix_cache()
        return True

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.num_unfinished > 0

    # ---- the step loop ---------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        scheduled = self.scheduler.schedule()
        if scheduled.is_empty:
            return []
        self.num_prompt_tokens += sum(
            max(0, min(c.request.num_computed_tokens + c.num_tokens, c.request.num_prompt_tokens)
                - c.request.num_computed_tokens) for c in scheduled.chunks)
        result = self.runner.execute(scheduled)
        updated = self.scheduler.update(scheduled, result)
        self.num_generation_tokens += len(result.sampled)
        return self._process(updated)

    def _process(self, updated: list[Request]) -> list[RequestOutput]:
        touched: dict[str, RequestGroup] = {}
        for request in updated:
            group, index = self._child_index[request.request_id]
            stop = group.on_new_token(index)
            if stop is not None:  # a stop string outranks a length limit reached in the same step
                self.scheduler.finish(request, RequestStatus.FINISHED_STOPPED)
                request.status, request.stop_reason = RequestStatus.FINISHED_STOPPED, stop
            if request.is_finished:
                self._child_index.pop(request.request_id, None)
            touched[group.request_id] = group
        outputs = [group.output() for group in touched.values()]
        for out in outputs:
            if out.finished:
                self._groups.pop(out.request_id, None)
        return outputs

    # ---- stats and sizing -----------------------------------------------------------------
    def stats(self) -> EngineStats:
        pool, prefix = self.kv_cache.pool, self.kv_cache.prefix_stats
        return EngineStats(
            num_running=len(self.scheduler.running), num_waiting=len(self.scheduler.waiting),
            kv_blocks_used=pool.num_used_blocks, kv_blocks_total=pool.num_usable_blocks,
            kv_usage=self.kv_cache.usage, prefix_cache_queries=prefix.queries, prefix_cache_hits=prefix.hits,
            num_preemptions=self.scheduler.num_preemptions, num_prompt_tokens=self.num_prompt_tokens,
            num_generation_tokens=self.num_generation_tokens)

    def _max_positions(self) -> int:
        from llmops.models.arch import ArchConfig  # config only; the model is not built yet
        limit = ArchConfig.from_folder(self.model_path).max_position_embeddings
        asked = self.config.model.max_model_len
        if asked is not None and asked > limit:
            raise ValueError(f"max_model_len {asked} exceeds the model's context length {limit}")
        return asked or limit

    def _eos_ids(self) -> tuple[int, ...]:
        ids = set(self.arch.eos_token_ids)
        if self.tokenizer.eos_token_id is not None:
            ids.add(self.tokenizer.eos_token_id)
        return tuple(sorted(ids))

    def _num_blocks(self) -> int:
        cache, bs = self.config.cache, self.config.cache.block_size
        per_token = ModelRunner.kv_bytes_per_token(self.arch, self.dtype)
        tokens = cache.kv_cache_tokens
        if tokens is None:
            by_memory = int(available_memory_bytes(self.device) * _KV_MEMORY_SHARE) // per_token
            usable = self.config.scheduler.max_num_seqs * self.max_positions
            tokens = max(min(by_memory, usable), 4 * bs)
        num_blocks = tokens // bs + 1  # + the null block
        logger.info("KV cache: %d tokens (%d blocks of %d, %.2f GiB %s)", (num_blocks - 1) * bs,
                    num_blocks - 1, bs, num_blocks * bs * per_token / 2 ** 30, str(self.dtype).removeprefix("torch."))
        return num_blocks
