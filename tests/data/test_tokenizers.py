"""Every registered tokenizer round-trips and saves with the run; pretrained ones load offline or say why not."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmlab.config import resolve_config
from lmlab.data.tokenizers.base import build_tokenizer, load_tokenizer, save_tokenizer
from lmlab.errors import ConfigError, DataError

TRAIN_TEXT = ("The quick brown fox jumps over the lazy dog. Ünïcödé, 日本語, emoji 🙂 and tabs\t.\n" * 200) + "".join(
    chr(c) for c in range(32, 2000)
)
BPE = build_tokenizer("bpe", TRAIN_TEXT, vocab_size=400)


@settings(max_examples=150, deadline=None)
@given(st.text())
def test_byte_and_bpe_round_trip_any_unicode(text):
    byte = build_tokenizer("byte", "")
    assert byte.decode(byte.encode(text)) == text
    assert BPE.decode(BPE.encode(text)) == text


@settings(max_examples=100, deadline=None)
@given(st.text(min_size=1))
def test_char_round_trips_on_its_own_text(text):
    tok = build_tokenizer("char", text)
    assert tok.decode(tok.encode(text)) == text


def test_word_round_trips_modulo_normalisation():
    tok = build_tokenizer("word", "Hello, World! it's fine.\n")
    assert tok.decode(tok.encode("HELLO,   world!")) == "hello, world!"
    assert tok.encode("unseen") == [3]


@pytest.mark.parametrize("spec", ["char", "byte", "word", "bpe"])
def test_tokenizers_save_and_load_with_the_run(tmp_path, spec):
    tok = build_tokenizer(spec, TRAIN_TEXT, vocab_size=300)
    save_tokenizer(tok, tmp_path / "tokenizer.json")
    again = load_tokenizer(tmp_path / "tokenizer.json")
    sample = "The lazy dog, 日本語."
    assert again.encode(sample) == tok.encode(sample) and again.fingerprint() == tok.fingerprint()
    assert again.vocab_size == tok.vocab_size


def test_bpe_learns_the_requested_vocabulary_and_compresses():
    assert BPE.vocab_size == 400 and BPE.eos_id == 0
    text = "The quick brown fox jumps over the lazy dog."
    assert len(BPE.encode(text)) < len(text.encode()) / 2  # merges learned, not just bytes
    with pytest.raises(DataError, match="too small for byte-level BPE"):
        build_tokenizer("bpe", "abc", vocab_size=100)


def test_hf_tokenizer_from_a_local_directory(tmp_path):
    transformers = pytest.importorskip("transformers")
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=BPE.tok, eos_token="<|endoftext|>")
    fast.save_pretrained(tmp_path / "tok")
    tok = build_tokenizer(f"hf:{tmp_path / 'tok'}", "")
    text = "The quick brown fox, 🙂"
    assert tok.encode(text) == BPE.encode(text) and tok.decode(tok.encode(text)) == text
    assert tok.eos_id == 0 and tok.vocab_size == 400
    save_tokenizer(tok, tmp_path / "saved.json")
    (tmp_path / "tok" / "tokenizer.json").unlink()  # the run keeps its own copy
    assert load_tokenizer(tmp_path / "saved.json").encode(text) == BPE.encode(text)
    with pytest.raises(DataError, match="could not load the directory"):
        build_tokenizer(f"hf:{tmp_path / 'tok'}", "")
    with pytest.raises(ConfigError, match="'hf' needs a path or name"):
        build_tokenizer("hf", "")


def test_tiktoken_offline_is_a_clear_error_and_its_wrapper_round_trips(tmp_path, monkeypatch):
    tiktoken = pytest.importorskip("tiktoken")
    from lmlab.data.tokenizers.tiktoken import TiktokenTokenizer

    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "empty"))
    monkeypatch.setattr("requests.get", lambda *a, **k: (_ for _ in ()).throw(ConnectionError("offline")))
    with pytest.raises(DataError, match="tiktoken:gpt2: its files are not available here"):
        build_tokenizer("tiktoken:gpt2", "")
    ranks = {bytes([i]): i for i in range(256)}
    enc = tiktoken.Encoding(
        name="bytes", pat_str=r"\S+|\s+", mergeable_ranks=ranks, special_tokens={"<|endoftext|>": 256}
    )
    tok = TiktokenTokenizer(enc)
    assert tok.eos_id == 256 and tok.vocab_size == 257
    assert tok.decode(tok.encode("héllo <|endoftext|> 🙂")) == "héllo <|endoftext|> 🙂"


def test_unknown_tokenizer_names_the_known_ones():
    with pytest.raises(ConfigError, match=r"data.tokenizer: unknown tokenizer 'bpee'.*bpe"):
        resolve_config(cli={"data": {"tokenizer": "bpee"}})
    assert resolve_config(cli={"data": {"tokenizer": "HF:./x"}}).data.tokenizer == "hf:./x"
