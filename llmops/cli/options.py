"""CLI flags derived from the config dataclasses: a setting is defined (and documented) once."""

from __future__ import annotations

import argparse
from dataclasses import MISSING, fields
from typing import Any

from llmops.config import LLMOpsConfig


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One --flag per field of every subsystem config, with the field's help and default."""
    for member in fields(LLMOpsConfig):
        group = parser.add_argument_group(f"{member.name} options")
        for f in fields(member.default_factory):  # type: ignore[misc]
            flag = "--" + f.name.replace("_", "-")
            default = f.default if f.default is not MISSING else None
            help_text = f.metadata.get("help", "")
            if f.type in ("bool", bool):
                group.add_argument(flag, dest=f.name, default=default, action=argparse.BooleanOptionalAction,
                                   help=help_text)
                continue
            kwargs: dict[str, Any] = {"dest": f.name, "default": default, "help": help_text}
            if "choices" in f.metadata:
                kwargs["choices"] = f.metadata["choices"]
            if "int" in str(f.type):
                kwargs["type"] = int
            group.add_argument(flag, **kwargs)


def config_from_args(args: argparse.Namespace) -> LLMOpsConfig:
    names = {f.name for member in fields(LLMOpsConfig) for f in fields(member.default_factory)}  # type: ignore[misc]
    return LLMOpsConfig.from_flat(**{k: v for k, v in vars(args).items() if k in names})
