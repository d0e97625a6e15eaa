"""GGUF vocabulary -> a `tokenizers` tokenizer plus its tokenizer_config.json.

Two vocabulary kinds exist in GGUF files: "gpt2" (byte-level BPE: token strings are already
in the byte-to-unicode alphabet, merges are stored) and "llama" (SentencePiece BPE: pieces
with scores, byte-fallback tokens <0xNN>; merges are derived from the scores).
"""

from __future__ import annotations

import json
import warnings
from typing import Any

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

from llmops.models.gguf_file import GGUFFile

# llama.cpp token types (tokenizer.ggml.token_type)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                  r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

# tokenizer.ggml.pre -> pre-tokenizer family, grouped as llama.cpp groups them.
_DIGITS_THEN_GPT2 = ("smollm", "starcoder", "refact", "codeshell", "command-r", "exaone", "minerva-7b")
_LLAMA3 = ("llama3", "llama-bpe", "llama-v3", "falcon3", "pixtral")
_LLAMA3_KEEP_MERGES = ("dbrx", "smaug-bpe")
_QWEN2 = ("qwen2", "deepseek-r1-qwen", "stablelm2", "megrez")
_GPT2 = ("gpt2", "gpt-2", "default", "phi-2", "roberta-bpe", "jina-v2-code")


def build_tokenizer(gguf: GGUFFile, model_max_length: int) -> tuple[Tokenizer, dict[str, Any]]:
    """The tokenizer (tokenizer.json) and tokenizer_config.json contents for `gguf`'s vocabulary."""
    kind = gguf.require("tokenizer.ggml.model", str)
    tokens: list[str] = gguf.require("tokenizer.ggml.tokens", list)
    types: list[int] = gguf.get("tokenizer.ggml.token_type") or [NORMAL] * len(tokens)
    if len(types) != len(tokens):
        raise ValueError(f"tokenizer.ggml.token_type has {len(types)} entries for {len(tokens)} tokens")
    add_space_prefix = bool(gguf.get("tokenizer.ggml.add_space_prefix", kind == "llama"))
    try:
        if kind == "gpt2":
            pre = gguf.get("tokenizer.ggml.pre", "default")
            tokenizer = _byte_level_bpe(tokens, gguf.require("tokenizer.ggml.merges", list), pre)
            default_bos = pre in _LLAMA3
        elif kind == "llama":
            scores = gguf.require("tokenizer.ggml.scores", list)
            tokenizer = _sentencepiece_bpe(tokens, scores, _special_id(gguf, "unknown", tokens), add_space_prefix)
            default_bos = True
        else:
            raise ValueError(f"tokenizer.ggml.model {kind!r} is not supported; supported: gpt2, llama")
    except Exception as exc:  # tokenizers raises its own exception types for inconsistent vocabularies
        if isinstance(exc, ValueError):
            raise
        raise ValueError(f"{gguf.path}: cannot build the tokenizer: {exc}") from exc
    _add_special_tokens(tokenizer, tokens, types)
    config = _tokenizer_config(gguf, tokens, default_bos, model_max_length)
    tokenizer = _with_post_processor(tokenizer, tokens, config, gguf)
    return tokenizer, config


def _byte_level_bpe(tokens: list[str], merges: list[str], pre: str) -> Tokenizer:
    vocab = _vocab(tokens)
    pairs = _merge_pairs(merges, vocab)
    tokenizer = Tokenizer(models.BPE(vocab, pairs, fuse_unk=False, byte_fallback=False,
                                     ignore_merges=pre in _LLAMA3))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False)
    if pre in _DIGITS_THEN_GPT2:
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)])
    elif pre in _LLAMA3 or pre in _LLAMA3_KEEP_MERGES or pre in _QWEN2:
        pattern = QWEN2_PATTERN if pre in _QWEN2 else LLAMA3_PATTERN
        split = pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False)
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence([split, byte_level])
        if pre in _QWEN2:
            tokenizer.normalizer = normalizers.NFC()
    else:
        if pre not in _GPT2:
            warnings.warn(f"unknown GGUF pre-tokenizer {pre!r}; using the GPT-2 byte-level split", stacklevel=3)
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def _merge_pairs(merges: list[str], vocab: dict[str, int]) -> list[tuple[str, str]]:
    pairs: list[tuple[str, str]] = []
    for merge in merges:
        left, sep, right = merge.partition(" ")
        if not sep or not left or not right:
            raise ValueError(f"tokenizer.ggml.merges entry {merge!r} is not two space-separated tokens")
        pairs.append((left, right))
    # A merge can only yield a token the vocabulary spells in the byte alphabet; user-defined
    # tokens stored as raw text (e.g. runs of spaces) are matched whole before BPE runs instead.
    kept = [(l, r) for l, r in pairs if l in vocab and r in vocab and l + r in vocab]
    if len(kept) != len(pairs):
        warnings.warn(f"dropped {len(pairs) - len(kept)} GGUF merges that yield tokens outside the vocabulary",
                      stacklevel=4)
    return kept


def _sentencepiece_bpe(tokens: list[str], scores: list[float], unk_id: int | None,
                       add_space_prefix: bool) -> Tokenizer:
    if len(scores) != len(tokens):
        raise ValueError(f"tokenizer.ggml.scores has {len(scores)} entries for {len(tokens)} tokens")
    vocab = _vocab(tokens)
    unk = tokens[unk_id] if unk_id is not None else None
    tokenizer = Tokenizer(models.BPE(vocab, _merges_from_scores(vocab, tokens, scores), unk_token=unk,
                                     fuse_unk=True, byte_fallback=True))
    replace = normalizers.Replace(" ", "\u2581")
    steps = [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
    if add_space_prefix:
        tokenizer.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), replace])
        steps.append(decoders.Strip(" ", 1, 0))
    else:
        tokenizer.normalizer = replace
    tokenizer.decoder = decoders.Sequence(steps)
    return tokenizer


def _merges_from_scores(vocab: dict[str, int], tokens: list[str],
                        scores: list[float]) -> list[tuple[str, str]]:
    """SentencePiece keeps no merges: every split of a piece into two known pieces is a merge,
    ranked by the merged piece's score, then by the parts' lengths (higher first), ties kept in
    vocabulary order -- the same order transformers derives, so both tokenize alike."""
    ranked: list[tuple[float, str, str]] = []
    for piece, score in zip(tokens, scores):
        splits = [(piece[:i], piece[i:]) for i in range(1, len(piece))]
        found = sorted(((l, r) for l, r in splits if l in vocab and r in vocab),
                       key=lambda lr: (vocab[lr[0]], vocab[lr[1]]))
        ranked.extend((float(score), left, right) for left, right in found)
    ranked.sort(key=lambda m: (m[0], len(m[1]), len(m[2])), reverse=True)  # stable: ties keep order
    return [(left, right) for _, left, right in ranked]


def _vocab(tokens: list[str]) -> dict[str, int]:
    vocab: dict[str, int] = {}
    for i, token in enumerate(tokens):
        vocab.setdefault(token, i)  # a duplicated string keeps its first id, as llama.cpp does
    return vocab


def _add_special_tokens(tokenizer: Tokenizer, tokens: list[str], types: list[int]) -> None:
    # Control/unknown tokens are special (never split, skippable on decode); user-defined ones
    # are matched whole in raw text but decode as ordinary text.
    special = [AddedToken(t, special=True, normalized=False) for t, k in zip(tokens, types) if k in (UNKNOWN, CONTROL)]
    plain = [AddedToken(t, special=False, normalized=False) for t, k in zip(tokens, types) if k == USER_DEFINED]
    tokenizer.add_special_tokens(special)
    tokenizer.add_tokens(plain)


def _special_id(gguf: GGUFFile, role: str, tokens: list[str]) -> int | None:
    value = gguf.get(f"tokenizer.ggml.{role}_token_id")
    if value is None:
        return None
    if not isinstance(value, int) or not 0 <= value < len(tokens):
        raise ValueError(f"tokenizer.ggml.{role}_token_id {value!r} is outside the vocabulary of {len(tokens)}")
    return value


def _tokenizer_config(gguf: GGUFFile, tokens: list[str], default_bos: bool,
                      model_max_length: int) -> dict[str, Any]:
    config: dict[str, Any] = {"tokenizer_class": "PreTrainedTokenizerFast"}
    for role, key in (("bos", "bos"), ("eos", "eos"), ("unknown", "unk"), ("padding", "pad")):
        token_id = _special_id(gguf, role, tokens)
        config[f"{key}_token"] = tokens[token_id] if token_id is not None else None
    config["add_bos_token"] = bool(gguf.get("tokenizer.ggml.add_bos_token", default_bos))
    config["add_eos_token"] = bool(gguf.get("tokenizer.ggml.add_eos_token", False))
    config["model_max_length"] = model_max_length
    config["clean_up_tokenization_spaces"] = False
    template = gguf.get("tokenizer.chat_template")
    if template is not None:
        config["chat_template"] = template
    return config


def _with_post_processor(tokenizer: Tokenizer, tokens: list[str], config: dict[str, Any],
                         gguf: GGUFFile) -> Tokenizer:
    """Add BOS/EOS on encode exactly when tokenizer_config says so (built as JSON: token
    strings may contain ':' which the template-string syntax cannot express)."""
    edges: list[tuple[str, int]] = []
    for key, role in (("bos", "bos"), ("eos", "eos")):
        token_id = _special_id(gguf, role, tokens)
        if config[f"add_{key}_token"] and token_id is not None:
            edges.append((key, token_id))
    data = json.loads(tokenizer.to_str())
    if not edges:
        data["post_processor"] = None
        return Tokenizer.from_str(json.dumps(data))

    def piece(kind: str, ident: str, type_id: int) -> dict[str, Any]:
        return {kind: {"id": ident, "type_id": type_id}}

    bos = [piece("SpecialToken", tokens[i], 0) for k, i in edges if k == "bos"]
    eos = [piece("SpecialToken", tokens[i], 0) for k, i in edges if k == "eos"]
    single = bos + [piece("Sequence", "A", 0)] + eos
    pair_b = [{"SpecialToken": {**p["SpecialToken"], "type_id": 1}} for p in bos]
    pair = single + pair_b + [piece("Sequence", "B", 1)] + [
        {"SpecialToken": {**p["SpecialToken"], "type_id": 1}} for p in eos]
    specials = {tokens[i]: {"id": tokens[i], "ids": [i], "tokens": [tokens[i]]} for _, i in edges}
    data["post_processor"] = {"type": "TemplateProcessing", "single": single, "pair": pair,
                              "special_tokens": specials}
    return Tokenizer.from_str(json.dumps(data))
