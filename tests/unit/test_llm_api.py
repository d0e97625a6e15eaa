"""The offline `LLM` API on the tiny byte-level model: prompt shapes, sampling settings, finish
reasons, stop tokens and strings, logprobs, and bad input rejected before the engine changes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from llmops import LLM, SamplingParams

GREEDY = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True)
PROMPTS = ["hello world", "The quick brown fox", "abc", "a longer prompt with several words in it"]
CHAT = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi there"}]


def make_llm(folder: str, **kwargs) -> LLM:
    args = dict(model=folder, dtype="float32", kv_cache_tokens=512, block_size=4)
    args.update(kwargs)
    return LLM(**args)


@pytest.fixture(scope="module")
def llm(tiny_folder) -> LLM:
    return make_llm(tiny_folder)


def greedy_tokens(llm: LLM, prompt, max_tokens: int = 16) -> list[int]:
    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
    return llm.generate(prompt, params)[0].outputs[0].token_ids


def assert_idle(llm: LLM) -> None:
    stats = llm.engine.stats()
    assert not llm.engine.has_unfinished_requests()
    assert stats.num_running == 0 and stats.num_waiting == 0 and stats.kv_blocks_used == 0


# ---- prompt shapes -----------------------------------------------------------------------------

def test_str_prompt(llm):
    [out] = llm.generate("hello world", GREEDY)
    tokenizer = llm.get_tokenizer()
    assert out.prompt == "hello world"
    assert out.prompt_token_ids == tokenizer.encode("hello world") == list(b"hello world")
    assert out.finished and len(out.outputs) == 1
    completion = out.outputs[0]
    assert completion.index == 0 and len(completion.token_ids) == 16
    assert completion.finish_reason == "length" and completion.stop_reason is None
    assert completion.logprobs is None


def test_list_of_str_prompts_in_order(llm):
    outs = llm.generate(PROMPTS, GREEDY)
    assert [o.prompt for o in outs] == PROMPTS
    assert [o.prompt_token_ids for o in outs] == [list(p.encode()) for p in PROMPTS]
    assert len({o.request_id for o in outs}) == len(PROMPTS)
    for prompt, out in zip(PROMPTS, outs):
        assert out.outputs[0].token_ids == greedy_tokens(llm, prompt)


def test_token_id_prompts(llm):
    ids = list(b"hello world")
    [single] = llm.generate(ids, GREEDY)
    assert single.prompt is None and single.prompt_token_ids == ids
    assert single.outputs[0].token_ids == greedy_tokens(llm, "hello world")
    batch = [list(p.encode()) for p in PROMPTS]
    outs = llm.generate(batch, GREEDY)
    assert [o.prompt_token_ids for o in outs] == batch
    assert [o.outputs[0].token_ids for o in outs] == [greedy_tokens(llm, p) for p in PROMPTS]
    # Special tokens and ids past the tokenizer's vocabulary (but inside the model's) are fine.
    [special] = llm.generate([[256, 72, 105, 299]], GREEDY)
    assert special.prompt_token_ids == [256, 72, 105, 299]


def test_one_sampling_params_per_prompt(llm):
    params = [SamplingParams(temperature=0, max_tokens=k, ignore_eos=True) for k in (3, 7, 1, 5)]
    outs = llm.generate(PROMPTS, params)
    assert [len(o.outputs[0].token_ids) for o in outs] == [3, 7, 1, 5]
    for prompt, out in zip(PROMPTS, outs):
        assert out.outputs[0].token_ids == greedy_tokens(llm, prompt)[:len(out.outputs[0].token_ids)]


def test_chat_applies_the_template(llm):
    tokenizer = llm.get_tokenizer()
    [out] = llm.chat(CHAT, GREEDY)
    expected = tokenizer.encode_chat(CHAT)
    assert out.prompt_token_ids == expected
    assert tokenizer.decode(expected, skip_special_tokens=False) == (
        "<s>system: be brief</s><s>user: hi there</s><s>assistant: ")
    assert out.outputs[0].token_ids == greedy_tokens(llm, expected)
    other = [{"role": "user", "content": "second"}]
    outs = llm.chat([CHAT, other], GREEDY)
    assert [o.prompt_token_ids for o in outs] == [expected, tokenizer.encode_chat(other)]
    [no_prompt] = llm.chat(CHAT, GREEDY, add_generation_prompt=False)
    assert no_prompt.prompt_token_ids == tokenizer.encode_chat(CHAT, add_generation_prompt=False)


# ---- n completions -----------------------------------------------------------------------------

def test_n_seeded_completions_are_deterministic(llm):
    params = SamplingParams(n=3, temperature=1.0, seed=7, max_tokens=10, ignore_eos=True)
    [first] = llm.generate("hello", params)
    [again] = llm.generate("hello", params)
    assert [c.index for c in first.outputs] == [0, 1, 2]
    tokens = [c.token_ids for c in first.outputs]
    assert tokens == [c.token_ids for c in again.outputs]
    assert all(len(t) == 10 for t in tokens)
    assert len({tuple(t) for t in tokens}) > 1          # each completion has its own seed
    assert first.finished and all(c.finish_reason == "length" for c in first.outputs)


def test_greedy_n2_gives_identical_completions(llm):
    [out] = llm.generate("hello", SamplingParams(n=2, temperature=0, max_tokens=12, ignore_eos=True))
    assert [c.index for c in out.outputs] == [0, 1]
    assert out.outputs[0].token_ids == out.outputs[1].token_ids == greedy_tokens(llm, "hello", 12)
    assert out.outputs[0].text == out.outputs[1].text


# ---- finish reasons ----------------------------------------------------------------------------

def test_finish_length_at_max_tokens(llm):
    for k in (1, 2, 9):
        [out] = llm.generate("abc", SamplingParams(temperature=0, max_tokens=k, ignore_eos=True))
        assert len(out.outputs[0].token_ids) == k
        assert out.outputs[0].finish_reason == "length"


def test_stop_token_id(llm):
    full = greedy_tokens(llm, "hello world", 16)
    stop_token = full[3]
    cut = full.index(stop_token) + 1             # the first occurrence stops it (position 3 or earlier)
    [out] = llm.generate("hello world", SamplingParams(temperature=0, max_tokens=16, ignore_eos=True,
                                                       stop_token_ids=[stop_token]))
    completion = out.outputs[0]
    assert completion.token_ids == full[:cut]
    assert completion.token_ids[-1] == stop_token            # the stop token is kept in token_ids
    assert completion.finish_reason == "stop" and completion.stop_reason == stop_token


def test_eos_stops_unless_ignored(llm, tiny_folder, tmp_path):
    """A model whose config names the greedy 4th token as an extra EOS stops there."""
    full = greedy_tokens(llm, "hello world", 16)
    eos = full[3]
    folder = tmp_path / "eos-model"
    shutil.copytree(tiny_folder, folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["eos_token_id"] = [257, eos]
    (folder / "config.json").write_text(json.dumps(cfg))
    eos_llm = make_llm(str(folder))
    [stopped] = eos_llm.generate("hello world", SamplingParams(temperature=0, max_tokens=16))
    completion = stopped.outputs[0]
    assert completion.token_ids == full[:full.index(eos) + 1]
    assert completion.finish_reason == "stop" and completion.stop_reason is None
    [ignored] = eos_llm.generate("hello world", SamplingParams(temperature=0, max_tokens=16, ignore_eos=True))
    assert ignored.outputs[0].token_ids == full
    assert ignored.outputs[0].finish_reason == "length"
    # min_tokens holds EOS back: the greedy pick at that position changes, so the run goes on.
    [held] = eos_llm.generate("hello world", SamplingParams(temperature=0, max_tokens=16, min_tokens=8))
    assert len(held.outputs[0].token_ids) >= 8
    assert eos not in held.outputs[0].token_ids[:8]
    assert_idle(eos_llm)


def _printable_substring(text: str, length: int) -> tuple[int, str] | None:
    """A substring of printable ASCII in the middle of `text` (the byte model writes noise)."""
    for i in range(max(1, len(text) // 3), len(text) - length):
        piece = text[i:i + length]
        if all(c.isascii() and c.isprintable() for c in piece):
            return text.index(piece), piece
    return None


@pytest.mark.parametrize("length", [1, 2])
def test_stop_string_cuts_the_text(llm, length):
    found = None
    for prompt in PROMPTS + ["xyz", "0123456789", "stop strings"]:
        [full] = llm.generate(prompt, SamplingParams(temperature=0, max_tokens=32, ignore_eos=True))
        found = _printable_substring(full.outputs[0].text, length)
        if found is not None and found[0] > 0:
            break
    assert found is not None and found[0] > 0, "no printable substring in any greedy output"
    index, stop = found
    text, tokens = full.outputs[0].text, full.outputs[0].token_ids
    params = SamplingParams(temperature=0, max_tokens=32, ignore_eos=True, stop=[stop, "never-seen-stop"])
    [out] = llm.generate(prompt, params)
    completion = out.outputs[0]
    assert completion.text == text[:index]
    assert stop not in completion.text
    assert completion.finish_reason == "stop" and completion.stop_reason == stop
    assert completion.token_ids == tokens[:len(completion.token_ids)]      # stopped early, same tokens
    assert len(completion.token_ids) < len(tokens)
    assert stop in llm.get_tokenizer().decode(completion.token_ids)       # its tokens reach the stop string


def test_max_tokens_none_runs_to_the_context_limit(tiny_folder):
    small = make_llm(tiny_folder, max_model_len=64)
    assert small.engine.max_model_len == 64
    prompt = list(b"hello world")
    [out] = small.generate(prompt, SamplingParams(temperature=0, max_tokens=None, ignore_eos=True))
    assert len(out.prompt_token_ids) + len(out.outputs[0].token_ids) == 64
    assert out.outputs[0].finish_reason == "length"
    # max_tokens past the room left is capped by the context too.
    [capped] = small.generate(prompt, SamplingParams(temperature=0, max_tokens=1000, ignore_eos=True))
    assert capped.outputs[0].token_ids == out.outputs[0].token_ids
    # The longest prompt that fits leaves room for exactly one token.
    [edge] = small.generate([65] * 63, SamplingParams(temperature=0, max_tokens=None, ignore_eos=True))
    assert len(edge.outputs[0].token_ids) == 1 and edge.outputs[0].finish_reason == "length"
    assert_idle(small)


# ---- logprobs and text -------------------------------------------------------------------------

def test_logprobs_top3(llm):
    [out] = llm.generate(PROMPTS[1], SamplingParams(temperature=0, max_tokens=10, ignore_eos=True, logprobs=3))
    completion = out.outputs[0]
    assert completion.logprobs is not None and len(completion.logprobs) == len(completion.token_ids) == 10
    for token, position in zip(completion.token_ids, completion.logprobs):
        assert token in position and 3 <= len(position) <= 4
        assert position[token].rank == 1                       # greedy picks the best token
        assert sorted(lp.rank for t, lp in position.items() if t != token) == [2, 3][:len(position) - 1]
        assert all(lp.logprob <= 0 for lp in position.values())
        assert all(lp.decoded_token is not None for lp in position.values())
        assert position[token].logprob == max(lp.logprob for lp in position.values())
        assert position[token].decoded_token == llm.get_tokenizer().decode([token], skip_special_tokens=False)


def test_logprobs_of_a_sampled_token_carry_its_rank(llm):
    params = SamplingParams(temperature=1.5, seed=3, max_tokens=12, ignore_eos=True, logprobs=2)
    [out] = llm.generate(PROMPTS[0], params)
    completion = out.outputs[0]
    for token, position in zip(completion.token_ids, completion.logprobs):
        assert token in position and len(position) <= 3
        ranked_above = sum(1 for lp in position.values() if lp.logprob > position[token].logprob)
        assert position[token].rank >= ranked_above + 1


def test_logprobs_zero_gives_the_chosen_token_only(llm):
    [out] = llm.generate("abc", SamplingParams(temperature=0, max_tokens=5, ignore_eos=True, logprobs=0))
    for token, position in zip(out.outputs[0].token_ids, out.outputs[0].logprobs):
        assert list(position) == [token] and position[token].rank == 1


def test_logprobs_alone_equal_batched(llm):
    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True, logprobs=3)
    [alone] = llm.generate(PROMPTS[2], params)
    batch = llm.generate([PROMPTS[0], PROMPTS[2], PROMPTS[3]], params)
    a, b = alone.outputs[0], batch[1].outputs[0]
    assert a.token_ids == b.token_ids
    for pa, pb in zip(a.logprobs, b.logprobs):
        assert pa.keys() == pb.keys()
        va = torch.tensor([pa[t].logprob for t in sorted(pa)])
        vb = torch.tensor([pb[t].logprob for t in sorted(pa)])
        assert torch.allclose(va, vb, atol=1e-4, rtol=0)


def test_text_is_the_decoded_tokens(llm):
    tokenizer = llm.get_tokenizer()
    outs = llm.generate(PROMPTS + [CHAT[1]["content"]], SamplingParams(temperature=0, max_tokens=24,
                                                                      ignore_eos=True))
    for out in outs:
        assert out.outputs[0].text == tokenizer.decode(out.outputs[0].token_ids)
    seeded = llm.generate(PROMPTS, SamplingParams(temperature=1.0, seed=11, max_tokens=24, ignore_eos=True))
    for out in seeded:
        assert out.outputs[0].text == tokenizer.decode(out.outputs[0].token_ids)


def test_engine_is_idle_after_everything_finishes(llm):
    params = [SamplingParams(n=2, temperature=0.8, seed=1, max_tokens=9, ignore_eos=True),
              SamplingParams(temperature=0, max_tokens=5, logprobs=2, ignore_eos=True),
              SamplingParams(temperature=0, max_tokens=20, stop=["a", "e", "o"], ignore_eos=True),
              SamplingParams(temperature=0, max_tokens=3)]
    outs = llm.generate(PROMPTS, params)
    assert all(o.finished for o in outs)
    stats = llm.engine.stats()
    assert stats.num_running == 0 and stats.num_waiting == 0 and stats.kv_blocks_used == 0
    assert stats.kv_usage == 0.0 and stats.num_generation_tokens > 0
    assert not llm.engine.has_unfinished_requests()


# ---- bad input: a clear ValueError, raised before the engine changes -----------------------------

def _expect_rejected(llm: LLM, call, error=ValueError, match: str | None = None) -> None:
    before = llm.engine.stats()
    with pytest.raises(error, match=match):
        call()
    assert llm.engine.stats() == before
    assert not llm.engine.has_unfinished_requests()
    [after] = llm.generate("ok", SamplingParams(temperature=0, max_tokens=2))   # still serves
    assert after.finished and len(after.outputs[0].token_ids) >= 1


@pytest.mark.parametrize("prompt, match", [
    ("", "empty"),
    ([], "empty"),
    ([[]], "empty"),
    ([10 ** 6], "1000000"),
    ([-1], "-1"),
    ([1, 2, 300], "300"),
    ([[1, 2], [3, 10 ** 6]], "1000000"),
    (3.5, "float"),
    ({"prompt": "hi"}, "dict"),
    ([3.5], "float"),
    ([{"prompt": "hi"}], "dict"),
    (None, "NoneType"),
    ([[1, 2.5]], "2.5"),
])
def test_bad_prompt_is_rejected(llm, prompt, match):
    _expect_rejected(llm, lambda: llm.generate(prompt, GREEDY), match=match)


def test_prompt_longer_than_the_context(llm):
    limit = llm.engine.max_model_len
    assert limit == 512
    _expect_rejected(llm, lambda: llm.generate([65] * limit, GREEDY), match=rf"{limit}.*{limit}")
    _expect_rejected(llm, lambda: llm.generate("x" * 600, GREEDY), match=r"600.*512")
    [fits] = llm.generate([65] * (limit - 1), SamplingParams(temperature=0, max_tokens=10, ignore_eos=True))
    assert len(fits.outputs[0].token_ids) == 1


@pytest.mark.parametrize("kwargs, field", [
    (dict(max_tokens=-1), "max_tokens"),
    (dict(max_tokens=0), "max_tokens"),
    (dict(temperature=-0.5), "temperature"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.5), "top_p"),
    (dict(n=0), "n"),
    (dict(logprobs=-1), "logprobs"),
    (dict(stop=[""]), "stop"),
    (dict(stop_token_ids=[-1]), "stop_token_ids"),
])
def test_bad_sampling_params_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        SamplingParams(**kwargs)


def test_wrong_number_of_sampling_params(llm):
    _expect_rejected(llm, lambda: llm.generate(["a", "b", "c"], [GREEDY, GREEDY]), match="2 sampling params for 3")


def test_sampling_params_of_the_wrong_type(llm):
    _expect_rejected(llm, lambda: llm.generate(["a", "b"], [GREEDY, {"temperature": 0}]), match="SamplingParams")


def test_non_iterable_sampling_params_is_a_value_error(llm):
    _expect_rejected(llm, lambda: llm.generate("a", 5), match="SamplingParams")


def test_bad_prompt_in_the_middle_of_a_list_runs_nothing(llm):
    _expect_rejected(llm, lambda: llm.generate(["fine", "", "also fine"], GREEDY), match="empty")
    _expect_rejected(llm, lambda: llm.generate([[1, 2], [3, 10 ** 6], [4, 5]], GREEDY), match="1000000")
    _expect_rejected(llm, lambda: llm.generate(["fine", "x" * 600], GREEDY), match="600")


@pytest.mark.parametrize("messages, match", [
    ([], "empty"),
    ([{"content": "no role"}], "role"),
    ([{"role": "user", "content": 5}], "content"),
    ([[{"role": "user", "content": "ok"}], [{"role": "user"}]], "content"),
])
def test_bad_chat_messages(llm, messages, match):
    _expect_rejected(llm, lambda: llm.chat(messages, GREEDY), match=match)


def test_unknown_model_path():
    with pytest.raises(FileNotFoundError, match="does-not-exist"):
        LLM(model="/nonexistent/does-not-exist", dtype="float32", kv_cache_tokens=64, block_size=4)


def _corrupt_copy(tiny_folder: str, tmp_path: Path, name: str, content: str) -> str:
    folder = tmp_path / "corrupt"
    shutil.copytree(tiny_folder, folder)
    (folder / name).write_text(content)
    return str(folder)


@pytest.mark.parametrize("name, content", [
    ("config.json", "{not json"),
    ("config.json", json.dumps({"model_type": "llama"})),       # valid JSON, required fields missing
    ("config.json", "[]"), ("config.json", "null"), ("config.json", "3"),   # JSON, but not an object
    ("tokenizer.json", "{not json"),
    ("tokenizer_config.json", "{not json"), ("tokenizer_config.json", "[]"), ("tokenizer_config.json", "null"),
])
def test_corrupt_model_files_name_the_file(tiny_folder, tmp_path, name, content):
    folder = _corrupt_copy(tiny_folder, tmp_path, name, content)
    with pytest.raises(ValueError, match=name.replace(".", r"\.")):
        make_llm(folder)


def test_corrupt_weights(tiny_folder, tmp_path):
    folder = tmp_path / "corrupt"
    shutil.copytree(tiny_folder, folder)
    (folder / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="model.safetensors"):
        make_llm(str(folder))


def test_bad_engine_config_names_the_field(tiny_folder):
    with pytest.raises(ValueError, match="dtype"):
        make_llm(tiny_folder, dtype="float16")
    with pytest.raises(ValueError, match="max_model_len"):
        make_llm(tiny_folder, max_model_len=10 ** 6)
    with pytest.raises((ValueError, TypeError), match="no_such_option"):
        make_llm(tiny_folder, no_such_option=1)


# ---- the engine directly -----------------------------------------------------------------------

def _drain(engine) -> dict[str, list]:
    outputs: dict[str, list] = {}
    for _ in range(1000):
        if not engine.has_unfinished_requests():
            break
        for out in engine.step():
            outputs.setdefault(out.request_id, []).append(out)
    assert not engine.has_unfinished_requests()
    return outputs


def test_duplicate_request_id_on_add_request(llm):
    engine = llm.engine
    params = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)
    assert engine.add_request("first", params, request_id="dup") == "dup"
    before = engine.stats()
    with pytest.raises(ValueError, match="dup"):
        engine.add_request("second", params, request_id="dup")
    assert engine.stats() == before
    outputs = _drain(engine)
    assert list(outputs) == ["dup"]
    finished = [o for o in outputs["dup"] if o.finished]
    assert len(finished) == 1 and finished[0].prompt == "first"
    assert finished[0].outputs[0].token_ids == greedy_tokens(llm, "first", 4)
    # Once finished, the id is free again.
    engine.add_request("again", params, request_id="dup")
    assert [o.finished for o in _drain(engine)["dup"]][-1]
    assert_idle(llm)


@pytest.mark.parametrize("request_id", ["", 5])
def test_bad_request_id(llm, request_id):
    _expect_rejected(llm, lambda: llm.engine.add_request("hi", GREEDY, request_id=request_id),
                     match="request_id")


def test_abort_on_the_engine_frees_everything(llm):
    engine = llm.engine
    engine.add_request("abort me", SamplingParams(max_tokens=100, ignore_eos=True), request_id="gone")
    engine.step()
    assert engine.stats().kv_blocks_used > 0
    assert engine.abort("gone").outputs[0].finish_reason == "abort"
    assert engine.abort("gone") is None
    assert engine.abort("never-existed") is None
    assert_idle(llm)


def test_request_id_that_collides_with_a_child_id(tiny_folder):
    own = make_llm(tiny_folder)
    engine = own.engine
    params = SamplingParams(n=2, temperature=0, max_tokens=4, ignore_eos=True)
    engine.add_request("hello", params, request_id="grp")
    with pytest.raises(ValueError):
        engine.add_request("hello", SamplingParams(temperature=0, max_tokens=4), request_id="grp-0")
    outputs = _drain(engine)
    [done] = [o for o in outputs["grp"] if o.finished]
    tokenizer = engine.tokenizer
    for completion in done.outputs:
        assert completion.text == tokenizer.decode(completion.token_ids)
    engine.add_request("hello", SamplingParams(temperature=0, max_tokens=4), request_id="grp-0")
    _drain(engine)
