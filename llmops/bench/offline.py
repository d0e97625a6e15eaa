"""Offline throughput: the engine at 1/8/32 concurrent requests against transformers
`generate` serving the same prompts one at a time (the traditional baseline), in one run."""

from __future__ import annotations

import gc
import json
import platform
import resource
import statistics
import time
from dataclasses import asdict, dataclass, field
from datetime import date

from llmops.bench.prompts import chat_prompts


@dataclass
class OfflineResult:
    concurrency: int
    output_tokens: int
    seconds: list[float]                # one per repetition
    tokens_per_s: float                 # median over repetitions
    speedup: float = 0.0                # tokens_per_s / baseline tokens_per_s


@dataclass
class OfflineReport:
    model: str
    dtype: str
    output_len: int
    load_seconds: float = 0.0           # LLM() construction from the store (model already imported)
    engine: list[OfflineResult] = field(default_factory=list)
    baseline: dict[str, float] = field(default_factory=dict)   # dtype -> tok/s, one at a time
    baseline_best: float = 0.0
    peak_rss_mib: float = 0.0
    model_mib: float = 0.0
    kv_budget_mib: float = 0.0
    machine: str = field(default_factory=lambda: f"{platform.machine()}, {_cpu_name()}")
    date: str = field(default_factory=lambda: date.today().isoformat())

    def table(self) -> str:
        rows = [f"| concurrency | output tok/s (median of {len(self.engine[0].seconds)}) | x baseline |",
                "|---|---|---|"]
        rows += [f"| {r.concurrency} | {r.tokens_per_s:.1f} | {r.speedup:.1f}x |" for r in self.engine]
        base = ", ".join(f"{k} {v:.1f}" for k, v in self.baseline.items())
        rows.append(f"\nbaseline (transformers generate, one request at a time, tok/s): {base}")
        rows.append(f"start from the store (LLM() construction): {self.load_seconds:.2f} s")
        rows.append(f"peak RSS {self.peak_rss_mib:.0f} MiB (model {self.model_mib:.0f} MiB, "
                    f"KV budget {self.kv_budget_mib:.0f} MiB)")
        return "\n".join(rows)


def run_offline(model: str | None = None, dtype: str = "auto", concurrency: tuple[int, ...] = (1, 8, 32),
                output_len: int = 64, repeats: int = 3, baseline_prompts: int = 4,
                baseline_dtypes: tuple[str, ...] = ("float32", "bfloat16"), kv_cache_tokens: int | None = None,
                progress=print) -> OfflineReport:
    from llmops.engine.sampling_params import SamplingParams
    from llmops.llm import LLM
    from llmops.models.store import ModelStore

    ModelStore().resolve(model)       # a first use imports the model: keep that out of the start time
    start = time.perf_counter()
    llm = LLM(model=model, dtype=dtype, kv_cache_tokens=kv_cache_tokens,
              max_num_seqs=max(64, max(concurrency)))
    engine = llm.engine
    report = OfflineReport(model=engine.model_name, dtype=str(engine.dtype).removeprefix("torch."),
                           output_len=output_len, load_seconds=time.perf_counter() - start)
    params = SamplingParams(temperature=0.0, max_tokens=output_len, ignore_eos=True)
    prompts = [llm.get_tokenizer().encode_chat(m) for m in chat_prompts(max(concurrency))]
    llm.generate(prompts[:2], SamplingParams(max_tokens=4))      # warm-up
    for c in concurrency:
        seconds = []
        for _ in range(repeats):
            engine.reset_prefix_cache()
            start = time.perf_counter()
            outs = llm.generate(prompts[:c], params)
            seconds.append(time.perf_counter() - start)
            assert all(len(o.outputs[0].token_ids) == output_len for o in outs)
        tps = c * output_len / statistics.median(seconds)
        report.engine.append(OfflineResult(c, c * output_len, seconds, tps))
        progress(f"engine, {c} concurrent: {tps:.1f} tok/s")
    report.peak_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    report.model_mib = engine.runner.model.weight_bytes() / 2 ** 20
    report.kv_budget_mib = sum(k.numel() * k.element_size() * 2 for k, _ in engine.runner.kv_caches) / 2 ** 20
    folder = engine.model_path
    del llm, engine
    gc.collect()
    for bdtype in baseline_dtypes:
        report.baseline[bdtype] = _baseline(folder, bdtype, prompts[:baseline_prompts], output_len)
        progress(f"transformers {bdtype}, one at a time: {report.baseline[bdtype]:.1f} tok/s")
    report.baseline_best = max(report.baseline.values())
    for r in report.engine:
        r.speedup = r.tokens_per_s / report.baseline_best
    return report


def _baseline(folder, dtype: str, prompts: list[list[int]], output_len: int) -> float:
    """transformers generate, one prompt at a time, greedy, exactly output_len new tokens."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=getattr(torch, dtype)).eval()
    kwargs = dict(max_new_tokens=output_len, min_new_tokens=output_len, do_sample=False, pad_token_id=0)
    with torch.inference_mode():
        ids = torch.tensor([prompts[0]])
        model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=4, do_sample=False, pad_token_id=0)
        start = time.perf_counter()
        for p in prompts:
            ids = torch.tensor([p])
            model.generate(ids, attention_mask=torch.ones_like(ids), **kwargs)
        elapsed = time.perf_counter() - start
    del model
    gc.collect()
    return len(prompts) * output_len / elapsed


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def to_json(report: OfflineReport) -> str:
    return json.dumps(asdict(report), indent=2)
