"""Beam search: exact stopping, and never worse than greedy or a narrower beam under its own score."""

import random

import pytest
import torch

from lmlab.config import ModelConfig
from lmlab.infer.beam import beam_search, hypothesis_score, length_penalty
from lmlab.infer.decoding import greedy_decode
from lmlab.model.build import build_model


def _random_case(seed: int):
    rng = random.Random(seed)
    torch.manual_seed(seed)
    cfg = ModelConfig(
        arch="seq2seq",
        vocab_size=rng.randint(5, 12),  # few tokens: <eos> competes at every step
        src_vocab_size=10,
        n_layer=1,
        d_model=16,
        n_head=2,
        init_std=rng.choice([0.3, 0.8, 1.5]),
        max_seq_len=16,
    )
    src = torch.randint(4, 10, (1, rng.randint(2, 6)))
    return build_model(cfg).eval(), src, rng.choice([0.0, 0.6, 1.0]), rng.randint(3, 10)


@pytest.mark.parametrize("block", range(4))
def test_beam_k_never_scores_below_greedy_or_beam_k_minus_1(block):
    for seed in range(block * 40, (block + 1) * 40):
        model, src, alpha, max_len = _random_case(seed)
        greedy = hypothesis_score(model, src, greedy_decode(model, src, max_len=max_len)[0], alpha)
        previous = greedy
        for k in range(1, 6):
            score = hypothesis_score(
                model, src, beam_search(model, src, beam=k, max_len=max_len, alpha=alpha)[0], alpha
            )
            assert score >= greedy - 1e-5, (seed, k, "below greedy")
            assert score >= previous - 1e-5, (seed, k, "below beam k-1")
            previous = score


def test_search_does_not_stop_while_a_live_beam_can_still_win():
    # Beam 4 at alpha 0: the returned hypothesis is the best finished one of an exhaustive search
    # whenever the vocabulary and length are small enough to enumerate.
    import itertools

    model, src, _, _ = _random_case(7)
    V, max_len = model.config.vocab_size, 3
    outputs = [[*p, 2] for n in range(max_len) for p in itertools.product(range(3, V), repeat=n)]
    outputs += [list(p) for p in itertools.product(range(3, V), repeat=max_len)]
    best = max(hypothesis_score(model, src, o, 0.0) for o in outputs)
    found = beam_search(model, src, beam=V**max_len, max_len=max_len, alpha=0.0, monotone=False)[0]
    assert hypothesis_score(model, src, found, 0.0) == pytest.approx(best, abs=1e-5)


def test_hypothesis_score_is_the_length_normalised_log_probability():
    model, src, _, _ = _random_case(3)
    out = [4, 5, 2]
    logp = model(src, torch.tensor([[1, 4, 5]])).logits[0].float().detach()
    logp[:, [0, 1]] = float("-inf")  # <pad> and <bos> are never outputs
    total = float(logp.log_softmax(-1)[torch.arange(3), torch.tensor(out)].sum())
    assert hypothesis_score(model, src, out, 0.6) == pytest.approx(total / length_penalty(3, 0.6), abs=1e-6)
