"""The package logger. Messages go to stderr unless the application configured logging itself."""

from __future__ import annotations

import logging

_NAME = "llmops"


def get_logger(name: str = _NAME) -> logging.Logger:
    root = logging.getLogger(_NAME)
    if not root.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("llmops: %(message)s"))
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        root.propagate = False
    return logging.getLogger(name)
