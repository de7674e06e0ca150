"""Encoder-decoder: masks, cached decoding, beam search, config rules, and learning `reverse`."""

import random

import pytest
import torch
from click.testing import CliRunner

from lmlab.cli.app import cli
from lmlab.config import ModelConfig, resolve_config
from lmlab.data.pairs import PairLoader, read_source, to_torch
from lmlab.errors import ConfigError
from lmlab.infer.beam import beam_search, hypothesis_score
from lmlab.infer.decoding import greedy_decode
from lmlab.infer.load import load_run
from lmlab.infer.translate import translate
from lmlab.model.build import build_model
from lmlab.model.seq2seq import Seq2Seq
from lmlab.runs.run_dir import RunDir
from lmlab.text.pairs import make_batch


def _model(attn="sdpa", pos="rope", **kw):
    torch.manual_seed(0)
    fields = {"vocab_size": 13, "src_vocab_size": 11, "n_layer": 2, "d_model": 16, "n_head": 2, **kw}
    cfg = ModelConfig(arch="seq2seq", attn=attn, pos=pos, **fields)
    return build_model(cfg).eval()


SRC = torch.tensor([[4, 5, 6, 2], [9, 2, 0, 0], [7, 7, 8, 2]])


def test_build_model_returns_seq2seq_and_config_rules():
    m = _model()
    assert isinstance(m, Seq2Seq) and m.config.arch_name() == "2E2D-2H-16D-RoPE-LN-GELU-PreNorm"
    with pytest.raises(
        ConfigError, match="attention 'mla' has no encoder-decoder role; allowed with arch=seq2seq: mha, sdpa"
    ):
        resolve_config(cli={"model": {"arch": "seq2seq", "attn": "mla"}, "data": {"name": "pairs:enfr"}})
    with pytest.raises(ConfigError, match="position 'alibi' has no encoder-decoder role"):
        resolve_config(cli={"model": {"arch": "seq2seq", "pos": "alibi"}, "data": {"name": "pairs:enfr"}})
    with pytest.raises(ConfigError, match="data.name: 'shakespeare' is a text corpus"):
        resolve_config(cli={"model": {"arch": "seq2seq"}, "data": {"name": "shakespeare"}})
    with pytest.raises(ConfigError, match="set model.arch=seq2seq"):
        resolve_config(cli={"data": {"name": "task:reverse"}})
    shared = _model(share_embeddings=True, src_vocab_size=13, tie_weights=True)
    assert shared.src_emb is shared.tgt_emb and shared.lm_head.weight is shared.tgt_emb.weight


@pytest.mark.parametrize("attn", ["mha", "sdpa"])
def test_source_padding_is_invisible(attn):
    m = _model(attn, "sinusoidal")
    tgt = torch.tensor([[1, 7, 8]])
    short = m(torch.tensor([[4, 5, 2]]), tgt).logits
    padded = m(torch.tensor([[4, 5, 2, 0, 0, 0]]), tgt, torch.tensor([[1, 1, 1, 0, 0, 0]]).bool()).logits
    torch.testing.assert_close(short, padded)
    unmasked = m(torch.tensor([[4, 5, 2, 0, 0, 0]]), tgt, torch.ones(1, 6, dtype=torch.bool)).logits
    assert not torch.allclose(short, unmasked)  # the mask is what makes them equal


def test_encoder_is_bidirectional_and_decoder_causal():
    m = _model("mha", "learned")
    src, tgt = torch.tensor([[4, 5, 6, 2]]), torch.tensor([[1, 7, 8, 9]])
    base = m(src, tgt).logits
    changed_src = m(torch.tensor([[4, 5, 6, 3]]), tgt).logits  # a later source token changes every output
    assert not torch.allclose(base[:, 0], changed_src[:, 0])
    changed_tgt = m(src, torch.tensor([[1, 7, 8, 10]])).logits  # a later target token changes nothing before it
    torch.testing.assert_close(base[:, :3], changed_tgt[:, :3])


@pytest.mark.parametrize(("attn", "pos"), [("mha", "learned"), ("sdpa", "rope"), ("sdpa", "sinusoidal")])
def test_cached_greedy_equals_uncached_and_beam1_equals_greedy(attn, pos):
    m = _model(attn, pos, init_std=0.5)
    cached = greedy_decode(m, SRC, max_len=12)
    assert cached == greedy_decode(m, SRC, max_len=12, use_cache=False)
    assert beam_search(m, SRC, beam=1, max_len=12, alpha=0.0) == cached
    for i, row in enumerate(beam_search(m, SRC, beam=1, max_len=12, alpha=1.0)):
        # With a length penalty, beam 1 may keep searching past greedy's <eos> and find better.
        src = SRC[i : i + 1]
        assert hypothesis_score(m, src, row, 1.0) >= hypothesis_score(m, src, cached[i], 1.0) - 1e-6


@torch.no_grad()
def _logprob(m, src, out):
    tgt_in = torch.tensor([[1, *out[:-1]]])
    logp = m(src, tgt_in).logits.log_softmax(-1)[0]
    return float(logp[torch.arange(len(out)), torch.tensor(out)].sum())


def test_beam_finds_at_least_the_greedy_log_probability():
    torch.manual_seed(3)
    m = _model("mha", "learned", init_std=0.8, vocab_size=6)  # few tokens: <eos> comes up often
    compared = 0
    for _ in range(8):
        src = torch.randint(4, 11, (1, 5))
        g = greedy_decode(m, src, max_len=8)[0]
        b = beam_search(m, src, beam=5, max_len=8, alpha=0.0)[0]
        if g[-1] == 2 and b[-1] == 2:  # both finished: beam's score can only be as good or better
            assert _logprob(m, src, b) >= _logprob(m, src, g) - 1e-5
            compared += 1
    assert compared >= 3


def test_pair_loader_resumes_mid_epoch():
    ex = [([i + 4, 2], [i + 4]) for i in range(10)]
    a = PairLoader(ex, 3, seed=1)
    it = iter(a)
    next(it)
    state = a.state_dict()
    rest = [b["X_ids"].tolist() for b in it]
    b = PairLoader(ex, 3, seed=1)
    b.load_state_dict(state)
    assert [x["X_ids"].tolist() for x in b] == rest
    firsts = [i for x in PairLoader(ex, 3, seed=1) for i in x["X_ids"][:, 0].tolist()]
    assert sorted(firsts) == list(range(4, 14))
    batch = to_torch(make_batch(ex[:2]))
    assert batch["X_ids"].dtype == torch.int64 and batch["M_src"].dtype == torch.bool


def test_learns_reverse_on_held_out_sequences(tmp_path):
    args = ["train", "--preset", "seq2seq", "--data", "task:reverse:3000", "--max-steps", "500", "--dropout", "0"]
    args += ["--layers", "2", "--model.n_enc_layer", "2", "--dim", "64", "--batch", "32", "--lr", "2e-3"]
    args += ["--train.warmup_steps", "50", "--train.eval_interval", "500", "--context", "16", "--no-progress"]
    args += ["--save-dir", str(tmp_path), "--train.sample_tokens", "0"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    run = RunDir.latest(tmp_path)
    loaded = load_run(run.path)
    seen = {tuple(src.split()) for src, _ in read_source("task:reverse:3000")}
    rng = random.Random(123)
    fresh = []
    while len(fresh) < 200:
        seq = tuple(str(rng.randrange(10)) for _ in range(rng.randint(5, 8)))
        if seq not in seen:
            fresh.append(seq)
    outs = translate(loaded, [" ".join(s) for s in fresh])
    exact = sum(o.split() == list(s[::-1]) for o, s in zip(outs, fresh, strict=True)) / len(fresh)
    assert exact >= 0.99, exact
    few = [" ".join(s) for s in fresh[:20]]
    assert translate(loaded, few, beam=4) == outs[:20]  # a trained model: beam agrees with greedy here
    result = CliRunner().invoke(cli, ["eval", "--run", str(run.path)])
    assert result.exit_code == 0 and '"exact_match"' in result.output and '"bleu"' in result.output


def test_translate_cli_with_unknown_words(tmp_path):
    args = ["train", "--preset", "seq2seq", "--max-steps", "30", "--layers", "1", "--model.n_enc_layer", "1"]
    args += ["--dim", "32", "--save-dir", str(tmp_path), "--no-progress", "--train.eval_interval", "30"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "-> " in result.output and "(reference: " in result.output  # end-of-training translations
    run = RunDir.latest(tmp_path)
    assert (run.src_tokenizer).is_file() and (run.tokenizer).is_file()
    result = CliRunner().invoke(
        cli, ["translate", "--run", str(run.path), "i am cold.", "the zorglub is blue.", "--beam", "2"]
    )
    assert result.exit_code == 0, result.output
    assert len(result.output.strip().splitlines()) == 2
    result = CliRunner().invoke(cli, ["eval", "--run", str(run.path)])
    assert result.exit_code == 0, result.output
    assert '"token_accuracy"' in result.output


def test_malformed_pairs_file_is_named_with_its_line(tmp_path):
    bad = tmp_path / "bad.tsv"
    bad.write_text("hello\tbonjour\nno tab here\n")
    result = CliRunner().invoke(
        cli, ["train", "--preset", "seq2seq", "--data", f"pairs:{bad}", "--save-dir", str(tmp_path)]
    )
    assert result.exit_code == 2 and f"{bad}:2: expected source and target separated by a tab" in result.output


def test_word_tokenizer_is_registered_and_round_trips(tmp_path):
    from lmlab.data.tokenizers.base import load_tokenizer, save_tokenizer
    from lmlab.registry import TOKENIZER

    tok = TOKENIZER.get("word").train("I am cold.\nYou are warm!\n")
    assert tok.decode(tok.encode("you are cold.")) == "you are cold." and tok.encode("zorglub") == [3]
    save_tokenizer(tok, tmp_path / "t.json")
    again = load_tokenizer(tmp_path / "t.json")
    assert again.fingerprint() == tok.fingerprint() and again.encode("i am warm!") == tok.encode("i am warm!")
