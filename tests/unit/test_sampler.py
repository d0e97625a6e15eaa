"""sample(logits, SamplingBatch): greedy, seeded sampling, truncation, temperature, penalties,
suppression and logprobs. Random draws use fixed seeds, so every check is deterministic."""

from __future__ import annotations

import math

import pytest
import torch

from llmops.engine.sampler import SamplingBatch, sample

N = 4000                  # draws for the distribution checks


def gen(seed: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def batch(rows: int, temperature: float = 1.0, seed: int = 0, **kw) -> SamplingBatch:
    """`rows` rows with the same settings, all drawing from one seeded generator."""
    g = gen(seed)
    return SamplingBatch(temperature=torch.full((rows,), temperature), generators=[g] * rows, **kw)


def draws(probs: list[float], n: int = N, **kw) -> torch.Tensor:
    """n samples from the distribution `probs` (as logits = log probs)."""
    logits = torch.tensor(probs).log().expand(n, -1).contiguous()
    return sample(logits, batch(n, **kw)).token_ids


def frequencies(tokens: torch.Tensor, vocab: int) -> torch.Tensor:
    return torch.bincount(tokens, minlength=vocab).double() / len(tokens)


def chi_square(tokens: torch.Tensor, expected: torch.Tensor) -> float:
    counts = torch.bincount(tokens, minlength=len(expected)).double()
    exp = expected.double() * len(tokens)
    keep = exp > 0
    return float(((counts[keep] - exp[keep]) ** 2 / exp[keep]).sum())


def support(tokens: torch.Tensor) -> set[int]:
    return set(tokens.unique().tolist())


# ---- greedy and seeding ---------------------------------------------------------------------

def test_greedy_is_argmax_and_does_not_touch_the_input():
    logits = torch.randn(5, 50, generator=gen(1))
    before = logits.clone()
    out = sample(logits, batch(5, temperature=0.0))
    assert out.token_ids.tolist() == logits.argmax(dim=-1).tolist()
    assert out.logprobs is None and out.ranks is None
    assert torch.equal(logits, before)


def test_greedy_rows_stay_greedy_in_a_mixed_batch():
    logits = torch.randn(4, 50, generator=gen(2))
    b = SamplingBatch(temperature=torch.tensor([0.0, 1.0, 0.0, 1.5]), generators=[gen(i) for i in range(4)])
    out = sample(logits, b)
    argmax = logits.argmax(dim=-1)
    assert out.token_ids[0] == argmax[0] and out.token_ids[2] == argmax[2]


def draw_sequence(logits_row: torch.Tensor, seed: int, others: int, position: int, steps: int = 20,
                  **row_settings) -> list[int]:
    """Sample `steps` times for one row placed at `position` among `others` unrelated rows."""
    rows = others + 1
    filler = torch.randn(rows, logits_row.shape[0], generator=gen(99))
    logits = filler.clone()
    logits[position] = logits_row
    generators = [gen(1000 + i) for i in range(rows)]
    generators[position] = gen(seed)
    temperature = torch.tensor([0.7 if i % 2 else 0.0 for i in range(rows)])
    temperature[position] = 1.0
    top_k = None
    if row_settings.get("top_k_others"):
        top_k = torch.full((rows,), 3)
        top_k[position] = logits_row.shape[0]        # "keep all" for our row
    out = []
    for _ in range(steps):
        b = SamplingBatch(temperature=temperature, generators=generators, top_k=top_k)
        out.append(int(sample(logits, b).token_ids[position]))
    return out


def test_same_seed_gives_same_samples_alone_and_batched_in_any_position():
    row = torch.randn(64, generator=gen(3)) * 0.5        # flat enough that draws vary
    alone = draw_sequence(row, seed=1234, others=0, position=0)
    assert len(set(alone)) > 3                           # it really is random
    assert draw_sequence(row, seed=1234, others=0, position=0) == alone
    assert draw_sequence(row, seed=1234, others=3, position=2) == alone
    assert draw_sequence(row, seed=1234, others=6, position=0) == alone
    assert draw_sequence(row, seed=1234, others=5, position=5, top_k_others=True) == alone
    assert draw_sequence(row, seed=4321, others=0, position=0) != alone


def test_top_k_one_equals_greedy():
    logits = torch.randn(8, 40, generator=gen(4))
    for seed in range(5):
        b = SamplingBatch(temperature=torch.full((8,), 1.3), generators=[gen(seed)] * 8,
                          top_k=torch.ones(8, dtype=torch.long))
        assert sample(logits, b).token_ids.tolist() == logits.argmax(dim=-1).tolist()


# ---- truncation -----------------------------------------------------------------------------

PROBS = [0.05, 0.3, 0.15, 0.5]          # sorted: 3 (0.5), 1 (0.3), 2 (0.15), 0 (0.05)


def test_top_k_restricts_support_and_renormalizes():
    tokens = draws(PROBS, seed=5, top_k=torch.full((N,), 2))
    assert support(tokens) == {1, 3}
    expected = torch.tensor([0.0, 0.3, 0.0, 0.5]) / 0.8
    assert chi_square(tokens, expected) < 10.8      # df=1, p=0.001


def test_top_k_per_row():
    logits = torch.tensor(PROBS).log().expand(N, -1).contiguous()
    k = torch.tensor([1, 3] * (N // 2))
    tokens = sample(logits, batch(N, seed=6, top_k=k)).token_ids
    assert support(tokens[0::2]) == {3}
    assert support(tokens[1::2]) == {1, 2, 3}


@pytest.mark.parametrize("top_p, allowed", [(0.3, {3}), (0.7, {3, 1}), (0.85, {3, 1, 2}), (0.9, {3, 1, 2}),
                                            (1.0, {3, 1, 2, 0})])
def test_top_p_keeps_the_smallest_set_reaching_mass_p(top_p, allowed):
    tokens = draws(PROBS, seed=7, top_p=torch.full((N,), top_p))
    assert support(tokens) == allowed


def test_top_p_renormalizes_within_the_nucleus():
    tokens = draws(PROBS, seed=8, top_p=torch.full((N,), 0.7))
    expected = torch.tensor([0.0, 0.3, 0.0, 0.5]) / 0.8
    assert chi_square(tokens, expected) < 10.8


@pytest.mark.parametrize("min_p, allowed", [(0.0, {0, 1, 2, 3}), (0.25, {1, 2, 3}), (0.35, {1, 3}),
                                            (0.9, {3})])
def test_min_p_drops_tokens_below_a_share_of_the_best(min_p, allowed):
    tokens = draws(PROBS, seed=9, min_p=torch.full((N,), min_p))
    assert support(tokens) == allowed


def test_top_k_then_top_p_apply_to_the_truncated_distribution():
    # top_k=3 leaves {3: .5, 1: .3, 2: .15} -> renormalized {.526, .316, .158}; top_p .82 -> {3, 1}
    # (on the untruncated distribution the mass before token 2 would be .8 < .82, keeping it)
    tokens = draws(PROBS, seed=10, top_k=torch.full((N,), 3), top_p=torch.full((N,), 0.82))
    assert support(tokens) == {1, 3}


# ---- temperature ----------------------------------------------------------------------------

@pytest.mark.parametrize("temperature", [1.0, 0.5, 2.0])
def test_temperature_matches_softmax_of_scaled_logits(temperature):
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0, 0.5])
    tokens = sample(logits.expand(N, -1).contiguous(), batch(N, temperature=temperature, seed=11)).token_ids
    expected = torch.softmax(logits / temperature, dim=-1)
    assert chi_square(tokens, expected) < 18.5        # df=4, p=0.001
    assert (frequencies(tokens, 5) - expected.double()).abs().max() < 0.03


def test_lower_temperature_concentrates_mass():
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0])
    hot = frequencies(sample(logits.expand(N, -1).contiguous(), batch(N, 2.0, seed=12)).token_ids, 4)
    cold = frequencies(sample(logits.expand(N, -1).contiguous(), batch(N, 0.25, seed=12)).token_ids, 4)
    assert cold[0] > 0.95 > hot[0]


# ---- penalties and suppression --------------------------------------------------------------

def greedy_with(logits: list[list[float]], **kw) -> list[int]:
    t = torch.tensor(logits)
    b = SamplingBatch(temperature=torch.zeros(len(logits)), generators=[gen(0)] * len(logits), **kw)
    return sample(t, b).token_ids.tolist()


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits():
    seen = torch.tensor([[True, False]] * 4)
    logits = [[2.0, 0.99], [2.0, 1.01], [-1.0, -1.99], [-1.0, -2.01]]
    pen = torch.full((4,), 2.0)
    # 2.0 / 2 = 1.0 vs 0.99 | vs 1.01 | -1.0 * 2 = -2.0 vs -1.99 | vs -2.01
    assert greedy_with(logits, repetition_penalty=pen, seen_mask=seen) == [0, 1, 1, 0]
    assert greedy_with(logits) == [0, 0, 0, 0]


def test_repetition_penalty_only_touches_seen_tokens_and_its_own_row():
    logits = [[2.0, 1.5, 1.2], [2.0, 1.5, 1.2]]
    seen = torch.tensor([[True, True, False], [True, True, False]])
    pen = torch.tensor([2.0, 1.0])
    assert greedy_with(logits, repetition_penalty=pen, seen_mask=seen) == [2, 0]


def test_presence_penalty_subtracts_once_frequency_penalty_per_occurrence():
    counts = torch.tensor([[3.0, 0.0]] * 4)
    logits = [[1.0, 0.6]] * 4
    presence = torch.tensor([0.5, 0.3, 0.0, 0.0])
    frequency = torch.tensor([0.0, 0.0, 0.15, 0.1])
    # 1 - .5 = .5 < .6 | 1 - .3 = .7 | 1 - 3 * .15 = .55 < .6 | 1 - 3 * .1 = .7
    assert greedy_with(logits, output_counts=counts, presence_penalty=presence,
                       frequency_penalty=frequency) == [1, 0, 1, 0]


def test_negative_presence_penalty_encourages_seen_tokens():
    counts = torch.tensor([[0.0, 1.0]])
    assert greedy_with([[1.0, 0.8]], output_counts=counts, presence_penalty=torch.tensor([-0.3]),
                       frequency_penalty=torch.tensor([0.0])) == [1]


def test_suppress_bans_tokens_for_its_row_only():
    logits = [[5.0, 1.0, 0.0], [5.0, 1.0, 0.0]]
    assert greedy_with(logits, suppress=[(0, [0])]) == [1, 0]
    assert greedy_with(logits, suppress=[(0, [0, 1]), (1, [1])]) == [2, 0]


def test_suppressed_tokens_are_never_sampled():
    tokens = draws([0.7, 0.1, 0.1, 0.1], seed=13, suppress=[(i, [0]) for i in range(N)])
    assert support(tokens) == {1, 2, 3}


# ---- logprobs -------------------------------------------------------------------------------

def test_logprobs_of_the_chosen_token_and_the_top_k():
    logits = torch.randn(3, 30, generator=gen(14))
    raw = torch.log_softmax(logits, dim=-1)
    second = logits.topk(2, dim=-1).indices[:, 1]
    # Row 0 greedy (rank 1); row 1 has its best token suppressed (rank 2); row 2 is greedy too.
    b = SamplingBatch(temperature=torch.zeros(3), generators=[gen(0)] * 3, num_logprobs=4,
                      suppress=[(1, [int(logits[1].argmax())])])
    out = sample(logits, b)
    assert out.token_ids[1] == second[1]
    assert out.ranks.tolist() == [1, 2, 1]
    assert out.logprobs.shape == (3, 5) and out.logprob_ids.shape == (3, 5)
    assert out.logprob_ids[:, 0].tolist() == out.token_ids.tolist()
    torch.testing.assert_close(out.logprobs[:, 0], raw.gather(1, out.token_ids.unsqueeze(1)).squeeze(1))
    top = raw.topk(4, dim=-1)
    assert out.logprob_ids[:, 1:].tolist() == top.indices.tolist()
    torch.testing.assert_close(out.logprobs[:, 1:], top.values)
    assert (out.logprobs[:, 1:].diff(dim=-1) <= 0).all()          # best first


def test_logprobs_are_of_the_raw_distribution_not_the_penalized_one():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    b = SamplingBatch(temperature=torch.tensor([0.0]), generators=[gen(0)], num_logprobs=0,
                      repetition_penalty=torch.tensor([10.0]), seen_mask=torch.tensor([[True, False, False, False]]))
    out = sample(logits, b)
    assert out.token_ids.tolist() == [1]
    assert out.ranks.tolist() == [2]
    assert out.logprobs.shape == (1, 1)
    assert out.logprobs[0, 0].item() == pytest.approx(torch.log_softmax(logits, -1)[0, 1].item())


def test_rank_of_a_random_draw_counts_better_tokens():
    logits = torch.tensor(PROBS).log().expand(200, -1).contiguous()
    out = sample(logits, batch(200, seed=15, num_logprobs=0))
    rank_of = {3: 1, 1: 2, 2: 3, 0: 4}
    assert out.ranks.tolist() == [rank_of[t] for t in out.token_ids.tolist()]
    expected = [math.log(PROBS[t]) for t in out.token_ids.tolist()]
    torch.testing.assert_close(out.logprobs[:, 0], torch.tensor(expected), atol=1e-5, rtol=0)


def test_no_logprobs_unless_asked():
    out = sample(torch.randn(2, 10, generator=gen(16)), batch(2, temperature=0.0))
    assert out.logprobs is None and out.logprob_ids is None and out.ranks is None


def test_more_logprobs_than_vocab_returns_the_whole_vocab():
    logits = torch.randn(2, 6, generator=gen(17))
    out = sample(logits, SamplingBatch(temperature=torch.zeros(2), generators=[gen(0)] * 2, num_logprobs=10))
    assert out.logprob_ids.shape[1] <= 1 + 6
    assert sorted(out.logprob_ids[0, 1:].tolist()) == list(range(6))
