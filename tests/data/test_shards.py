"""The parallel shard cache: same tokens as one process, reuse and rebuild, documents, bad input, `lmlab prepare`."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from lmlab.cli.app import cli
from lmlab.config import DataConfig
from lmlab.data.datasets import RandomWindowLoader, document_starts, prepare_data, prepare_tokens, resolve_dtype
from lmlab.data.shards import ShardedTokens, split_pieces
from lmlab.data.sources import load_corpus
from lmlab.data.tokenizers.base import build_tokenizer
from lmlab.errors import DataError


@pytest.fixture
def big_text():
    """About 1.2 MB: several pieces, so two workers really split it."""
    lines = [f"line {i}: the quick brown fox {i % 97} jumps — über ☃ {i * 7 % 13}\n" for i in range(24_000)]
    return "".join(lines)


@pytest.mark.parametrize("spec", ["char", "byte", "bpe"])
def test_two_workers_give_the_same_tokens_as_one(tmp_path, big_text, spec):
    path = tmp_path / "c.txt"
    path.write_text(big_text)
    corpus = load_corpus(f"file:{path}")
    tok = build_tokenizer(spec, big_text[:200_000] if spec == "bpe" else big_text, vocab_size=512)
    one = prepare_tokens(corpus, tok, tmp_path / "one", 0.05, workers=1)
    two = prepare_tokens(corpus, tok, tmp_path / "two", 0.05, workers=2)
    assert two.meta["processes"] == 2 and len(two.meta["cache"]) and not two.meta["reused"]
    manifest = json.loads(
        (tmp_path / "two" / "tokens" / two.meta["cache"].split("/")[-1] / "manifest.json").read_text()
    )
    assert len(manifest["shards"]) >= 4 and sum(s["tokens"] for s in manifest["shards"]) == two.meta["n_tokens"]
    a = np.concatenate([np.asarray(one.train), np.asarray(one.val)])
    b = np.concatenate([np.asarray(two.train), np.asarray(two.val)])
    assert np.array_equal(a, b)
    if spec != "bpe":  # bpe merges are whole-text; char and byte are exactly the direct encoding
        assert a.tolist() == tok.encode(big_text)
    tail = tok.decode(np.asarray(two.val).tolist())  # may open mid-character for byte-level tokenizers
    assert len(tail) == two.meta["val_chars"] and big_text.endswith(tail[1:])


def test_reused_when_unchanged_rebuilt_when_source_or_tokenizer_changes(tmp_path, big_text):
    path = tmp_path / "c.txt"
    path.write_text(big_text[:300_000])
    cfg = DataConfig(name=f"file:{path}", tokenizer="byte", cache_dir=str(tmp_path / "cache"), workers=2)
    first = prepare_data(cfg)[2].meta
    again = prepare_data(cfg)[2].meta
    assert again["reused"] and again["cache"] == first["cache"]
    path.write_text(big_text[:300_000] + "one more line\n")
    changed = prepare_data(cfg)[2].meta
    assert not changed["reused"] and changed["cache"] != first["cache"]
    other_tok = prepare_data(cfg.model_copy(update={"tokenizer": "char"}))[2].meta
    assert not other_tok["reused"] and other_tok["cache"] not in (first["cache"], changed["cache"])
    assert changed["sources"][0]["sha256"] != first["sources"][0]["sha256"]


def test_directory_documents_are_separated_by_eos_and_aligned_windows_start_there(tmp_path):
    docs = tmp_path / "docs"
    (docs / "sub").mkdir(parents=True)
    texts = {"a.txt": "first document " * 20, "sub/b.txt": "second one " * 30, "c.md": "not matched"}
    for name, text in texts.items():
        (docs / name).write_text(text)
    cfg = DataConfig(name=f"dir:{docs}", tokenizer="byte", cache_dir=str(tmp_path / "cache"), val_fraction=0.05)
    corpus, tok, splits = prepare_data(cfg)
    assert corpus.documents == [texts["a.txt"], texts["sub/b.txt"]] and len(corpus.sources) == 2
    ids = np.concatenate([np.asarray(splits.train), np.asarray(splits.val)]).tolist()
    a = len(texts["a.txt"].encode())
    assert ids[a] == tok.eos_id and ids.count(tok.eos_id) == 2
    starts = document_starts(splits.train, tok)
    assert starts.tolist() == [0, a + 1]
    loader = RandomWindowLoader(splits.train, 8, 16, seed=0, starts=starts)
    x, _ = loader.sample()
    assert set(x[:, 0].tolist()) <= {ord("f"), ord("s")}  # every window opens a document
    md = DataConfig(name=f"dir:{docs}:*.md", tokenizer="byte", cache_dir=str(tmp_path / "cache"))
    assert prepare_data(md)[0].documents == ["not matched"]


def test_hf_dataset_from_a_local_folder(tmp_path):
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_dict({"text": ["hello world", "", "second row"]}).to_parquet(tmp_path / "d" / "train.parquet")
    corpus = load_corpus(f"hf:{tmp_path / 'd'}")
    assert corpus.documents == ["hello world", "second row"]
    with pytest.raises(DataError, match="could not be loaded"):
        load_corpus(f"hf:{tmp_path / 'missing'}")


def test_bad_input_is_clear(tmp_path):
    bad = tmp_path / "docs"
    bad.mkdir()
    (bad / "ok.txt").write_text("fine\n")
    (bad / "broken.txt").write_bytes("caf\u00e9 ".encode() + b"\xff\xfe tail")
    with pytest.raises(DataError, match=r"broken.txt is not UTF-8 at byte offset 6 \(byte 0xff\).*data.errors=replace"):
        load_corpus(f"dir:{bad}")
    replaced = load_corpus(f"dir:{bad}", errors="replace")
    assert "\ufffd" in replaced.documents[0]
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(DataError, match="is empty"):
        load_corpus(f"file:{tmp_path / 'empty.txt'}")
    with pytest.raises(DataError, match="no files match"):
        load_corpus(f"dir:{bad}:*.csv")
    with pytest.raises(DataError, match="uint16 holds ids below 65,536, but the tokenizer has 70,000"):
        resolve_dtype("uint16", 70_000)
    assert resolve_dtype("auto", 70_000) == np.uint32


def test_corpus_smaller_than_a_context_window_fails_in_train(tmp_path):
    path = tmp_path / "tiny.txt"
    path.write_text("just a few words\n")
    result = CliRunner().invoke(
        cli, ["train", "--data", f"file:{path}", "--seq-len", "64", "--save-dir", str(tmp_path)]
    )
    assert result.exit_code == 2 and "smaller than one context window of 64" in result.output


def test_sharded_view_gathers_across_shard_boundaries(tmp_path):
    for i, arr in enumerate([np.arange(0, 5), np.arange(5, 7), np.arange(7, 20)]):
        arr.astype(np.uint16).tofile(tmp_path / f"s{i}.bin")
    view = ShardedTokens([tmp_path / f"s{i}.bin" for i in range(3)], [5, 2, 13], np.uint16)
    assert len(view) == 20 and view[np.array([[3, 4, 5, 6, 7], [0, 19, 8, 6, 5]])].tolist() == [
        [3, 4, 5, 6, 7],
        [0, 19, 8, 6, 5],
    ]
    tail = view[4:12]
    assert len(tail) == 8 and tail[np.arange(8)].tolist() == list(range(4, 12))
    assert np.asarray(tail).tolist() == list(range(4, 12)) and view[6:6].tolist() == []
    # A view ends where it ends: iteration and scalar indexing never read the next tokens of the shards.
    assert [int(t) for t in tail] == list(range(4, 12)) and tail[-1] == 11
    with pytest.raises(IndexError):
        tail[8]
    assert [len("".join(t)) for t in split_pieces("ab\ncd\nef\n", None, 4)] == [3, 3, 3]


def test_prepare_command_prints_stats_and_reuses(tmp_path, big_text):
    path = tmp_path / "c.txt"
    path.write_text(big_text)
    args = ["prepare", "--data", f"file:{path}", "--tokenizer", "byte", "--data.cache_dir", str(tmp_path / "c")]
    first = CliRunner().invoke(cli, args)
    assert first.exit_code == 0, first.output
    assert "1,219,998 chars" in first.output or "chars" in first.output
    assert "(built)" in first.output and "2 process(es)" in first.output
    second = CliRunner().invoke(cli, args)
    assert "(reused)" in second.output
