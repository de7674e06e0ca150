"""Compiled static-cache decoding and speculative decoding give plain decoding's tokens (greedy) or its
distribution (sampling), for every preset and attention."""

import copy
import math

import pytest
import torch

import lmlab.model.static_decode as static_decode
from lmlab.errors import ConfigError
from lmlab.model.build import build_model
from lmlab.model.generate import generate, left_pad
from lmlab.model.kernel_replay import KernelReplay
from lmlab.model.speculative import DraftStats
from lmlab.registry import ATTN
from lmlab.utils.hardware import cpu_l2_bytes
from tests.conftest import tiny_cfg
from tests.helpers import SMALL_SPARSE, legal_grid

PRESETS = ["gpt2", "llama", "mistral", "deepseek", "hybrid", "mpt", "team", "tiny"]


@pytest.fixture
def graph_only(monkeypatch):
    """Dynamo's graph over the static caches without inductor's code generation (one real compile below)."""
    monkeypatch.setattr(static_decode, "BACKEND", "aot_eager")


def _pair(preset: str, **kw):
    torch.manual_seed(0)
    model = build_model(tiny_cfg(preset, max_seq_len=40, **kw)).eval()
    draft = build_model(tiny_cfg(preset, n_layer=1, max_seq_len=40, **kw)).eval()
    return model, draft


@pytest.mark.parametrize("preset", PRESETS)
def test_compiled_and_speculative_greedy_equal_plain_greedy(preset, graph_only, capsys):
    model, draft = _pair(preset)
    prompt = torch.randint(0, 61, (2, 7))
    plain = generate(model, prompt, 45, temperature=0)  # 52 tokens: past max_seq_len=40, the context slides
    assert torch.equal(generate(model, prompt, 45, temperature=0, compile=True), plain)
    stats = DraftStats()
    spec = generate(model, prompt, 45, temperature=0, draft=draft, draft_tokens=3, draft_stats=stats)
    assert torch.equal(spec, plain)
    assert stats.proposed > 0 and 0 <= stats.accepted <= stats.proposed
    compiled = generate(model, prompt, 45, temperature=0, draft=draft, draft_tokens=3, compile=True)
    assert torch.equal(compiled, plain)  # the draft's steps and the verification pass compiled
    if model.config.attn == "mla":  # its latent cache has another shape: a one-line notice, eager decoding
        assert "compile: mla attention keeps a cache of its own shape; decoding eagerly" in capsys.readouterr().err


def test_a_draft_that_is_the_model_has_every_proposal_accepted(graph_only):
    """The draft's side is wired right: fed the same tokens at the same positions, a copy of the model (and the
    model itself, whose compiled side then keeps caches of its own) proposes exactly the target's argmax."""
    model, _ = _pair("llama")
    prompt = torch.randint(0, 61, (1, 5))
    plain = generate(model, prompt, 30, temperature=0)
    for draft, compile in ((copy.deepcopy(model), False), (model, False), (model, True)):
        stats = DraftStats()
        out = generate(
            model, prompt, 30, temperature=0, draft=draft, draft_tokens=4, compile=compile, draft_stats=stats
        )
        assert torch.equal(out, plain)
        assert stats.proposed >= 20 and stats.accepted == stats.proposed, (compile, stats.accepted, stats.proposed)


@pytest.mark.parametrize(("attn", "pos"), legal_grid(attn=ATTN.names(), pos=["rope", "alibi"]))
def test_every_attention_decodes_fast_or_says_why(attn, pos, graph_only):
    torch.manual_seed(0)
    cfg = tiny_cfg("llama", attn=attn, pos=pos, n_kv_head=2, max_seq_len=24, window=8, **SMALL_SPARSE)
    model, draft = build_model(cfg).eval(), build_model(cfg.model_copy(update={"n_layer": 1})).eval()
    prompts, pad = left_pad([[5, 1, 7, 3, 9, 2], [11, 12]])
    plain = generate(model, prompts, 12, temperature=0, pad=pad)
    assert torch.equal(generate(model, prompts, 12, temperature=0, pad=pad, compile=True), plain)
    assert torch.equal(generate(model, prompts, 12, temperature=0, pad=pad, draft=draft, draft_tokens=2), plain)


def test_inductor_compiles_the_step_once_and_keeps_it(capsys, compiled_here):
    """The real compiler, once in the suite: same greedy tokens, compile time reported once per process, and
    a batch's (rows, K) x (K, N) products compiled as generated loops (not left to BLAS)."""
    from torch._dynamo.utils import counters

    torch.manual_seed(0)
    model = build_model(tiny_cfg("llama", max_seq_len=32)).eval()
    prompt = torch.randint(0, 61, (2, 5))
    plain = generate(model, prompt, 20, temperature=0)
    before = counters["inductor"]["decompose_mm"]
    assert torch.equal(generate(model, prompt, 20, temperature=0, compile=True), plain)
    assert torch.equal(generate(model, prompt, 20, temperature=0, compile=True), plain)
    assert capsys.readouterr().err.count("compiled the decode step in") == 1
    assert counters["inductor"]["decompose_mm"] - before >= model.config.n_layer  # the 2-row products as loops


def test_compiled_cpu_steps_replay_their_kernels_until_the_weights_move(compiled_here, monkeypatch):
    """After a step's first compiled calls, its kernels are replayed (the tokens stay plain greedy's); new
    weight tensors put in the model give a fresh decoder, whose replays read the new weights."""
    replays, replay = [], KernelReplay.__call__
    monkeypatch.setattr(KernelReplay, "__call__", lambda self: replays.append(self) or replay(self))
    torch.manual_seed(0)
    model = build_model(tiny_cfg("llama", max_seq_len=32)).eval()
    prompt = torch.randint(0, 61, (1, 5))
    assert torch.equal(
        generate(model, prompt, 20, temperature=0, compile=True), generate(model, prompt, 20, temperature=0)
    )
    # 19 compiled steps after the prompt's: one compiles, one is recorded and a replay of it checked, 17 replay
    assert len(replays) == 18
    with torch.no_grad():
        model.lm_head.weight = torch.nn.Parameter(torch.randn_like(model.lm_head.weight))
    assert torch.equal(
        generate(model, prompt, 20, temperature=0, compile=True), generate(model, prompt, 20, temperature=0)
    )
    assert len(replays) == 2 * 18


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_decodes_as_plain_greedy_through_replayed_inductor_steps(preset, compiled_here, capsys):
    """The real compiler for every preset: the greedy tokens are plain greedy's, and each step is replayed, or the
    preset's blocks decode eagerly and say why."""
    torch.manual_seed(0)
    model = build_model(tiny_cfg(preset, max_seq_len=40)).eval()
    prompt = torch.randint(0, 61, (2, 7))
    assert torch.equal(
        generate(model, prompt, 10, temperature=0, compile=True), generate(model, prompt, 10, temperature=0)
    )
    decoders = static_decode._DECODERS.get(model, {}).values()
    if static_decode.static_blocker(model) is None:
        assert [type(r) for d in decoders for r in d._replays.values()] == [KernelReplay]
    else:
        assert "decoding eagerly" in capsys.readouterr().err


def test_a_step_recorded_at_the_last_cache_slot_is_checked_within_the_cache(compiled_here):
    """The check of a recording starts from the state before the recorded call: a step recorded at the
    cache's last slot never writes past it (a kernel's bounds check inside an OpenMP region aborts)."""
    torch.manual_seed(0)
    model = build_model(tiny_cfg("llama", max_seq_len=32)).eval()
    prompt = torch.randint(0, 61, (1, 30))  # slot 30: compiles; slot 31, the last: recorded and checked
    plain = generate(model, prompt, 3, temperature=0)
    assert torch.equal(generate(model, prompt, 3, temperature=0, compile=True), plain)
    (decoder,) = static_decode._DECODERS[model].values()
    assert [type(r) for r in decoder._replays.values()] == [KernelReplay]


def test_a_batch_with_and_then_without_left_padding_replays_its_own_steps(compiled_here):
    """Padded and unpadded batches of one size are different steps, each compiled, recorded and replayed with
    its own fixed buffers (the pad counts among them): both give plain greedy's tokens."""
    torch.manual_seed(0)
    model = build_model(tiny_cfg("llama", max_seq_len=32)).eval()
    padded, pad = left_pad([[5, 1, 7, 3, 9, 2], [11, 12]])
    full = torch.randint(0, 61, (2, 6))
    for prompts, counts in ((full, None), (padded, pad), (full, None)):
        plain = generate(model, prompts, 12, temperature=0, pad=counts)
        assert torch.equal(generate(model, prompts, 12, temperature=0, pad=counts, compile=True), plain)
    (decoder,) = static_decode._DECODERS[model].values()
    assert sum(isinstance(r, KernelReplay) for r in decoder._replays.values()) == 2


def test_compiled_speculative_decoding_replays_the_draft_steps_and_the_verification_pass(compiled_here):
    """The verification pass of several tokens (attention's products left to BLAS, recorded with the
    kernels) and the draft's steps replay exactly: greedy output equals plain greedy's."""
    model, draft = _pair("gpt2")
    prompt = torch.randint(0, 61, (1, 6))
    plain = generate(model, prompt, 24, temperature=0)
    assert torch.equal(generate(model, prompt, 24, temperature=0, draft=draft, draft_tokens=3, compile=True), plain)
    for net in (model, draft):
        (decoder,) = static_decode._DECODERS[net].values()
        assert decoder._replays and all(isinstance(r, KernelReplay) for r in decoder._replays.values())


def test_products_of_several_rows_with_a_weight_past_the_l2_cache_read_it_once(compiled_here):
    """A 2-row product whose weight does not fit in a core's L2 is rewritten to loops over the weight's rows
    (with and without a bias) and gives F.linear's values."""
    from torch._dynamo.utils import counters

    torch.manual_seed(0)
    width = cpu_l2_bytes() // (4 * 1024) + 16  # a (width, 1024) float32 weight is just past the L2
    biased, plain = torch.nn.Linear(1024, width), torch.nn.Linear(1024, width, bias=False)
    x = torch.randn(2, 1024)
    step = torch.compile(lambda x: biased(x) + plain(x), options=static_decode.compile_options(x.device, 2))
    before = counters["lmlab"]["weight_stationary_mm"]
    with torch.no_grad():
        out = step(x)
        torch.testing.assert_close(out, biased(x) + plain(x), rtol=1e-4, atol=1e-4)
    assert counters["lmlab"]["weight_stationary_mm"] - before == 2


def _chi2_critical(df: int, alpha_z: float = 3.09) -> float:
    """Wilson-Hilferty: the chi-square quantile at z (3.09: p = 0.001)."""
    return df * (1 - 2 / (9 * df) + alpha_z * math.sqrt(2 / (9 * df))) ** 3


def test_speculative_sampling_follows_the_models_distribution():
    """Two tokens drafted per pass by a different model: the joint law of the first two tokens is the
    target's (chi-square over all 36 pairs of a 6-token vocabulary), so rejections are resampled right."""
    torch.manual_seed(1)
    V = 6
    model = build_model(tiny_cfg("llama", vocab_size=V, max_seq_len=16)).eval()
    draft = build_model(tiny_cfg("llama", vocab_size=V, n_layer=1, max_seq_len=16)).eval()
    with torch.no_grad():  # make the two disagree more than random init does
        for p in draft.parameters():
            p.mul_(3.0)
    prompt = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        p1 = model(prompt).logits[0, -1].softmax(-1)
        second = torch.cat([prompt.expand(V, -1), torch.arange(V)[:, None]], 1)
        p2 = model(second).logits[:, -1].softmax(-1)
    expected = (p1[:, None] * p2).flatten()
    n, stats = 1500, DraftStats()
    counts = torch.zeros(V * V)
    for seed in range(n):
        out = generate(model, prompt, 2, temperature=1.0, seed=seed, draft=draft, draft_tokens=2, draft_stats=stats)
        counts[int(out[0, 3]) * V + int(out[0, 4])] += 1
    assert 0.05 < stats.rate < 0.95  # both branches of the rule ran
    keep = expected * n >= 5
    stat = float((((counts - n * expected) ** 2) / (n * expected))[keep].sum())
    assert stat < _chi2_critical(int(keep.sum()) - 1), (stat, counts, expected * n)


def test_a_draft_with_another_vocabulary_is_refused():
    model = build_model(tiny_cfg("llama")).eval()
    draft = build_model(tiny_cfg("llama", vocab_size=50)).eval()
    with pytest.raises(ConfigError, match="draft has vocab_size 50, the model 61; a draft needs the same tokenizer"):
        generate(model, torch.tensor([[1, 2]]), 3, draft=draft)
