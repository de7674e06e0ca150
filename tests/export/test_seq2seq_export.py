"""`export --format hf` of an encoder-decoder run: remote code `AutoModelForSeq2SeqLM` and `AutoTokenizer` load
without lmlab; logits at full length, cached greedy `generate` on a padded batch and the two vocabularies agree
with lmlab, and an export whose computation differs is refused."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from lmlab.cli.app import cli
from lmlab.config import ModelConfig
from lmlab.infer.decoding import greedy_decode
from lmlab.infer.load import load_run
from lmlab.infer.translate import translate
from lmlab.model.build import build_model
from lmlab.pipeline.export import _write_remote_code, export_run
from lmlab.runs.run_dir import RunDir

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.xdist_group("seq2seq_export")

SENTENCES = ["I am here .", "the cat is happy", "we go"]

# Run in a fresh interpreter where `import lmlab` fails: the export must stand alone.
_OUTSIDE = """
import json, sys
sys.modules["lmlab"] = None
import torch
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer
out, sentences = sys.argv[1], json.loads(sys.argv[2])
tok = AutoTokenizer.from_pretrained(out, trust_remote_code=True)
model = AutoModelForSeq2SeqLM.from_pretrained(out, trust_remote_code=True, dtype=torch.float32).eval()
batch = tok(sentences, padding=True, return_tensors="pt")
with torch.no_grad():
    rows = model.generate(**batch, do_sample=False)
labels = tok(text_target=sentences[:1])["input_ids"]
print(json.dumps({"text": tok.batch_decode(rows, skip_special_tokens=True), "source": batch["input_ids"].tolist(),
                  "labels": labels}))
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> RunDir:
    root = tmp_path_factory.mktemp("s2s")
    args = ["train", "--preset", "seq2seq", "--data", "pairs:enfr", "--layers", "1", "--model.n_enc_layer", "1"]
    args += ["--dim", "32", "--heads", "2", "--context", "24", "--batch", "8", "--max-steps", "40"]
    args += ["--no-tie-weights", "--train.eval_iters", "1", "--train.sample_tokens", "0", "--no-progress"]
    result = CliRunner().invoke(cli, [*args, "--save-dir", str(root)])
    assert result.exit_code == 0, result.output
    return RunDir.latest(root)


def test_a_seq2seq_export_translates_as_lmlab_does_outside_lmlab(run, tmp_path):
    report = export_run(run.path, "hf", tmp_path / "hf")
    assert report["layout"] == "remote code (encoder-decoder)" and report["max_abs_logit_diff"] <= 1e-4
    assert report["probe_shape"] == [3, 24]  # the full context of the target side
    proc = subprocess.run(
        [sys.executable, "-c", _OUTSIDE, str(tmp_path / "hf"), json.dumps(SENTENCES)],
        capture_output=True,
        text=True,
        check=True,
    )
    theirs = json.loads(proc.stdout.splitlines()[-1])
    loaded = load_run(run.path)
    assert theirs["text"] == translate(loaded, SENTENCES)
    src, tgt = loaded.src_tokenizer, loaded.tokenizer
    assert src.vocab_size != tgt.vocab_size  # two vocabularies: source ids in, target ids out
    width = max(len(src.encode(s, eos=True)) for s in SENTENCES)
    assert theirs["source"] == [
        src.encode(s, eos=True) + [0] * (width - len(src.encode(s, eos=True))) for s in SENTENCES
    ]
    assert theirs["labels"] == [tgt.encode(SENTENCES[0], eos=True)]
    back = CliRunner().invoke(cli, ["import", "--hf", str(tmp_path / "hf"), "--save-dir", str(tmp_path / "in")])
    assert back.exit_code == 0, back.output
    assert translate(load_run(RunDir.latest(tmp_path / "in").path), SENTENCES) == theirs["text"]  # and back, exactly


@pytest.mark.parametrize(
    "overrides",
    [
        {"pos": "rope", "norm": "rmsnorm", "ffn": "swiglu", "n_kv_head": 2, "attn": "mha", "share_embeddings": True},
        {"pos": "sinusoidal", "norm_position": "post", "bias": False, "tie_weights": False, "src_vocab_size": 30},
    ],
    ids=["rope-gqa-shared", "sinusoidal-postnorm-untied"],
)
def test_remote_code_seq2seq_logits_and_cached_greedy_match(tmp_path, overrides):
    torch.manual_seed(0)
    base = dict(arch="seq2seq", n_layer=2, n_enc_layer=2, d_model=32, n_head=4, vocab_size=40, max_seq_len=16)
    model = build_model(ModelConfig.from_preset("seq2seq", **base, dropout=0.0, **overrides)).eval()
    _write_remote_code(model, tmp_path, {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0})
    hf = transformers.AutoModelForSeq2SeqLM.from_pretrained(tmp_path, trust_remote_code=True, dtype=torch.float32)
    cfg = model.config
    src, tgt = torch.randint(4, cfg.src_vocab_size, (3, 16)), torch.randint(0, cfg.vocab_size, (3, 16))
    valid = torch.ones_like(src, dtype=torch.bool)
    valid[0, 9:] = False
    src = src.masked_fill(~valid, 0)
    with torch.no_grad():
        torch.testing.assert_close(hf.eval()(input_ids=src, decoder_input_ids=tgt).logits, model(src, tgt).logits)
        rows = hf.generate(src, attention_mask=valid.long(), do_sample=False)
    ours = greedy_decode(model, src, valid, max_len=15)
    for row, hyp in zip(rows[:, 1:].tolist(), ours, strict=True):
        assert (row[: row.index(2) + 1] if 2 in row else [t for t in row if t != 0]) == hyp


def test_an_export_that_computes_otherwise_is_refused(run, tmp_path, monkeypatch):
    """The check is real: a remote model whose cross-attention scale is off fails the logit parity."""
    import lmlab.export.modeling_lmlab as remote

    here = Path(remote.__file__).parent
    source = (here / "modeling_lmlab.py").read_text()
    broken = source.replace("src_bias, self.hs**-0.5)", "src_bias, 0.5 * self.hs**-0.5)")
    assert broken != source
    fake = tmp_path / "pkg"
    fake.mkdir()
    (fake / "modeling_lmlab.py").write_text(broken)
    for name in ("__init__.py", "tokenization_lmlab.py"):
        (fake / name).write_text((here / name).read_text())
    import lmlab.export as package

    monkeypatch.setattr(package, "__file__", str(fake / "__init__.py"))
    out = CliRunner().invoke(cli, ["export", "--run", str(run.path), "--format", "hf", "--out", str(tmp_path / "x")])
    assert out.exit_code == 2 and out.output.count("\n") == 1 and "logits differ" in out.output, out.output
    assert not (tmp_path / "x").exists()


def test_a_windowed_encoder_decoder_is_refused_in_one_line(tmp_path):
    args = ["train", "--preset", "seq2seq", "--data", "task:reverse:40", "--layers", "1", "--model.n_enc_layer", "1"]
    args += [
        "--dim",
        "16",
        "--heads",
        "2",
        "--context",
        "16",
        "--batch",
        "4",
        "--max-steps",
        "1",
        "--model.window",
        "4",
    ]
    args += ["--train.eval_iters", "1", "--train.sample_tokens", "0", "--no-progress", "--save-dir", str(tmp_path)]
    assert CliRunner().invoke(cli, args).exit_code == 0
    run = str(RunDir.latest(tmp_path).path)
    out = CliRunner().invoke(cli, ["export", "--run", run, "--format", "hf", "--out", str(tmp_path / "hf")])
    assert out.exit_code == 2 and out.output.count("\n") == 1, out.output
    assert "model.window=4" in out.output and "--format safetensors" in out.output
    assert not (tmp_path / "hf").exists()
