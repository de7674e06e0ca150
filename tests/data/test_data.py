import hashlib

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lmlab.data import sources
from lmlab.data.datasets import RandomWindowLoader, prepare_tokens, token_dtype
from lmlab.data.sources import Corpus, load_corpus
from lmlab.data.tokenizers.base import load_tokenizer, save_tokenizer
from lmlab.data.tokenizers.char import CharTokenizer
from lmlab.errors import DataError


@settings(max_examples=200, deadline=None)
@given(st.text(min_size=1))
def test_char_round_trip_on_any_unicode(text):
    tok = CharTokenizer.train(text)
    assert tok.decode(tok.encode(text)) == text
    assert tok.vocab_size == len(set(text)) + 1 and tok.eos_id == len(set(text))  # the characters, then end-of-text


def test_char_tokenizer_saves_and_loads(tmp_path):
    tok = CharTokenizer.train("hello, wörld\n")
    save_tokenizer(tok, tmp_path / "t.json")
    again = load_tokenizer(tmp_path / "t.json")
    assert again.encode("wörld") == tok.encode("wörld") and again.fingerprint() == tok.fingerprint()


def test_a_char_tokenizer_saved_without_end_of_text_loads_as_it_was_trained(tmp_path):
    before = tmp_path / "old.json"
    before.write_text('{"name": "char", "chars": ["\\n", " ", "a", "b"]}')  # as runs saved it before end-of-text
    old = load_tokenizer(before)
    assert (old.vocab_size, old.eos_id, old.encode("ab\n")) == (4, None, [2, 3, 0])
    assert old.fingerprint() == hashlib.sha256(b"\n ab").hexdigest()[:16]  # the hash those runs recorded
    new = CharTokenizer.train("ab \n")
    assert (new.vocab_size, new.eos_id, new.decode([2, 4, 3])) == (5, 4, "ab")  # end-of-text decodes to nothing
    assert new.fingerprint() != old.fingerprint()


def test_unknown_characters_are_named():
    with pytest.raises(DataError, match="'z'"):
        CharTokenizer.train("abc").encode("abz")


def test_pystdlib_is_offline_and_deterministic():
    a = load_corpus("pystdlib", max_chars=50_000)
    b = load_corpus("pystdlib", max_chars=50_000)
    assert len(a.text) == 50_000 and a.sha256 == b.sha256
    assert "def " in a.text


def test_file_source_and_errors(tmp_path, corpus_file):
    assert load_corpus(f"file:{corpus_file}").text == corpus_file.read_text()
    with pytest.raises(DataError, match="file not found"):
        load_corpus(f"file:{tmp_path / 'missing.txt'}")
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"abc\xff\xfe")
    with pytest.raises(DataError, match="byte offset 3"):
        load_corpus(f"file:{bad}")
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(DataError, match="empty"):
        load_corpus(f"file:{empty}")
    with pytest.raises(DataError, match="known: pystdlib, shakespeare"):
        load_corpus("wikipedia")


def test_shakespeare_offline_without_copy_is_a_clear_error(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(sources.urllib.request, "urlopen", no_network)
    with pytest.raises(DataError, match="download failed .*LMLAB_DATA_DIR"):
        load_corpus("shakespeare", cache=str(tmp_path))


def test_shakespeare_uses_local_copy_and_checks_hash(tmp_path, monkeypatch):
    fake = b"First Citizen:\nBefore we proceed any further, hear me speak.\n"
    (tmp_path / "tinyshakespeare.txt").write_bytes(fake)
    monkeypatch.setenv("LMLAB_DATA_DIR", str(tmp_path))
    with pytest.raises(DataError, match="sha256"):
        load_corpus("shakespeare", cache=str(tmp_path / "cache"))
    monkeypatch.setattr(sources, "SHAKESPEARE_SHA256", __import__("hashlib").sha256(fake).hexdigest())
    assert load_corpus("shakespeare", cache=str(tmp_path / "cache")).text.startswith("First Citizen")


def test_tokens_are_cached_and_split(tmp_path, small_text):
    tok = CharTokenizer.train(small_text)
    corpus = Corpus("t", small_text, "abc")
    splits = prepare_tokens(corpus, tok, tmp_path, 0.1)
    assert len(splits.train) + len(splits.val) == len(small_text)
    assert len(splits.val) == int(len(small_text) * 0.1)
    assert tok.decode(splits.train[:50].tolist()) == small_text[:50]
    folder = next((tmp_path / "tokens").iterdir())
    mtime = (folder / "shard_00000.bin").stat().st_mtime_ns
    prepare_tokens(corpus, tok, tmp_path, 0.1)
    assert (folder / "shard_00000.bin").stat().st_mtime_ns == mtime  # reused, not rebuilt
    assert splits.train.dtype == np.uint16 and token_dtype(70_000) == np.uint32


def test_random_window_loader_targets_and_resume():
    tokens = np.arange(1000, dtype=np.uint16)
    loader = RandomWindowLoader(tokens, 4, 16, seed=0)
    x, y = loader.sample()
    assert x.shape == (4, 16) and torch.equal(y, x + 1)
    it = iter(loader)
    next(it)
    state = loader.state_dict()
    expected = [next(it) for _ in range(3)]
    other = RandomWindowLoader(tokens, 4, 16, seed=99)
    other.load_state_dict(state)
    got = [b for _, b in zip(range(3), iter(other), strict=False)]
    for (ex, ey), (gx, gy) in zip(expected, got, strict=True):
        assert torch.equal(ex, gx) and torch.equal(ey, gy)
    assert len(loader) == 999 // 64


def test_corpus_smaller_than_context_is_refused():
    with pytest.raises(DataError, match="smaller than one context window"):
        RandomWindowLoader(np.arange(10, dtype=np.uint16), 2, 16)


def test_sequential_loader_streams_every_token_once_and_resumes(tmp_path):
    from lmlab.data.datasets import iter_dataset

    path = tmp_path / "tokens.bin"
    np.arange(1000, dtype=np.uint16).tofile(path)
    loader = iter_dataset(path, 4, 10)
    assert len(loader) == 999 // 40
    batches = list(loader)
    xs = torch.cat([x.flatten() for x, _ in batches])
    assert torch.equal(xs, torch.arange(len(batches) * 40))  # contiguous, no overlap, no gap
    assert torch.equal(batches[0][1], batches[0][0] + 1)
    it = iter(loader)
    next(it)
    state = loader.state_dict()
    rest = [x for x, _ in it]
    again = iter_dataset(path, 4, 10)
    again.load_state_dict(state)
    assert all(torch.equal(a, b) for a, (b, _) in zip(rest, again, strict=True))
    ranks = [iter_dataset(path, 2, 10, rank=r, world=2) for r in (0, 1)]
    assert torch.equal(torch.cat([r.sample()[0] for r in ranks]), batches[0][0])  # ranks split the global batch


def _global_rows(loaders: list, micro_batches: int) -> list[list[int]]:
    """The first tokens of every row the ranks draw in `micro_batches` batches, rank after rank per batch."""
    rows = []
    for _ in range(micro_batches):
        rows += [x[:, 0].tolist() for x, _ in (loader.sample() for loader in loaders)]
    return [r for batch in rows for r in batch]


@pytest.mark.parametrize("kind", ["random", "sequential"])
def test_a_loader_resumes_at_another_split_of_the_global_batch(kind):
    from lmlab.data.datasets import SequentialLoader

    tokens = np.arange(2_000, dtype=np.uint16)

    def make(batch, world, accum, rank):
        split = {"rank": rank, "world": world, "accum": accum}
        if kind == "sequential":
            return SequentialLoader(tokens, batch, 8, **split)
        return RandomWindowLoader(tokens, batch, 8, seed=3, **split)

    two = [make(4, 2, 1, r) for r in range(2)]  # 2 ranks x 4 rows: 8 rows a step
    one = make(4, 1, 2, 0)  # 1 rank x 4 rows x 2 micro-batches: 8 rows a step
    assert len(two[0]) * 8 == len(one) * 4  # an epoch ends at the same row
    reference = make(4, 1, 2, 0)
    expected = _global_rows([reference], 6)
    before = _global_rows(two, 2)  # two steps at world 2
    state = two[0].state_dict()
    if kind == "random":
        state["consumed"] = 2  # the trainer's count: __iter__ advances it, sample() alone does not
    one.load_state_dict(state)
    if kind == "random":
        assert one.consumed == 4  # 2 batches of 8 rows are 4 of 4
    assert before + _global_rows([one], 2) == expected  # no row repeated or skipped
    if kind == "random":  # 16 rows into the epoch are no whole number of batches of 3 (a token offset always is)
        with pytest.raises(DataError, match="not a whole number of batches of 3 rows"):
            make(3, 1, 1, 0).load_state_dict(state)
