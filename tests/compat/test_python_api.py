"""Python names users of other projects reach for, imported as they write them."""

import re
import tomllib
from pathlib import Path


def test_familiar_imports_and_subscriptable_registries():
    from lmlab import SimpleCharacterTokenizer
    from lmlab.attn import MHA, MLA, SDPA, NativeSparse
    from lmlab.data.tokenizers.char import CharTokenizer
    from lmlab.registry import ATTN, FFN
    from lmlab.trainer import Callback, MiniTrainer

    assert ATTN["mla"] is MLA and ATTN["MLA"] is MLA and ATTN["flash"] is SDPA and ATTN["manual"] is MHA
    assert ATTN["nsa"] is NativeSparse and FFN["SwiGLU"].__name__ == "SwiGLU"
    assert SimpleCharacterTokenizer is CharTokenizer and MiniTrainer.__name__ == "MiniTrainer"
    assert Callback.__name__ == "Callback"
    tok = SimpleCharacterTokenizer.train("hello", vocab_size=None, source=None)
    assert tok.decode(tok.encode("hello")) == "hello"


def test_the_license_is_the_one_the_package_declares():
    repo = Path(__file__).resolve().parents[2]
    declared = tomllib.loads((repo / "pyproject.toml").read_text())["project"]["license"]
    assert declared == "MIT" and re.match(r"MIT License\n", (repo / "LICENSE").read_text())


def _tiny_trainer(**kwargs):
    import numpy as np
    import torch

    from lmlab.data.datasets import RandomWindowLoader
    from lmlab.model.build import build_model
    from lmlab.trainer import MiniTrainer
    from tests.conftest import tiny_cfg

    torch.manual_seed(0)
    model = build_model(tiny_cfg("llama", dropout=0.0, n_layer=1))
    tokens = np.random.default_rng(0).integers(0, 61, 2000).astype(np.uint16)
    loader = RandomWindowLoader(tokens, 4, 16, seed=1)
    return MiniTrainer(model, torch.optim.SGD(model.parameters(), lr=0.1), train_loader=loader, max_steps=3, **kwargs)


def test_a_loss_module_a_logits_function_and_a_plain_callback():
    import torch
    from torch import nn
    from torch.nn import functional as F

    events, losses = [], {}

    def on_event(trainer, event):
        events.append(event.name)
        if event.name == "batch_end":
            losses.setdefault(id(trainer), []).append(event.data["loss"])

    runs = {
        "default": _tiny_trainer(callbacks=[on_event]),
        "module": _tiny_trainer(loss_fn=nn.CrossEntropyLoss(), callbacks=[on_event]),
        "function": _tiny_trainer(
            loss_fn=lambda logits, targets: F.cross_entropy(logits, targets), callbacks=[on_event]
        ),
    }
    for trainer in runs.values():
        trainer.train()
    curves = [losses[id(t)] for t in runs.values()]
    assert len(curves[0]) == 3 and curves[0] == curves[1] == curves[2]  # the same loss, however it is given
    assert events[:3] == ["train_start", "before_optimizer_step", "batch_end"] and events.count("train_end") == 3
    assert torch.isfinite(torch.tensor(curves[0])).all()


def test_each_evaluation_reports_the_training_split_and_the_run_log_has_nanogpts_shape(tmp_path, corpus_file):
    """nanoGPT's estimate_loss (train and val loss at every evaluation), its enhanced JSON run log, and the
    cost card printed at start-up; a resume continues the log without repeating steps."""
    import json

    from click.testing import CliRunner

    from lmlab.cli.app import cli
    from lmlab.model.flops import flops_per_token
    from lmlab.runs.run_dir import RunDir
    from lmlab.track.jsonl import read_metrics
    from tests.helpers import small_train_args

    args = small_train_args(corpus_file, layers=1, dim=16, seq_len=16, batch=2, train__eval_interval=2)
    args += ["--train.eval_iters", "2", "--log-interval", "1", "--save-dir", str(tmp_path)]
    result = CliRunner().invoke(cli, ["train", *args, "--max-steps", "4"])
    assert result.exit_code == 0, result.output
    assert "FLOPs/token" in result.output and "norm and position are elementwise FLOPs" in result.output
    run = RunDir.latest(tmp_path)
    evals = [r for r in read_metrics(run.logs / "metrics.jsonl") if r["split"] == "val"]
    assert [r["step"] for r in evals] == [2, 4]
    assert all(0 < r["train_eval_loss"] < 10 and 0 < r["val_loss"] < 10 for r in evals)

    result = CliRunner().invoke(cli, ["train", *args, "--max-steps", "6", "--train.resume", str(run.path)])
    assert result.exit_code == 0, result.output
    log = json.loads((run.logs / "run_log.json").read_text())
    assert set(log) == {"config", "training_iterations", "evaluations"} and log["config"]["train"]["max_steps"] == 6
    iters = log["training_iterations"]
    assert [r["iter"] for r in iters] == [1, 2, 3, 4, 5, 6]
    first = iters[0]
    assert {"iter", "loss", "lr", "time_ms", "mfu"} <= set(first) and first["time_ms"] > 0
    mfu = first["mfu"]
    assert set(mfu["breakdown"]) == {"attention", "ffn", "norm", "position", "lm_head"}
    assert sum(mfu["breakdown"].values()) == mfu["flops_per_token"] == flops_per_token(run.config().model, 16) * 3
    assert mfu["architecture"] == run.config().model.arch_name() and mfu["breakdown"]["norm"] > 0
    assert [(e["iter"], e["val_loss"] > 0, e["train_loss"] > 0) for e in log["evaluations"]] == [
        (2, True, True),
        (4, True, True),
        (6, True, True),
    ]


def test_text_dataset_and_data_module_feed_a_hand_written_loop(tmp_path, corpus_file):
    import torch

    from lmlab import TextDataModule
    from lmlab.data import TextDataset
    from lmlab.data.datasets import prepare_data
    from lmlab.model.build import build_model
    from lmlab.trainer import MiniTrainer
    from tests.conftest import tiny_cfg

    dm = TextDataModule(str(corpus_file), tokenizer="char", batch_size=4, seq_len=16, cache_dir=str(tmp_path))
    dm.setup()
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == y.shape == (4, 16) and x.dtype == torch.long and torch.equal(x[:, 1:], y[:, :-1])
    # The same tokens and split as `lmlab train --data FILE --tokenizer char` uses.
    _, tok, splits = prepare_data(dm.config)
    assert tok.vocab_size == dm.vocab_size and len(dm.val_dataset) == (len(splits.val) - 17) // 16 + 1
    xv, yv = dm.val_dataset[1]
    assert xv.tolist() == list(splits.val[16:32]) and yv.tolist() == list(splits.val[17:33])
    assert len(TextDataset(list(range(20)), 4, stride=1)) == 16 and TextDataset(list(range(20)), 4)[-1][1][-1] == 19

    torch.manual_seed(0)
    model = build_model(tiny_cfg("llama", dropout=0.0, n_layer=1, vocab_size=dm.vocab_size, max_seq_len=16))
    trainer = MiniTrainer(
        model,
        torch.optim.AdamW(model.parameters(), lr=3e-3),
        train_loader=dm.train_dataloader(),
        val_loader=dm.val_dataloader(),
        max_steps=20,
        eval_iters=2,
    )
    trainer.train()
    assert trainer.evaluate()["val_loss"] < torch.log(torch.tensor(float(dm.vocab_size))).item()
