"""Incremental detokenization and stop strings.

Text is emitted only once it is complete UTF-8: a token that ends inside a multi-byte
character decodes to U+FFFD, so the window waits for the next token. Decoding starts from a
few prompt tokens so that word-initial spaces come out as the full sequence would decode them.
Stop strings are matched across token boundaries; while a request runs, the last
(longest stop - 1) characters are held back, since they may turn out to start a stop string.
"""

from __future__ import annotations

from llmops.tokenizer import Tokenizer

_CONTEXT_TOKENS = 5
_REPLACEMENT = "\ufffd"


class IncrementalDetokenizer:
    """Turns a growing list of output token ids into text, one safe piece at a time."""

    def __init__(self, tokenizer: Tokenizer, prompt_token_ids: list[int], skip_special_tokens: bool = True,
                 stop: list[str] | None = None) -> None:
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        context = prompt_token_ids[-_CONTEXT_TOKENS:]
        self.ids: list[int] = list(context)
        self.prefix_offset = 0
        self.read_offset = len(context)
        self.text = ""                      # all decoded output text (truncated at a stop string)
        self.stop = stop or []
        self.hold = max((len(s) for s in self.stop), default=1) - 1
        self.stop_reason: str | None = None  # the stop string that matched

    @property
    def stopped(self) -> bool:
        return self.stop_reason is not None

    def add_tokens(self, token_ids: list[int], final: bool = False) -> None:
        """Append newly generated tokens; `final` flushes text held for incomplete UTF-8."""
        if self.stopped:
            return
        self.ids.extend(token_ids)
        delta = self._decode_delta(final)
        if not delta:
            return
        before = len(self.text)
        self.text += delta
        self._check_stop(before)

    def visible_text(self, finished: bool) -> str:
        """Text safe to show now: all of it when finished, else minus the stop-string hold-back."""
        if finished or self.stopped or not self.hold:
            return self.text
        return self.text[:max(0, len(self.text) - self.hold)]

    def _decode_delta(self, final: bool) -> str:
        decode = self.tokenizer.decode
        prefix = decode(self.ids[self.prefix_offset:self.read_offset], self.skip_special_tokens)
        full = decode(self.ids[self.prefix_offset:], self.skip_special_tokens)
        if len(full) <= len(prefix) or (full.endswith(_REPLACEMENT) and not final):
            return ""
        if not full.startswith(prefix):  # the tokenizer re-spelled the boundary: keep what is new
            prefix = prefix[:_common_prefix(prefix, full)]
        self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
        return full[len(prefix):]

    def _check_stop(self, before: int) -> None:
        if not self.stop:
            return
        best: tuple[int, str] | None = None
        for s in self.stop:
            # A match must end inside the new text; it may start before it.
            idx = self.text.find(s, max(0, before - len(s) + 1))
            if idx != -1 and (best is None or idx < best[0]):
                best = (idx, s)
        if best is not None:
            self.text = self.text[:best[0]]
            self.stop_reason = best[1]


def _common_prefix(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n
