"""SamplingParams: every bad value raises ValueError naming the field; good values pass."""

from __future__ import annotations

import math

import pytest

from llmops.engine.sampling_params import SamplingParams

BAD = [
    ("temperature", -0.1),
    ("temperature", math.nan),
    ("temperature", "1.0"),
    ("temperature", True),
    ("top_p", 0.0),
    ("top_p", -0.5),
    ("top_p", 1.01),
    ("top_p", math.nan),
    ("top_k", -2),
    ("top_k", 1.5),
    ("top_k", True),
    ("n", 0),
    ("n", -1),
    ("n", 2.0),
    ("n", True),
    ("max_tokens", 0),
    ("max_tokens", -5),
    ("max_tokens", 3.0),
    ("max_tokens", False),
    ("min_tokens", -1),
    ("min_p", -0.01),
    ("min_p", 1.5),
    ("repetition_penalty", 0.0),
    ("repetition_penalty", -1.0),
    ("presence_penalty", 2.5),
    ("presence_penalty", -2.01),
    ("frequency_penalty", 3.0),
    ("frequency_penalty", -2.5),
    ("logprobs", -1),
    ("logprobs", 1.0),
    ("logprobs", True),
    ("seed", 1.5),
    ("seed", "42"),
    ("seed", True),
    ("stop", ""),
    ("stop", ["ok", ""]),
    ("stop", ["ok", 3]),
    ("stop_token_ids", [-1]),
    ("stop_token_ids", [1, 2.0]),
    ("stop_token_ids", [True]),
]


@pytest.mark.parametrize("field, value", BAD, ids=[f"{f}={v!r}" for f, v in BAD])
def test_bad_value_raises_value_error_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        SamplingParams(**{field: value})


def test_min_tokens_above_max_tokens_names_both():
    with pytest.raises(ValueError, match=r"min_tokens \(5\).*max_tokens \(4\)"):
        SamplingParams(min_tokens=5, max_tokens=4)


def test_min_tokens_with_unbounded_max_tokens_is_fine():
    assert SamplingParams(min_tokens=100, max_tokens=None).min_tokens == 100


GOOD = [
    {},
    {"temperature": 0.0},
    {"temperature": 0},
    {"temperature": 5.0},
    {"top_p": 1.0},
    {"top_p": 1e-6},
    {"top_k": -1},
    {"top_k": 0},
    {"top_k": 1},
    {"min_p": 0.0},
    {"min_p": 1.0},
    {"presence_penalty": -2.0, "frequency_penalty": 2.0},
    {"repetition_penalty": 0.5},
    {"seed": 0},
    {"seed": -(2 ** 63)},
    {"max_tokens": None},
    {"max_tokens": 1, "min_tokens": 1},
    {"logprobs": 0},
    {"logprobs": 20},
    {"stop_token_ids": [0, 5]},
    {"stop": ["a", "bc"]},
    {"n": 3},
]


@pytest.mark.parametrize("kwargs", GOOD, ids=[repr(k) for k in GOOD])
def test_good_values_are_accepted(kwargs):
    params = SamplingParams(**kwargs)
    for name, value in kwargs.items():
        assert getattr(params, name) == value


def test_defaults():
    p = SamplingParams()
    assert (p.n, p.temperature, p.top_p, p.top_k, p.min_p) == (1, 1.0, 1.0, 0, 0.0)
    assert (p.max_tokens, p.min_tokens, p.seed, p.logprobs) == (16, 0, None, None)
    assert p.stop_strings == [] and not p.ignore_eos and p.skip_special_tokens
    assert not p.is_greedy


def test_stop_string_is_normalized_to_a_list():
    assert SamplingParams(stop="END").stop_strings == ["END"]
    assert SamplingParams(stop=["a", "b"]).stop_strings == ["a", "b"]
    assert SamplingParams(stop=("x",)).stop_strings == ["x"]
    assert SamplingParams(stop=None).stop_strings == []


def test_is_greedy_means_temperature_zero():
    assert SamplingParams(temperature=0.0).is_greedy
    assert not SamplingParams(temperature=0.01).is_greedy


def test_seed_beyond_64_bits_is_rejected_naming_the_field():
    with pytest.raises(ValueError, match="seed"):
        SamplingParams(seed=2 ** 64)


def test_scalar_stop_token_ids_raises_value_error():
    with pytest.raises(ValueError, match="stop_token_ids"):
        SamplingParams(stop_token_ids=5)


def test_non_string_stop_raises_value_error():
    with pytest.raises(ValueError, match="stop"):
        SamplingParams(stop=5)
