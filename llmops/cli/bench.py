"""`llmops bench offline`: engine throughput against the transformers one-at-a-time baseline."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="benchmarks")
    bsub = p.add_subparsers(dest="bench_command", required=True)
    off = bsub.add_parser("offline", help="offline throughput vs transformers generate one at a time")
    off.add_argument("--model", default=None, help="model (default: the built-in model)")
    off.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16"))
    off.add_argument("--concurrency", default="1,8,32", help="comma-separated concurrent request counts")
    off.add_argument("--output-len", type=int, default=64, help="new tokens per request")
    off.add_argument("--repeats", type=int, default=3, help="runs per concurrency (the median is kept)")
    off.add_argument("--baseline-prompts", type=int, default=4, help="prompts the baseline serves one at a time")
    off.add_argument("--kv-cache-tokens", type=int, default=None)
    off.add_argument("--out", default=None, help="also write the report as JSON to this file")
    off.set_defaults(func=run_offline)


def run_offline(args: argparse.Namespace) -> int:
    from llmops.bench.offline import run_offline as bench, to_json

    try:
        import transformers  # noqa: F401  - the baseline; not a runtime dependency of llmops
    except ImportError as exc:
        raise ValueError("the baseline needs transformers: pip install 'llmops[bench]'") from exc

    levels = tuple(int(c) for c in args.concurrency.split(","))
    report = bench(model=args.model, dtype=args.dtype, concurrency=levels, output_len=args.output_len,
                   repeats=args.repeats, baseline_prompts=args.baseline_prompts,
                   kv_cache_tokens=args.kv_cache_tokens, progress=lambda m: print(m, file=sys.stderr))
    print(f"model {report.model}, dtype {report.dtype}, {report.output_len} new tokens per request, "
          f"{report.machine}, {report.date}")
    print(report.table())
    if args.out:
        Path(args.out).write_text(to_json(report), encoding="utf-8")
    return 0
