"""The package logger. Records propagate as usual; until the application configures logging
(the root logger has a handler), they are also written to stderr so start-up lines show."""

from __future__ import annotations

import logging

_NAME = "llmops"


class _FallbackHandler(logging.StreamHandler):
    """Writes only while the root logger has no handler of its own."""

    def emit(self, record: logging.LogRecord) -> None:
        if not logging.getLogger().handlers:
            super().emit(record)


def get_logger(name: str = _NAME) -> logging.Logger:
    root = logging.getLogger(_NAME)
    if not any(isinstance(h, _FallbackHandler) for h in root.handlers):
        handler = _FallbackHandler()
        handler.setFormatter(logging.Formatter("llmops: %(message)s"))
        root.addHandler(handler)
        if root.level == logging.NOTSET:
            root.setLevel(logging.INFO)
    return logging.getLogger(name)
