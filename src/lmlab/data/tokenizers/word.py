"""Word tokenizer: the NumPy reference's word vocabulary behind the `BaseTokenizer` protocol.

Specials `<pad>=0, <bos>=1, <eos>=2, <unk>=3`; text is NFKC-normalised, lower-cased and split
into words and single punctuation marks (see `lmlab.text.words`), so
`decode(encode(s))` equals `s` up to that normalisation. Unknown words encode to `<unk>`, which
decodes visibly; `decode` drops `<pad>`, `<bos>` and `<eos>` and goes on past them, as the exported
tokenizer's `decode(ids, skip_special_tokens=True)` does: stopping at `<eos>` is generation's job.
"""

from __future__ import annotations

import hashlib

from lmlab.errors import DataError, require
from lmlab.registry import TOKENIZER
from lmlab.text.words import (
    BOS,
    CLOSING,
    EOS,
    JOINING,
    ONIG_SPACE,
    ONIG_TOKEN_PATTERN,
    OPENING,
    PAD,
    UNK,
    Vocab,
    build_vocab,
)


@TOKENIZER.register("word", tags=("normalising", "specials"))
class WordTokenizer:
    """Most frequent words first after the four specials."""

    name = "word"
    eos_id = 2
    bos_id = 1

    def __init__(self, vocab: Vocab) -> None:
        self.vocab = vocab

    @classmethod
    def train(cls, text: str, min_freq: int = 1, **_: object) -> WordTokenizer:
        """The vocabulary of every word in `text` seen at least `min_freq` times."""
        if not text.strip():
            raise DataError("tokenizer: cannot build a word vocabulary from empty text")
        return cls(build_vocab(text.splitlines(), min_freq))

    @property
    def vocab_size(self) -> int:
        """Words plus the four specials."""
        return len(self.vocab)

    def encode(self, text: str, *, bos: bool = False, eos: bool = False) -> list[int]:
        """Word ids; unknown words become <unk>."""
        return self.vocab.encode(text, bos=bos, eos=eos)

    def decode(self, ids: list[int]) -> str:
        """Text of the ids, <pad>/<bos>/<eos> dropped."""
        return self.vocab.decode(ids, stop_at_eos=False)

    def to_dict(self) -> dict:
        """The words in id order (specials included)."""
        return {"itos": self.vocab.itos}

    @classmethod
    def from_dict(cls, data: dict) -> WordTokenizer:
        """Inverse of `to_dict`."""
        return cls(Vocab(data["itos"][4:]))

    def fingerprint(self) -> str:
        """Hash of the vocabulary."""
        return hashlib.sha256("\n".join(self.vocab.itos).encode("utf-8", "surrogatepass")).hexdigest()[:16]

    def hf_backend(self) -> tuple:
        """The same ids and spacing as a `tokenizers.Tokenizer` (NFKC, lower case, word/punctuation split)."""
        tokenizers = require("tokenizers", "hf")
        decoders, regex = tokenizers.decoders, tokenizers.Regex
        tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab=dict(self.vocab.stoi), unk_token=UNK))
        tok.normalizer = tokenizers.normalizers.Sequence(
            [tokenizers.normalizers.NFKC(), tokenizers.normalizers.Lowercase()]
        )
        tok.pre_tokenizer = tokenizers.pre_tokenizers.Sequence(
            [
                tokenizers.pre_tokenizers.Split(regex(ONIG_SPACE + "+"), behavior="removed"),
                tokenizers.pre_tokenizers.Split(regex(ONIG_TOKEN_PATTERN), behavior="isolated"),
            ]
        )
        # `detokenize` as decoder steps: mark each token's sides that take a space, drop the marks
        # on punctuation that glues, join, and turn each pair of facing marks into one space.
        left, right = "\ue000", "\ue001"
        steps = [decoders.Replace(regex("^"), left), decoders.Replace(regex("$"), right)]
        steps += [decoders.Replace(left + c, c) for c in sorted(CLOSING | JOINING)]
        steps += [decoders.Replace(c + right, c) for c in sorted(OPENING | JOINING)]
        steps += [decoders.Fuse(), decoders.Replace(right + left, " ")]
        steps += [decoders.Replace(right, ""), decoders.Replace(left, "")]
        tok.decoder = decoders.Sequence(steps)
        tok.add_special_tokens([PAD, BOS, EOS])  # already ids 0-2; <unk> stays an ordinary, visible token
        return tok, {"bos_token": BOS, "eos_token": EOS, "pad_token": PAD}
