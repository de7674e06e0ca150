"""lm-evaluation-harness: lmlab's model class scores as lm-eval's HF class scores the run's export, every
tokenizer's export scores in lm-eval, and lmlab's own document scoring gives the same bits per byte.

The tasks are local (tests/infer/harness_tasks: multiple choice, a perplexity task and a short
generation task); nothing downloads.
"""

import json
import math
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from lmlab.cli.app import cli
from lmlab.infer.score import rolling_windows, score_pairs
from lmlab.model.build import build_model
from tests.conftest import tiny_cfg, varied_text
from tests.helpers import small_train_args

lm_eval = pytest.importorskip("lm_eval")
pytest.importorskip("transformers")

TASKS = Path(__file__).parent / "harness_tasks"
KINDS = {"char": [], "bpe": ["--tokenizer", "bpe", "--vocab-size", "300"], "word": ["--tokenizer", "word"]}


@pytest.mark.parametrize("n", [1, 5, 31, 32, 33, 64, 95, 97])
def test_rolling_windows_are_lm_evals_and_predict_every_token_once(n):
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

    ids = list(range(100, 100 + n))
    ours = rolling_windows(ids, 7, 32)
    theirs = [make_disjoint_window(w) for w in get_rolling_token_windows(ids, 7, 32, 1)]
    assert [(list(c), list(t)) for c, t in theirs] == ours
    assert [tok for _, t in ours for tok in t] == ids
    assert all(len(c) + len(t) <= 33 for c, t in ours)


def test_scores_in_batches_equal_scores_one_at_a_time_and_a_hand_sum():
    torch.manual_seed(0)
    model = build_model(tiny_cfg("llama", max_seq_len=16))
    model.eval()
    g = torch.Generator().manual_seed(1)
    pairs = [(torch.randint(0, 60, (c,), generator=g).tolist(), torch.randint(0, 60, (t,), generator=g).tolist())
             for c, t in [(1, 3), (5, 2), (12, 9), (3, 1), (20, 4)]]  # fmt: skip
    batched = score_pairs(model, pairs, max_len=16, batch_size=4)
    for (context, continuation), (logprob, greedy) in zip(pairs, batched, strict=True):
        full = (context + continuation)[-17:]
        with torch.no_grad():
            logits = model(torch.tensor([full[:-1]])).logits[0].log_softmax(-1)
        rows = logits[-len(continuation) :]
        expected = sum(float(rows[i, tok]) for i, tok in enumerate(continuation))
        assert logprob == pytest.approx(expected, abs=1e-4)
        assert greedy == all(int(rows[i].argmax()) == tok for i, tok in enumerate(continuation))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A small run of each tokenizer kind on the test corpus, and its HF export."""
    root = tmp_path_factory.mktemp("harness")
    corpus = root / "corpus.txt"
    corpus.write_text(varied_text())
    out = {}
    for kind, flags in KINDS.items():
        save = root / kind
        args = small_train_args(corpus, layers=1, dim=32, max_steps=10, train__eval_interval=100, train__lr=3e-3)
        result = CliRunner().invoke(cli, ["train", *args, *flags, "--save-dir", str(save)])
        assert result.exit_code == 0, result.output
        run = next(save.iterdir())
        result = CliRunner().invoke(
            cli, ["export", "--run", str(run), "--format", "hf", "--out", str(root / f"hf_{kind}")]
        )
        assert result.exit_code == 0, result.output
        out[kind] = (run, root / f"hf_{kind}")
    return out


def _evaluate(model: str, model_args: str, tasks: list[str]) -> dict:
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    import lmlab.infer.harness  # noqa: F401  registers "lmlab"

    out = simple_evaluate(
        model=model,
        model_args=model_args,
        tasks=tasks,
        task_manager=TaskManager(include_path=str(TASKS), include_defaults=False),
        device="cpu",
        batch_size=4,
        log_samples=False,
    )
    return out["results"]


def test_lmlab_model_class_scores_as_lm_eval_scores_the_hf_export(runs, monkeypatch):
    monkeypatch.chdir(TASKS)  # the task files name their data relative to here
    run, export = runs["char"]
    tasks = ["lmlab_test_mc", "lmlab_test_ppl", "lmlab_test_gen"]
    ours = _evaluate("lmlab", f"run={run}", tasks)
    theirs = _evaluate("hf", f"pretrained={export}", tasks)
    compared = 0
    for task in tasks:
        for metric, value in theirs[task].items():
            if isinstance(value, float) and "stderr" not in metric:
                assert math.isfinite(value) and ours[task][metric] == pytest.approx(value, rel=1e-4, abs=1e-4), (
                    task,
                    metric,
                )
                compared += 1
    assert compared >= 6  # acc, acc_norm, three perplexities, exact match
    assert 0 < theirs["lmlab_test_ppl"]["bits_per_byte,none"] < 8


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_tokenizers_export_scores_in_lm_eval_with_lmlabs_own_bits_per_byte(runs, kind, monkeypatch):
    monkeypatch.chdir(TASKS)
    run, export = runs[kind]
    theirs = _evaluate("hf", f"pretrained={export}", ["lmlab_test_ppl"])["lmlab_test_ppl"]
    result = CliRunner().invoke(cli, ["eval", "--run", str(run), "--documents", str(TASKS / "ppl.jsonl")])
    assert result.exit_code == 0, result.output
    ours = json.loads(result.output)
    assert math.isfinite(theirs["bits_per_byte,none"])
    assert ours["bits_per_byte"] == pytest.approx(theirs["bits_per_byte,none"], abs=1e-4)
    assert ours["word_perplexity"] == pytest.approx(theirs["word_perplexity,none"], rel=1e-4)
    assert (run / "eval" / "documents.json").is_file()


def test_lmlab_eval_harness_prints_lm_evals_table_and_keeps_the_results(runs, monkeypatch):
    monkeypatch.chdir(TASKS)
    run, _ = runs["word"]
    result = CliRunner().invoke(cli, ["eval", "--run", str(run), "--harness", "lmlab_test_mc", "--include", str(TASKS)])
    assert result.exit_code == 0, result.output
    assert "lmlab_test_mc" in result.output and "acc_norm" in result.output
    saved = json.loads((run / "eval" / "harness.json").read_text())
    assert 0 <= saved["results"]["lmlab_test_mc"]["acc,none"] <= 1
