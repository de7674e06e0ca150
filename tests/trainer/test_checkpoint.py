import os
import random
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

from lmlab.errors import CheckpointError
from lmlab.model.build import build_model
from lmlab.runs import checkpoint as ckpt
from tests.conftest import tiny_cfg


def _model():
    torch.manual_seed(0)
    return build_model(tiny_cfg("llama"))


def test_save_load_round_trip(tmp_path):
    model = _model()
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randint(0, 61, (1, 4)), targets=torch.randint(0, 61, (1, 4))).loss.backward()
    opt.step()
    path = ckpt.save_checkpoint(tmp_path, 7, model, {"step": 7, "optimizer": opt.state_dict()})
    other = build_model(tiny_cfg("llama"))
    state = ckpt.load_checkpoint(path, other)
    assert state["step"] == 7
    for a, b in zip(model.state_dict().values(), other.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert state["optimizer"]["state"][0]["exp_avg"].shape == next(model.parameters()).shape


def test_damaged_newest_checkpoint_is_skipped(tmp_path):
    model = _model()
    for step in (1, 2, 3):
        ckpt.save_checkpoint(tmp_path, step, model, {"step": step})
    newest = tmp_path / "step_00000003" / "model.safetensors"
    newest.write_bytes(newest.read_bytes()[:100])
    with pytest.warns(UserWarning, match="truncated or corrupt"):
        assert ckpt.latest_valid(tmp_path).name == "step_00000002"
    with pytest.raises(CheckpointError, match=r"step_00000003.*truncated"):
        ckpt.load_checkpoint(tmp_path / "step_00000003", model)


def test_not_a_checkpoint_is_refused_with_path(tmp_path):
    (tmp_path / "junk").mkdir()
    with pytest.raises(CheckpointError, match=rf"{tmp_path / 'junk'} is not a checkpoint"):
        ckpt.load_checkpoint(tmp_path / "junk", _model())


def test_wrong_architecture_is_refused(tmp_path):
    path = ckpt.save_checkpoint(tmp_path, 1, _model(), {"step": 1})
    with pytest.raises(CheckpointError, match="does not fit this model"):
        ckpt.load_checkpoint(path, build_model(tiny_cfg("llama", d_model=64)))


def test_prune_keeps_last_and_best(tmp_path):
    model = _model()
    paths = [ckpt.save_checkpoint(tmp_path, s, model, {"step": s}) for s in range(1, 6)]
    ckpt.prune(tmp_path, 2, keep=paths[0])
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step_00000001", "step_00000004", "step_00000005"]


def test_a_prune_killed_midway_leaves_no_half_deleted_checkpoint(tmp_path, monkeypatch):
    """A kill while an old checkpoint is deleted: the listing holds whole checkpoints only."""
    model = _model()
    for s in range(1, 4):
        ckpt.save_checkpoint(tmp_path, s, model, {"step": s})

    def killed_after_one_file(path, ignore_errors=False):
        next(p for p in sorted(path.iterdir()) if p.name == "model.safetensors").unlink()
        raise KeyboardInterrupt  # the process dies here, one file of the folder gone

    monkeypatch.setattr(ckpt.shutil, "rmtree", killed_after_one_file)
    with pytest.raises(KeyboardInterrupt):
        ckpt.prune(tmp_path, 2)
    monkeypatch.undo()
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step_00000002", "step_00000003"]
    for path in ckpt.list_checkpoints(tmp_path):
        ckpt.verify_checkpoint(path)
    assert [p.name for p in ckpt.clean_partial(tmp_path)] == [f".step_00000001.del-{os.getpid()}"]


WRITER = textwrap.dedent(
    """
    import sys, torch
    from lmlab.config import ModelConfig
    from lmlab.model.build import build_model
    from lmlab.runs import checkpoint

    fsync = checkpoint._fsync

    def announced_fsync(path):
        print("fsync", path, flush=True)  # the test kills at one of these moments, inside a write
        fsync(path)

    checkpoint._fsync = announced_fsync
    cfg = ModelConfig.from_preset("llama", n_layer=4, d_model=256, n_head=4, vocab_size=2000)
    model = build_model(cfg)
    step = 0
    while True:
        step += 1
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1.0)
        checkpoint.save_checkpoint(sys.argv[1], step, model, {"step": step, "big": torch.randn(500_000)})
        print("saved", step, flush=True)
    """
)


def test_kill_during_checkpoint_writes_never_corrupts_previous(tmp_path):
    rng = random.Random(0)
    root = tmp_path / "ckpts"
    saved = 0
    for _ in range(5):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(root)], stdout=subprocess.PIPE, text=True)
        # Let at least one checkpoint land, then kill after a random fsync of a later write.
        events = [line.split()[0] for line in _lines_until(proc.stdout, "saved")]
        saved += events.count("saved")
        for _ in range(rng.randint(1, 5)):
            proc.stdout.readline()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        for path in ckpt.list_checkpoints(root):
            ckpt.verify_checkpoint(path)  # every renamed checkpoint is complete
    assert saved >= 5 and ckpt.list_checkpoints(root)
    latest = ckpt.latest_valid(root)
    model = build_model(tiny_cfg("llama", n_layer=4, d_model=256, vocab_size=2000, max_seq_len=2048))
    state = ckpt.load_checkpoint(latest, model)
    assert state["step"] >= 1
    ckpt.clean_partial(root)
    assert not [p for p in root.iterdir() if p.name.startswith(".")]


def _lines_until(stream, word: str) -> list[str]:
    """Lines read from `stream` up to and including the first that starts with `word`."""
    lines = []
    for line in stream:
        lines.append(line)
        if line.startswith(word):
            break
    return lines
