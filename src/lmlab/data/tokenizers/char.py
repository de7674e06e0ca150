"""Character-level tokenizer: one id per distinct character of the training text (nanoGPT's char model)."""

from __future__ import annotations

import hashlib

from lmlab.errors import DataError, require
from lmlab.registry import TOKENIZER

UNKNOWN = "<character not in the vocabulary>"  # never a character, so never in `chars`


@TOKENIZER.register("char", tags=("lossless",))
class CharTokenizer:
    """ids are positions in the sorted character set; unseen characters are an error naming them."""

    name = "char"
    eos_id = None  # no separator id: documents are simply concatenated
    bos_id = None

    def __init__(self, chars: list[str]) -> None:
        self.chars = list(chars)
        self.stoi = {c: i for i, c in enumerate(self.chars)}

    @classmethod
    def train(cls, text: str, **_: object) -> CharTokenizer:
        """The tokenizer whose vocabulary is the set of characters in `text`."""
        if not text:
            raise DataError("tokenizer: cannot build a character vocabulary from empty text")
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        """Number of distinct characters."""
        return len(self.chars)

    def encode(self, text: str) -> list[int]:
        """One id per character."""
        try:
            return [self.stoi[c] for c in text]
        except KeyError:
            unknown = sorted({c for c in text if c not in self.stoi})
            raise DataError(f"tokenizer: characters not in the vocabulary: {unknown[:10]!r}") from None

    def decode(self, ids: list[int]) -> str:
        """Concatenate the characters of the ids."""
        return "".join(self.chars[i] for i in ids)

    def to_dict(self) -> dict:
        """The vocabulary, in id order."""
        return {"chars": self.chars}

    @classmethod
    def from_dict(cls, data: dict) -> CharTokenizer:
        """Inverse of `to_dict`."""
        return cls(data["chars"])

    def fingerprint(self) -> str:
        """Hash of the vocabulary."""
        return hashlib.sha256("".join(self.chars).encode("utf-8", "surrogatepass")).hexdigest()[:16]

    def hf_backend(self) -> tuple:
        """The same ids as a `tokenizers.Tokenizer` (one word per character) and its special tokens (none).

        A word-level model whose unknown-token symbol is not in its vocabulary raises on a character
        outside it, as `encode` does, where a BPE model would drop the character without a word."""
        tokenizers = require("tokenizers", "hf")
        tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab=dict(self.stoi), unk_token=UNKNOWN))
        tok.pre_tokenizer = tokenizers.pre_tokenizers.Split(tokenizers.Regex(r"[\s\S]"), behavior="isolated")
        tok.decoder = tokenizers.decoders.Fuse()  # characters join with nothing between them
        return tok, {}


SimpleCharacterTokenizer = CharTokenizer  # the name char-GPT tutorials use
