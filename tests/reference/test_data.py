"""Word tokenisation, pair files, synthetic tasks and padded batches of the reference."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lmlab.errors import DataError
from lmlab.text.pairs import (
    builtin_pairs,
    encode_pairs,
    load_examples,
    make_batch,
    read_pairs,
    save_examples,
    synthetic_pairs,
)
from lmlab.text.words import Vocab, build_vocab, build_vocabs, detokenize, tokenize


def test_specials_and_round_trip():
    v = build_vocab(["I am cold.", "i am hot!"])
    assert v.itos[:4] == ["<pad>", "<bos>", "<eos>", "<unk>"]
    assert v.itos[4:7] == ["am", "i", "."] or v.itos[4:6] == ["am", "i"]  # most frequent first
    ids = v.encode("I am cold.", bos=True, eos=True)
    assert ids[0] == 1 and ids[-1] == 2 and 3 not in ids
    assert v.decode(ids) == "i am cold."
    assert v.encode("i am frozen") == [v.stoi["i"], v.stoi["am"], 3]  # unknown word -> <unk>
    assert v.decode([v.stoi["i"], 3, 2, v.stoi["am"]]) == "i <unk>"  # stops at <eos>


def test_tokenize_splits_punctuation_and_keeps_elisions():
    assert tokenize("J'ai froid, n'est-ce pas ?") == ["j'ai", "froid", ",", "n'est", "-", "ce", "pas", "?"]
    assert detokenize(tokenize("Où est la gare ?")) == "où est la gare?"
    assert detokenize(tokenize("assieds-toi (vite).")) == "assieds-toi (vite)."


@given(st.text(max_size=80))
def test_round_trip_modulo_normalisation(text):
    toks = tokenize(text)
    assert tokenize(detokenize(toks)) == toks


def test_vocab_min_freq_is_deterministic_and_saves(tmp_path):
    pairs = [("a b b c", "x"), ("b c", "y y")]
    src, tgt = build_vocabs(pairs, min_freq=2)
    assert src.itos[4:] == ["b", "c"] and tgt.itos[4:] == ["y"]
    src.save(tmp_path / "v.json")
    assert Vocab.load(tmp_path / "v.json").itos == src.itos


def test_read_pairs_formats_and_bad_lines(tmp_path):
    tsv = tmp_path / "p.tsv"
    tsv.write_text(
        "# comment\nhello\tbonjour\tCC-BY 2.0 (France) Attribution: tatoeba.org #1 (a) & #2 (b)\n\nyes\toui\n"
    )
    assert read_pairs(tsv) == [("hello", "bonjour"), ("yes", "oui")]
    csv = tmp_path / "p.csv"
    csv.write_text('"hi, there",salut\nno,non\n')
    assert read_pairs(csv) == [("hi, there", "salut"), ("no", "non")]
    bad = tmp_path / "bad.tsv"
    bad.write_text("a\tb\nonly one field\nc\td\n")
    with pytest.raises(DataError, match=r"bad.tsv:2: expected source and target separated by a tab"):
        read_pairs(bad)
    with pytest.raises(DataError, match="does not exist"):
        read_pairs(tmp_path / "nope.tsv")


def test_builtin_enfr():
    pairs = builtin_pairs("enfr")
    assert 95 <= len(pairs) <= 120 and ("i am cold.", "j'ai froid.") in pairs


@pytest.mark.parametrize("task", ["copy", "reverse", "sort", "add"])
def test_synthetic_tasks(task):
    pairs = synthetic_pairs(task, 50, seed=1)
    assert pairs == synthetic_pairs(task, 50, seed=1) and len(pairs) == 50
    for src, tgt in pairs:
        s, t = src.split(), tgt.split()
        if task == "copy":
            assert t == s
        elif task == "reverse":
            assert t == s[::-1]
        elif task == "sort":
            assert t == sorted(s, key=int)
        else:
            a, b = "".join(s).split("+")
            assert int("".join(t)) == int(a) + int(b)


def test_make_batch_shapes_shift_and_masks(tmp_path):
    ex = [([5, 6, 2], [7, 8]), ([9, 2], [10])]
    b = make_batch(ex)
    assert b["X_ids"].dtype == np.int32
    assert b["X_ids"].tolist() == [[5, 6, 2], [9, 2, 0]]
    assert b["M_src"].tolist() == [[True, True, True], [True, True, False]]
    assert b["Y_in"].tolist() == [[1, 7, 8], [1, 10, 0]]
    assert b["Y_out"].tolist() == [[7, 8, 2], [10, 2, 0]]
    assert b["M_tgt"].tolist() == [[True, True, True], [True, True, False]]
    save_examples(tmp_path / "p.npz", ex)
    assert load_examples(tmp_path / "p.npz") == ex


def test_encode_pairs_adds_source_eos():
    src, tgt = build_vocabs([("a b", "c")])
    assert encode_pairs([("a b", "c")], src, tgt) == [([src.stoi["a"], src.stoi["b"], 2], [tgt.stoi["c"]])]
