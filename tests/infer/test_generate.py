import pytest
import torch

from lmlab.model.build import build_model
from lmlab.model.generate import filter_logits, generate, left_pad
from lmlab.registry import ATTN, POS
from tests.conftest import tiny_cfg
from tests.helpers import SMALL_SPARSE, legal_grid


@pytest.mark.parametrize(("attn", "pos"), legal_grid(attn=ATTN.names(), pos=POS.names()))
def test_cached_generation_equals_uncached_greedy_and_sampled(attn, pos):
    torch.manual_seed(0)
    model = build_model(tiny_cfg("llama", attn=attn, pos=pos, n_kv_head=2, max_seq_len=24, window=8, **SMALL_SPARSE))
    prompt = torch.randint(0, 61, (2, 6))
    # 30 new tokens run past max_seq_len=24, so the sliding-context path is covered too.
    for kwargs in ({"temperature": 0}, {"temperature": 1.0, "top_k": 20, "top_p": 0.9, "seed": 3}):
        cached = generate(model, prompt, 30, use_cache=True, **kwargs)
        uncached = generate(model, prompt, 30, use_cache=False, **kwargs)
        assert torch.equal(cached, uncached)
        assert cached.shape == (2, 36)


@pytest.mark.parametrize(("attn", "pos"), legal_grid(attn=ATTN.names(), pos=POS.names()))
def test_left_padded_batch_equals_one_by_one(attn, pos):
    torch.manual_seed(0)
    model = build_model(tiny_cfg("llama", attn=attn, pos=pos, n_kv_head=2, max_seq_len=24, window=8, **SMALL_SPARSE))
    prompts = [[5, 1, 7, 3, 9, 2, 4, 8, 6], [11, 12], [3, 3, 3, 4, 40]]
    ids, pad = left_pad(prompts)
    assert pad.tolist() == [0, 7, 4]
    # 20 new tokens run the longest row past max_seq_len=24, so the sliding window sees padding leave.
    for kwargs in ({"temperature": 0}, {"temperature": 1.0, "top_p": 0.9, "seed": [3, 4, 5]}):
        batched, batched_lp = generate(model, ids, 20, pad=pad, return_logprobs=True, **kwargs)
        for i, prompt in enumerate(prompts):
            row_kwargs = {**kwargs, "seed": kwargs["seed"][i]} if "seed" in kwargs else kwargs
            alone, alone_lp = generate(model, torch.tensor([prompt]), 20, return_logprobs=True, **row_kwargs)
            assert torch.equal(batched[i, int(pad[i]) :], alone[0]), (i, kwargs)
            torch.testing.assert_close(batched_lp[i], alone_lp[0], rtol=1e-4, atol=1e-4)


def test_padding_is_invisible_to_the_forward():
    torch.manual_seed(0)
    model = build_model(tiny_cfg("gpt2", max_seq_len=24)).eval()
    short = torch.tensor([[7, 8, 9]])
    ids, pad = left_pad([[1, 2, 3, 4, 5, 6], short[0].tolist()])
    padded = model(ids, pad=pad).logits[1, 3:]
    torch.testing.assert_close(padded, model(short).logits[0], rtol=1e-5, atol=1e-5)


def test_greedy_equals_argmax_rollout():
    torch.manual_seed(0)
    model = build_model(tiny_cfg("gpt2")).eval()
    ids = torch.randint(0, 61, (1, 4))
    out = generate(model, ids, 5, temperature=0)
    for _ in range(5):
        ids = torch.cat([ids, model(ids).logits[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(out, ids)


def test_seed_makes_sampling_reproducible():
    model = build_model(tiny_cfg("llama"))
    p = torch.zeros(1, 1, dtype=torch.long)
    assert torch.equal(generate(model, p, 20, seed=5), generate(model, p, 20, seed=5))
    assert not torch.equal(generate(model, p, 20, seed=5), generate(model, p, 20, seed=6))


def test_top_k_and_top_p_filters():
    logits = torch.log(torch.tensor([[0.5, 0.2, 0.15, 0.1, 0.05]]))
    kept_k = torch.isfinite(filter_logits(logits, top_k=2))
    assert kept_k.tolist() == [[True, True, False, False, False]]
    kept_p = torch.isfinite(filter_logits(logits, top_p=0.8))  # 0.5+0.2 < 0.8 <= 0.5+0.2+0.15
    assert kept_p.tolist() == [[True, True, True, False, False]]
    kept_small = torch.isfinite(filter_logits(logits, top_p=0.1))  # the top token always survives
    assert kept_small.tolist() == [[True, False, False, False, False]]
    shuffled = logits[:, [3, 0, 4, 2, 1]]
    assert torch.isfinite(filter_logits(shuffled, top_p=0.8)).tolist() == [[False, True, False, True, True]]


def test_stop_tokens_end_generation():
    torch.manual_seed(0)
    model = build_model(tiny_cfg("llama"))
    prompt = torch.randint(0, 61, (1, 3))
    free = generate(model, prompt, 20, temperature=0)
    stop_id = int(free[0, 6])
    stopped = generate(model, prompt, 20, temperature=0, stop=[stop_id])
    first = (free[0, 3:] == stop_id).nonzero()[0].item() + 3
    assert stopped.shape[1] == first + 1 and int(stopped[0, -1]) == stop_id
    assert torch.equal(stopped[0], free[0, : first + 1])


def test_min_p_keeps_tokens_near_the_top():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    kept = filter_logits(logits, min_p=0.3) > float("-inf")  # threshold 0.3 * 0.5 = 0.15
    assert kept.tolist() == [[True, True, True, False]]


def test_repetition_penalty_matches_the_ctrl_rule():
    from lmlab.model.generate import apply_repetition_penalty

    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0]])
    out = apply_repetition_penalty(logits, torch.tensor([[0, 1, 1]]), 2.0)
    assert out.tolist() == [[1.0, -2.0, 0.5, 3.0]]
    model = build_model(tiny_cfg("llama"))
    prompt = torch.randint(0, 61, (1, 4))
    plain = generate(model, prompt, 40, temperature=0)[0, 4:].tolist()
    penalised = generate(model, prompt, 40, temperature=0, repetition_penalty=5.0)[0, 4:].tolist()
    assert len(set(penalised)) > len(set(plain))  # a strong penalty spreads the choices


def test_logprobs_are_the_models_log_probabilities_and_streaming_matches():
    from lmlab.model.generate import iter_generate

    torch.manual_seed(1)
    model = build_model(tiny_cfg("gpt2")).eval()
    prompt = torch.randint(0, 61, (2, 5))
    ids, logprobs = generate(model, prompt, 6, temperature=0.9, seed=4, return_logprobs=True)
    full = model(ids).logits.log_softmax(-1)
    expected = full[:, 4:-1].gather(-1, ids[:, 5:, None])[..., 0]
    torch.testing.assert_close(logprobs, expected, rtol=1e-4, atol=1e-5)
    streamed = torch.cat([t for t, _ in iter_generate(model, prompt, 6, temperature=0.9, seed=4)], dim=1)
    assert torch.equal(streamed, ids[:, 5:])
