"""`llmops models import PATH` and `llmops models list`: the local model store."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="manage the local model store")
    msub = p.add_subparsers(dest="models_command", required=True)
    imp = msub.add_parser("import", help="import a .gguf file or a Hugging Face folder into the store")
    imp.add_argument("path", help="a .gguf file or a folder with config.json, *.safetensors, tokenizer.json")
    imp.add_argument("--name", default=None, help="name to store it under (default: from the file name)")
    imp.set_defaults(func=run_import)
    ls = msub.add_parser("list", help="list stored models")
    ls.set_defaults(func=run_list)


def run_import(args: argparse.Namespace) -> int:
    from llmops.models.store import ModelStore

    stored = ModelStore().import_model(args.path, name=args.name)
    print(f"imported {stored.name} -> {stored.path}")
    return 0


def run_list(args: argparse.Namespace) -> int:
    from llmops.models.store import ModelStore

    models = ModelStore().list()
    if not models:
        print("no models stored yet (the default model is imported on first use)")
        return 0
    width = max(len(m.name) for m in models)
    for m in models:
        print(f"{m.name:<{width}}  {m.format:<4}  {m.size_bytes / 2**20:8.1f} MiB  {m.sha256[:12]}  {m.path}")
    return 0
