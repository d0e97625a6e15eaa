"""llmops: take a language model from a file to production and keep it healthy there."""

from llmops.config import CacheConfig, LLMOpsConfig, ModelConfig, SchedulerConfig
from llmops.engine.async_engine import AsyncEngine, EngineDeadError
from llmops.engine.llm_engine import LLMEngine
from llmops.engine.outputs import CompletionOutput, EngineStats, Logprob, RequestOutput
from llmops.engine.sampling_params import SamplingParams
from llmops.llm import LLM
from llmops.models.store import ModelStore, StoredModel
from llmops.tokenizer import Tokenizer

__version__ = "0.1.0"

__all__ = [
    "LLM", "AsyncEngine", "LLMEngine", "SamplingParams", "RequestOutput", "CompletionOutput", "Logprob",
    "EngineStats", "EngineDeadError", "LLMOpsConfig", "ModelConfig", "CacheConfig", "SchedulerConfig",
    "ModelStore", "StoredModel", "Tokenizer", "__version__",
]
