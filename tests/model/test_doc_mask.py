"""Document masking for packed windows: a document's logits never depend on the document before it, and
positions restart, so each document computes what it would alone."""

import pytest
import torch
from click.testing import CliRunner

from lmlab.cli.app import cli
from lmlab.data.datasets import separator_id
from lmlab.data.tokenizers.char import CharTokenizer
from lmlab.errors import ConfigError, DataError
from lmlab.model.build import build_model
from lmlab.model.transformer import document_start_slots
from lmlab.trainer.mini_trainer import causal_lm_loss
from tests.conftest import tiny_cfg

SEP = 0


def _packed(first_len: int, doc: torch.Tensor, seed: int) -> torch.Tensor:
    first = torch.randint(1, 61, (1, first_len), generator=torch.Generator().manual_seed(seed))
    return torch.cat([first, torch.tensor([[SEP]]), doc], dim=1)


def test_document_start_slots():
    ids = torch.tensor([[5, 0, 7, 8, 0, 0, 3], [1, 2, 3, 4, 5, 6, 7]])
    assert document_start_slots(ids, 0).tolist() == [[0, 0, 2, 2, 2, 5, 6], [0] * 7]


@pytest.mark.parametrize(("preset", "pos"), [("llama", "rope"), ("gpt2", "learned"), ("llama", "alibi")])
@pytest.mark.parametrize("attn", ["sdpa", "mha", "mla", "sliding_window"])
def test_a_document_never_sees_the_one_before_it(preset, pos, attn):
    torch.manual_seed(0)
    extra = {"window": 4} if attn == "sliding_window" else {}
    model = build_model(tiny_cfg(preset, pos=pos, attn=attn, dropout=0.0, **extra)).eval()
    doc = torch.randint(1, 61, (1, 9))
    short, long = _packed(6, doc, 1), _packed(11, doc, 2)  # other tokens, another length before it
    with torch.no_grad():
        masked = [model(x, doc_sep=SEP).logits[:, -9:] for x in (short, long)]
        plain = [model(x).logits[:, -9:] for x in (short, long)]
        alone = model(doc).logits
    torch.testing.assert_close(masked[0], masked[1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(masked[0], alone, atol=1e-5, rtol=1e-5)  # positions restart too
    assert (plain[0] - plain[1]).abs().max() > 1e-3  # without the mask the previous document leaks in


def test_the_training_loss_on_a_document_ignores_the_previous_one():
    torch.manual_seed(0)
    model = build_model(tiny_cfg("llama", dropout=0.0))
    doc = torch.randint(1, 61, (1, 12))
    losses = []
    for x in (_packed(8, doc, 1), _packed(8, doc, 2)):
        y = x[:, 1:].clone()
        y[:, :9] = -100  # the loss inside the second document (its first token is predicted from the separator)
        losses.append(causal_lm_loss(model, (x[:, :-1], y), doc_sep=SEP))
    torch.testing.assert_close(losses[0], losses[1], atol=1e-6, rtol=1e-6)


def test_sparse_attention_without_document_masking_says_so():
    model = build_model(tiny_cfg("llama", attn="native_sparse", max_seq_len=64, dropout=0.0))
    x = _packed(6, torch.randint(1, 61, (1, 9)), 1)
    with pytest.raises(ConfigError, match="data.doc_mask: native_sparse attention has no document masking"):
        model(x, doc_sep=SEP)


def test_doc_mask_trains_and_needs_a_separator(tmp_path, corpus_file):
    from tests.helpers import small_train_args

    before_end_of_text = CharTokenizer(list("ab"), end_of_text=False)  # a char run saved without one
    with pytest.raises(DataError, match="data.doc_mask: tokenizer 'char' has no document separator; allowed with"):
        separator_id(before_end_of_text, "data.doc_mask")
    args = small_train_args(corpus_file, layers=1, dim=16, seq_len=32, batch=2, max_steps=3)
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(6):
        (docs / f"d{i}.txt").write_text(f"document {i} says hello and goodbye. " * 20)
    args = [a if a != f"file:{corpus_file}" else f"dir:{docs}" for a in args]
    result = CliRunner().invoke(cli, ["train", *args, "--data.doc_mask", "--save-dir", str(tmp_path / "runs")])
    assert result.exit_code == 0, result.output
