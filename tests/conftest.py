"""Shared fixtures: a private cache dir, small configs, a small text corpus."""

from __future__ import annotations

import os

import pytest
import torch


def _threads() -> int:
    """OMP_NUM_THREADS when set (=1 pins the suite); else the cores shared among the xdist workers (at least 1)."""
    if os.environ.get("OMP_NUM_THREADS"):
        return int(os.environ["OMP_NUM_THREADS"])
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 1)
    return max(1, min(2, (os.cpu_count() or 1) // workers))


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("LMLAB_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    mp.delenv("LMLAB_DATA_DIR", raising=False)
    torch.set_num_threads(_threads())
    # Subprocesses (CLI runs, docs pages) share the cores with the other workers: more threads only contend.
    mp.setenv("OMP_NUM_THREADS", str(_threads()))
    yield
    mp.undo()


@pytest.fixture
def small_text() -> str:
    """A few kilobytes of varied English, enough for several context windows."""
    return varied_text()


def varied_text() -> str:
    """The text of `small_text`, for fixtures of a wider scope."""
    sentence = "the quick brown fox jumps over the lazy dog while seven wizards box and a jovial queen packs my bag"
    words = sentence.split(" ")
    gen = torch.Generator().manual_seed(0)
    lines = []
    for _ in range(300):
        idx = torch.randint(len(words), (8,), generator=gen).tolist()
        lines.append(" ".join(words[i] for i in idx) + ".")
    return "\n".join(lines) + "\n"


@pytest.fixture
def corpus_file(tmp_path, small_text):
    path = tmp_path / "corpus.txt"
    path.write_text(small_text)
    return path


@pytest.fixture
def compiled_here():
    """Inductor compiles in the test, with no on-disk cache to read a step back from (`config.patch`: a
    monkeypatched inductor config does not come back after the undo)."""
    with torch._inductor.config.patch(fx_graph_cache=False), torch._functorch.config.patch(enable_autograd_cache=False):
        yield


def tiny_cfg(preset: str = "llama", **overrides):
    """A small validated ModelConfig from a preset."""
    from lmlab.config import ModelConfig

    base = dict(n_layer=2, n_head=4, d_model=32, vocab_size=61, max_seq_len=32)
    base.update(overrides)
    return ModelConfig.from_preset(preset, **base)


def pytest_terminal_summary(terminalreporter) -> None:
    """Print what tests recorded with `record_property("report", ...)` (e.g. the kill test's kill steps)."""
    for report in terminalreporter.stats.get("passed", []):
        for name, value in getattr(report, "user_properties", []):
            if name == "report":
                terminalreporter.write_line(f"{report.nodeid}: {value}")
