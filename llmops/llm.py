"""`LLM`: the offline, vLLM-shaped Python API over the engine."""

from __future__ import annotations

from typing import Any, Sequence

from llmops.config import LLMOpsConfig
from llmops.engine.llm_engine import LLMEngine
from llmops.engine.outputs import RequestOutput
from llmops.engine.sampling_params import SamplingParams
from llmops.tokenizer import Tokenizer

Prompt = str | list[int]
Messages = list[dict[str, Any]]


class LLM:
    """Generate from prompts with continuous batching; the default model needs no arguments."""

    def __init__(self, model: str | None = None, dtype: str = "auto", kv_cache_tokens: int | None = None,
                 block_size: int = 16, max_num_seqs: int = 64, max_num_batched_tokens: int = 2048,
                 enable_prefix_caching: bool = True, device: str = "auto",
                 max_model_len: int | None = None, int4_small_batch: bool = True) -> None:
        config = LLMOpsConfig.from_flat(
            model=model, dtype=dtype, kv_cache_tokens=kv_cache_tokens, block_size=block_size,
            max_num_seqs=max_num_seqs, max_num_batched_tokens=max_num_batched_tokens,
            enable_prefix_caching=enable_prefix_caching, device=device, max_model_len=max_model_len,
            int4_small_batch=int4_small_batch)
        self.engine = LLMEngine(config)

    def get_tokenizer(self) -> Tokenizer:
        return self.engine.tokenizer

    def generate(self, prompts: Prompt | Sequence[Prompt],
                 sampling_params: SamplingParams | Sequence[SamplingParams] | None = None) -> list[RequestOutput]:
        """One output per prompt, in order. Every prompt is validated before any is queued."""
        batch = _as_prompt_list(prompts)
        params = _as_params_list(sampling_params, len(batch))
        for prompt in batch:
            self.engine.encode_prompt(prompt)   # raises ValueError naming the problem
        return self._run(batch, params)

    def chat(self, messages: Messages | Sequence[Messages],
             sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
             add_generation_prompt: bool = True) -> list[RequestOutput]:
        """Apply the model's chat template to one conversation or a list of them, then generate."""
        conversations = [messages] if messages and isinstance(messages[0], dict) else list(messages)
        if not conversations:
            raise ValueError("messages must not be empty")
        tokenizer = self.engine.tokenizer
        prompts: list[Prompt] = [tokenizer.encode_chat(c, add_generation_prompt) for c in conversations]
        return self.generate(prompts, sampling_params)

    def _run(self, prompts: list[Prompt], params: list[SamplingParams]) -> list[RequestOutput]:
        ids: list[str] = []
        try:
            for prompt, p in zip(prompts, params):
                ids.append(self.engine.add_request(prompt, p))
            finished: dict[str, RequestOutput] = {}
            while len(finished) < len(ids):
                for out in self.engine.step():
                    if out.finished:
                        finished[out.request_id] = out
            return [finished[i] for i in ids]
        except BaseException:
            for request_id in ids:
                self.engine.abort(request_id)
            raise


def _as_prompt_list(prompts: Any) -> list[Prompt]:
    if isinstance(prompts, str):
        return [prompts]
    if isinstance(prompts, (list, tuple)):
        if not prompts:
            raise ValueError("prompts must not be empty")
        if all(isinstance(t, int) and not isinstance(t, bool) for t in prompts):
            return [list(prompts)]          # one prompt given as token ids
        return [p if isinstance(p, str) else list(p) if isinstance(p, (list, tuple)) else p for p in prompts]
    raise ValueError(f"prompts must be a string, token ids or a list of those, got {type(prompts).__name__}")


def _as_params_list(params: Any, n: int) -> list[SamplingParams]:
    if params is None:
        return [SamplingParams() for _ in range(n)]
    if isinstance(params, SamplingParams):
        return [params] * n
    if not isinstance(params, (list, tuple)) or not all(isinstance(p, SamplingParams) for p in params):
        raise ValueError("sampling_params must be a SamplingParams or a list of them, one per prompt")
    if len(params) != n:
        raise ValueError(f"got {len(params)} sampling params for {n} prompts")
    return list(params)
