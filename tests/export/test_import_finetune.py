"""`lmlab import --hf DIR` makes a run; `--train.init_from RUN` fine-tunes it from exactly those weights."""

import pytest
import torch
from click.testing import CliRunner

from lmlab.cli.app import cli
from lmlab.data.tokenizers.base import build_tokenizer
from lmlab.infer.load import load_run
from lmlab.runs.run_dir import RunDir

transformers = pytest.importorskip("transformers")


def test_import_then_generate_and_finetune(tmp_path, corpus_file):
    text = corpus_file.read_text()
    bpe = build_tokenizer("bpe", text, vocab_size=300)
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=bpe.tok, eos_token="<|endoftext|>")
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(
        transformers.GPT2Config(vocab_size=300, n_positions=64, n_layer=2, n_head=2, n_embd=32)
    ).eval()
    hf.save_pretrained(tmp_path / "ckpt")
    fast.save_pretrained(tmp_path / "ckpt")

    runner = CliRunner()
    out = runner.invoke(cli, ["import", "--hf", str(tmp_path / "ckpt"), "--save-dir", str(tmp_path / "runs")])
    assert out.exit_code == 0, out.output
    run = RunDir.latest(tmp_path / "runs", "imported")
    loaded = load_run(run.path)
    ids = torch.tensor([bpe.encode("the quick brown fox")])
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(ids).logits, hf(ids).logits, rtol=1e-4, atol=1e-4)
    assert loaded.tokenizer.encode("the quick") == bpe.encode("the quick")

    args = ["train", "--train.init_from", str(run.path), "--data", f"file:{corpus_file}", "--max-steps", "1"]
    args += ["--save-dir", str(tmp_path / "ft"), "--train.sample_tokens", "0", "--no-progress", "--batch", "2"]
    args += ["--train.eval_iters", "1", "--seq-len", "32"]
    out = runner.invoke(cli, args)
    assert out.exit_code == 0, out.output
    tuned = load_run(RunDir.latest(tmp_path / "ft").path)
    assert tuned.config.model.arch_name() == loaded.config.model.arch_name()
    delta = max(
        (a - b).abs().max().item() for a, b in zip(tuned.model.parameters(), loaded.model.parameters(), strict=True)
    )
    assert 0 < delta < 0.05  # one small step away from the imported weights, not a fresh init

    bad = runner.invoke(cli, ["import", "--hf", str(tmp_path), "--save-dir", str(tmp_path / "runs")])
    assert bad.exit_code == 2 and "missing config.json" in bad.output
