"""Every command that reads a run, on every kind of run: it works, or says why in one line (exit 2).

The kinds: a decoder, an encoder-decoder (seq2seq), a mixture-of-experts decoder and a resumed run.
A traceback, an exit code other than 0 and 2, or a server error (500) on any of them is a failure.
"""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from lmlab.cli.app import cli
from lmlab.runs.run_dir import RunDir
from tests.helpers import small_train_args

# The tests share one module fixture: under xdist they run in one worker, so it is built once.
pytestmark = pytest.mark.xdist_group("run_kinds")

KINDS = ("decoder", "seq2seq", "moe", "resumed")


def _train(root, tag: str, args: list[str]) -> RunDir:
    result = CliRunner().invoke(cli, ["train", *args, "--save-dir", str(root), "--run-tag", tag])
    assert result.exit_code == 0, result.output
    assert "--- sample" not in result.output  # --train.sample_tokens 0: no empty sample headers
    return RunDir.latest(root, tag)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, RunDir]:
    root = tmp_path_factory.mktemp("kinds")
    corpus = root / "corpus.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog.\n" * 60)
    small = small_train_args(corpus, layers=1, dim=16, heads=2, seq_len=16, batch=2, train__eval_iters=1)
    moe = ["--ffn", "moe", "--model.moe.n_experts", "2", "--model.moe.top_k", "1"]
    seq2seq = ["--preset", "seq2seq", "--data", "task:reverse:200", "--layers", "1", "--model.n_enc_layer", "1"]
    seq2seq += ["--dim", "16", "--heads", "2", "--context", "16", "--batch", "4", "--train.eval_iters", "1"]
    seq2seq += ["--train.sample_tokens", "0", "--no-progress"]
    out = {
        "decoder": _train(root, "decoder", [*small, "--max-steps", "2"]),
        "seq2seq": _train(root, "seq2seq", [*seq2seq, "--max-steps", "2"]),
        "moe": _train(root, "moe", [*small, *moe, "--max-steps", "2"]),
    }
    first = _train(root, "resumed", [*small, "--max-steps", "2"])
    resumed = _train(root, "resumed", [*small, "--max-steps", "3", "--train.resume", str(first.path)])
    assert resumed.path == first.path and len(resumed.resumes()) == 1
    out["resumed"] = resumed
    return out


def _commands(run: RunDir, out) -> list[list[str]]:
    r = str(run.path)
    return [
        ["eval", "--run", r, "--iters", "1"],
        ["generate", "--run", r, "--prompt", "the", "--max-new-tokens", "3"],
        ["translate", "--run", r, "a b"],
        ["export", "--run", r, "--format", "safetensors", "--out", str(out / "st")],
        ["export", "--run", r, "--format", "hf", "--out", str(out / "hf")],
        ["replay", r, "--steps", "2"],
        ["compare", r, "--out", str(out / "cmp")],
        ["inspect", "--run", r, "--prompt", "the lazy", "--out", str(out / "inspect")],
    ]


@pytest.mark.parametrize("kind", KINDS)
def test_every_command_works_or_refuses_in_one_line(runs, kind, tmp_path):
    for args in _commands(runs[kind], tmp_path):
        result = CliRunner().invoke(cli, args)
        where = f"{kind}: lmlab {' '.join(args[:3])}"
        assert result.exception is None or isinstance(result.exception, SystemExit), (where, result.exception)
        assert result.exit_code in (0, 2), (where, result.output)
        assert "Traceback" not in result.output, where
        if result.exit_code == 2:
            errors = [line for line in result.output.splitlines() if line.startswith("error:")]
            assert len(errors) == 1, (where, result.output)
    if (tmp_path / "hf" / "config.json").is_file():  # what export wrote, import reads back
        back = CliRunner().invoke(cli, ["import", "--hf", str(tmp_path / "hf"), "--save-dir", str(tmp_path / "in")])
        assert back.exit_code == 0, (kind, back.output)
    _serve_answers_or_refuses(runs[kind], kind)


def _serve_answers_or_refuses(run: RunDir, kind: str) -> None:
    """The server on this run: completions and chat answer (200) or say why not (400), never a 500."""
    from fastapi.testclient import TestClient

    from lmlab.infer.load import load_run
    from lmlab.infer.server import create_app

    client = TestClient(create_app({"m": load_run(run.path)}), raise_server_exceptions=False)
    body = {"model": "m", "max_tokens": 3}
    for route, extra in (
        ("completions", {"prompt": "the"}),
        ("chat/completions", {"messages": [{"role": "user", "content": "a"}]}),
    ):
        reply = client.post(f"/v1/{route}", json=body | extra)
        assert reply.status_code in (200, 400), (kind, route, reply.status_code, reply.text)


def test_seq2seq_runs_generate_export_and_serve(runs, tmp_path):
    from fastapi.testclient import TestClient

    from lmlab.infer.load import load_run
    from lmlab.infer.server import create_app

    run = str(runs["seq2seq"].path)
    gen = CliRunner().invoke(cli, ["generate", "--run", run, "--prompt", "a b c"])
    tr = CliRunner().invoke(cli, ["translate", "--run", run, "a b c"])
    assert gen.exit_code == 0 and tr.exit_code == 0
    assert gen.stdout.splitlines()[-1] == tr.stdout.splitlines()[-1]  # generate translates, greedily
    exported = CliRunner().invoke(cli, ["export", "--run", run, "--format", "hf", "--out", str(tmp_path / "hf")])
    assert exported.exit_code == 0 and "remote code (encoder-decoder)" in exported.output, exported.output
    client = TestClient(create_app({"s2s": load_run(run)}))
    reply = client.post("/v1/completions", json={"model": "s2s", "prompt": "a b c", "max_tokens": 15, "temperature": 0})
    assert reply.status_code == 200 and reply.json()["choices"][0]["text"] == tr.stdout.splitlines()[-1]


def test_last_is_the_newest_run(runs):
    root = runs["decoder"].path.parent
    assert RunDir.open(root / "last").path == RunDir.latest(root).path
    out = CliRunner().invoke(cli, ["eval", "--run", str(root / "last"), "--iters", "1"])
    assert out.exit_code == 0 and RunDir.latest(root).path.name in out.output
    none = CliRunner().invoke(cli, ["eval", "--run", str(root / "empty" / "last")])
    assert none.exit_code == 2 and "holds none" in none.output


def test_generate_and_serve_take_a_draft_and_compile(runs, monkeypatch):
    """--draft decodes speculatively and reports the acceptance rate; a draft with another tokenizer, or
    for several served runs, is refused in one line; --compile decodes through the static caches."""
    import lmlab.model.static_decode as static_decode

    monkeypatch.setattr(static_decode, "BACKEND", "aot_eager")
    big, small = str(runs["moe"].path), str(runs["decoder"].path)
    base = ["generate", "--run", big, "--prompt", "the", "--max-new-tokens", "6", "--temperature", "0"]
    plain = CliRunner().invoke(cli, base)
    spec = CliRunner().invoke(cli, [*base, "--draft", small, "--draft-tokens", "2"])
    assert spec.exit_code == 0, spec.output
    assert spec.stdout == plain.stdout and "proposed tokens accepted" in spec.stderr
    compiled = CliRunner().invoke(cli, [*base, "--compile"])
    assert compiled.exit_code == 0 and compiled.stdout == plain.stdout, compiled.output
    other = CliRunner().invoke(cli, [*base, "--draft", str(runs["seq2seq"].path)])
    assert other.exit_code == 2 and other.output.count("\n") == 1 and "sample.draft" in other.output
    two = CliRunner().invoke(cli, ["serve", "--run", big, "--run", small, "--draft", small, "--port", "0"])
    assert two.exit_code == 2 and "serve.draft: a draft serves one model; give one --run, not 2" in two.output
