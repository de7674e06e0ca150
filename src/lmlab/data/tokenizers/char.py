"""Character-level tokenizer: one id per distinct character of the training text (nanoGPT's char model),
and one end-of-text id after them."""

from __future__ import annotations

import hashlib

from lmlab.errors import DataError, require
from lmlab.registry import TOKENIZER

UNKNOWN = "<character not in the vocabulary>"  # never a character, so never in `chars`
EOT = "<|endoftext|>"


@TOKENIZER.register("char", tags=("lossless",))
class CharTokenizer:
    """ids are positions in the sorted character set, then end-of-text; unseen characters are an error naming them.

    The end-of-text id separates documents, and is the symbol a scorer conditions the first character
    on (lm-evaluation-harness's rolling loglikelihood needs one). Runs saved without it load without
    it, so their models keep their shape."""

    name = "char"
    bos_id = None

    def __init__(self, chars: list[str], *, end_of_text: bool = True) -> None:
        self.chars = list(chars)
        self.stoi = {c: i for i, c in enumerate(self.chars)}
        self.eos_id = len(self.chars) if end_of_text else None

    @classmethod
    def train(cls, text: str, **_: object) -> CharTokenizer:
        """The tokenizer whose vocabulary is the set of characters in `text`."""
        if not text:
            raise DataError("tokenizer: cannot build a character vocabulary from empty text")
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        """Number of distinct characters, and end-of-text."""
        return len(self.chars) + (self.eos_id is not None)

    def encode(self, text: str) -> list[int]:
        """One id per character."""
        try:
            return [self.stoi[c] for c in text]
        except KeyError:
            unknown = sorted({c for c in text if c not in self.stoi})
            raise DataError(f"tokenizer: characters not in the vocabulary: {unknown[:10]!r}") from None

    def decode(self, ids: list[int]) -> str:
        """Concatenate the characters of the ids (end-of-text is not text, so it adds nothing)."""
        return "".join(self.chars[i] for i in ids if i != self.eos_id)

    def to_dict(self) -> dict:
        """The vocabulary, in id order, and whether end-of-text follows it."""
        return {"chars": self.chars, "end_of_text": self.eos_id is not None}

    @classmethod
    def from_dict(cls, data: dict) -> CharTokenizer:
        """Inverse of `to_dict`."""
        return cls(data["chars"], end_of_text=data.get("end_of_text", False))

    def fingerprint(self) -> str:
        """Hash of the vocabulary (a vocabulary without end-of-text keeps the hash it always had)."""
        text = "".join(self.chars) + ("\0" + EOT if self.eos_id is not None else "")
        return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]

    def hf_backend(self) -> tuple:
        """The same ids as a `tokenizers.Tokenizer` (one word per character) and its special tokens (end-of-text).

        A word-level model whose unknown-token symbol is not in its vocabulary raises on a character
        outside it, as `encode` does, where a BPE model would drop the character without a word."""
        tokenizers = require("tokenizers", "hf")
        tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab=dict(self.stoi), unk_token=UNKNOWN))
        tok.pre_tokenizer = tokenizers.pre_tokenizers.Split(tokenizers.Regex(r"[\s\S]"), behavior="isolated")
        tok.decoder = tokenizers.decoders.Fuse()  # characters join with nothing between them
        if self.eos_id is None:
            return tok, {}
        tok.add_special_tokens([EOT])  # the next id, len(chars)
        return tok, {"eos_token": EOT}


SimpleCharacterTokenizer = CharTokenizer  # the name char-GPT tutorials use
