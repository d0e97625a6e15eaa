"""IncrementalDetokenizer with a byte-level tokenizer (token id == byte value): UTF-8 safety,
stop strings across token boundaries, hold-back while running."""

from __future__ import annotations

import pytest

from llmops.detokenizer import IncrementalDetokenizer
from llmops.tokenizer import Tokenizer
from tests.factories import BOS_ID, EOS_ID, write_byte_tokenizer

REPLACEMENT = "\ufffd"


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> Tokenizer:
    folder = tmp_path_factory.mktemp("byte-tokenizer")
    write_byte_tokenizer(folder)
    return Tokenizer.from_folder(folder)


def byte_ids(text: str) -> list[int]:
    return list(text.encode("utf-8"))


def detok(tokenizer, prompt: str = "Q: ", stop: list[str] | None = None, **kw) -> IncrementalDetokenizer:
    return IncrementalDetokenizer(tokenizer, byte_ids(prompt), stop=stop, **kw)


def feed(d: IncrementalDetokenizer, ids: list[int], chunk: int = 1) -> list[tuple[str, str]]:
    """Add ids `chunk` at a time; returns (text, visible_text while running) after each add."""
    seen = []
    for i in range(0, len(ids), chunk):
        d.add_tokens(ids[i:i + chunk])
        seen.append((d.text, d.visible_text(finished=False)))
    return seen


def test_byte_tokenizer_round_trips(tokenizer):
    assert tokenizer.encode("héllo €", add_special_tokens=False) == byte_ids("héllo €")
    assert tokenizer.decode(byte_ids("😀 日本")) == "😀 日本"


def test_ascii_text_streams_token_by_token(tokenizer):
    d = detok(tokenizer)
    seen = feed(d, byte_ids("hello world"))
    assert [t for t, _ in seen] == ["hello world"[:i] for i in range(1, 12)]
    assert d.visible_text(finished=False) == "hello world"      # no stop strings: nothing held


TEXTS = ["é", "€", "😀", "日本語", "naïve café 😀 costs €5", "a😀b€c日d"]


@pytest.mark.parametrize("chunk", [1, 2, 3, 5])
@pytest.mark.parametrize("text", TEXTS)
def test_multibyte_characters_are_never_emitted_partially(tokenizer, text, chunk):
    d = detok(tokenizer)
    seen = feed(d, byte_ids(text), chunk)
    for shown, visible in seen:
        assert REPLACEMENT not in shown and REPLACEMENT not in visible
        assert text.startswith(shown)
    assert d.text == text
    d.add_tokens([], final=True)
    assert d.text == text


def test_incomplete_character_waits_for_its_last_byte(tokenizer):
    d = detok(tokenizer)
    euro = byte_ids("€")                   # 3 bytes
    d.add_tokens(byte_ids("ab"))
    d.add_tokens(euro[:1])
    assert d.text == "ab"
    d.add_tokens(euro[1:2])
    assert d.text == "ab"
    d.add_tokens(euro[2:])
    assert d.text == "ab€"


def test_prompt_ending_in_multibyte_characters_does_not_leak_into_the_output(tokenizer):
    # The decode context (last prompt tokens) starts in the middle of a character.
    d = detok(tokenizer, prompt="€€€")
    feed(d, byte_ids("ok é"))
    assert d.text == "ok é"
    d = detok(tokenizer, prompt="")
    feed(d, byte_ids("😀!"))
    assert d.text == "😀!"


def test_final_flush_emits_text_held_behind_an_incomplete_character(tokenizer):
    d = detok(tokenizer)
    d.add_tokens(byte_ids("ok") + byte_ids("é")[:1])   # one call ending mid-character
    assert d.text == ""
    d.add_tokens([], final=True)
    assert d.text.startswith("ok")


def test_special_tokens_are_skipped_or_shown(tokenizer):
    d = detok(tokenizer)
    feed(d, byte_ids("hi") + [EOS_ID])
    assert d.text == "hi"
    d = detok(tokenizer, skip_special_tokens=False)
    feed(d, byte_ids("hi") + [BOS_ID, EOS_ID])
    assert d.text == "hi<s></s>"


# ---- stop strings ---------------------------------------------------------------------------

def test_stop_string_fed_byte_by_byte_is_found_and_excluded(tokenizer):
    d = detok(tokenizer, stop=["END"])
    feed(d, byte_ids("abcENDxyz"))
    assert d.text == "abc"
    assert d.stopped and d.stop_reason == "END"
    assert d.visible_text(finished=False) == "abc"


@pytest.mark.parametrize("chunk", [1, 2, 3, 4, 9])
def test_stop_string_across_any_token_split(tokenizer, chunk):
    d = detok(tokenizer, stop=["END"])
    feed(d, byte_ids("abcENDxyz"), chunk)
    assert (d.text, d.stop_reason) == ("abc", "END")


def test_stop_string_at_the_very_start(tokenizer):
    d = detok(tokenizer, stop=["END"])
    feed(d, byte_ids("ENDabc"))
    assert (d.text, d.stop_reason) == ("", "END")


def test_multibyte_stop_string(tokenizer):
    d = detok(tokenizer, stop=["é!"])
    feed(d, byte_ids("caé fé!x"))
    assert (d.text, d.stop_reason) == ("caé f", "é!")


def test_earliest_of_several_stop_strings_wins(tokenizer):
    d = detok(tokenizer, stop=["END", "STOP"])
    feed(d, byte_ids("xxSTOPyyEND"))
    assert (d.text, d.stop_reason) == ("xx", "STOP")
    # Both inside one added chunk: the earlier position wins, not the first in the list.
    d = detok(tokenizer, stop=["STOP", "END"])
    d.add_tokens(byte_ids("aEND bSTOP c"))
    assert (d.text, d.stop_reason) == ("a", "END")


def test_text_after_a_stop_is_ignored(tokenizer):
    d = detok(tokenizer, stop=["END"])
    feed(d, byte_ids("okEND"))
    feed(d, byte_ids("more END text"))
    d.add_tokens([], final=True)
    assert (d.text, d.stop_reason) == ("ok", "END")
    assert d.visible_text(finished=False) == "ok" and d.visible_text(finished=True) == "ok"


def test_hold_back_never_shows_a_stop_string_prefix_that_later_completes(tokenizer):
    d = detok(tokenizer, stop=["END"])
    seen = feed(d, byte_ids("abcENDx"))
    assert [v for _, v in seen] == ["", "", "a", "ab", "abc", "abc", "abc"]
    for _, visible in seen:
        assert "abc".startswith(visible)


def test_hold_back_is_released_when_the_stop_string_does_not_complete(tokenizer):
    d = detok(tokenizer, stop=["END"])
    seen = feed(d, byte_ids("abcENx"))
    assert [v for _, v in seen] == ["", "", "a", "ab", "abc", "abcE"]
    assert not d.stopped
    assert d.visible_text(finished=True) == "abcENx"


def test_hold_back_is_the_longest_stop_string_minus_one(tokenizer):
    d = detok(tokenizer, stop=["X", "LONGER"])
    feed(d, byte_ids("0123456789"))
    assert d.visible_text(finished=False) == "01234"
    assert d.visible_text(finished=True) == "0123456789"


def test_visible_text_grows_monotonically_with_multibyte_text_and_stops(tokenizer):
    text = "héllo wörld 😀 fin€ STOP tail"
    d = detok(tokenizer, stop=["STOP", "€ S"])
    shown = ""
    for _, visible in feed(d, byte_ids(text)):
        assert visible.startswith(shown) and REPLACEMENT not in visible
        shown = visible
    assert (d.text, d.stop_reason) == ("héllo wörld 😀 fin", "€ S")
    assert d.visible_text(finished=True).startswith(shown)
