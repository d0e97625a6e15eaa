"""`llmops generate "prompt"`: stream a completion to the terminal."""

from __future__ import annotations

import argparse
import sys

from llmops.cli.options import add_config_flags, config_from_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="generate text from a prompt (streams to the terminal)")
    p.add_argument("prompt", help="the prompt text ('-' reads it from stdin)")
    p.add_argument("--max-tokens", type=int, default=256, help="most new tokens to generate")
    p.add_argument("--temperature", type=float, default=0.7, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass")
    p.add_argument("--seed", type=int, default=None, help="fix the sampling seed")
    p.add_argument("--raw", action="store_true", help="send the prompt as is, without the chat template")
    add_config_flags(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from llmops.engine.llm_engine import LLMEngine
    from llmops.engine.sampling_params import SamplingParams

    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    params = SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p,
                            seed=args.seed)
    engine = LLMEngine(config_from_args(args))
    tokenizer = engine.tokenizer
    if args.raw or tokenizer.chat_template is None:
        request: str | list[int] = prompt
    else:
        request = tokenizer.encode_chat([{"role": "user", "content": prompt}])
    engine.add_request(request, params, request_id="cli")
    shown = 0
    while engine.has_unfinished_requests():
        for out in engine.step():
            text = out.outputs[0].text
            sys.stdout.write(text[shown:])
            sys.stdout.flush()
            shown = len(text)
    sys.stdout.write("\n")
    return 0
