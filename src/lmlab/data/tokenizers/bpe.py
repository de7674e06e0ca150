"""Byte-level BPE (GPT-2 style) trained locally on the run's corpus with HuggingFace `tokenizers`."""

from __future__ import annotations

import hashlib

from lmlab.errors import DataError, require
from lmlab.registry import TOKENIZER

EOT = "<|endoftext|>"


@TOKENIZER.register("bpe", tags=("lossless", "subword", "specials"))
class BPETokenizer:
    """Byte-level pre-tokenisation and decoding, so any Unicode text round-trips; `<|endoftext|>` is id 0."""

    name = "bpe"

    def __init__(self, tokenizer) -> None:
        self.tok = tokenizer
        self.eos_id = tokenizer.token_to_id(EOT)
        self.bos_id = None

    @classmethod
    def train(cls, text: str, *, vocab_size: int | None = None, **_: object) -> BPETokenizer:
        """Learn merges on `text` up to `vocab_size` ids (default 2048), 256 byte symbols + `<|endoftext|>` first."""
        tokenizers = require("tokenizers", "hf")
        vocab_size = vocab_size or 2048
        if vocab_size < 258:
            raise DataError(f"data.vocab_size: {vocab_size} is too small for byte-level BPE; allowed: >= 258")
        if not text:
            raise DataError("tokenizer: cannot train BPE on empty text")
        tok = tokenizers.Tokenizer(tokenizers.models.BPE())
        tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = tokenizers.decoders.ByteLevel()
        trainer = tokenizers.trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=[EOT],
            initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        chunk = 1 << 20
        tok.train_from_iterator((text[i : i + chunk] for i in range(0, len(text), chunk)), trainer=trainer)
        return cls(tok)

    @property
    def vocab_size(self) -> int:
        """Learned vocabulary size (specials included)."""
        return self.tok.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        """Token ids of the text."""
        return self.tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        """Text of the ids (specials dropped)."""
        return self.tok.decode(list(ids), skip_special_tokens=True)

    def to_dict(self) -> dict:
        """The whole tokenizer as HF `tokenizer.json` text."""
        return {"tokenizer_json": self.tok.to_str()}

    @classmethod
    def from_dict(cls, data: dict) -> BPETokenizer:
        """Inverse of `to_dict`."""
        tokenizers = require("tokenizers", "hf")
        return cls(tokenizers.Tokenizer.from_str(data["tokenizer_json"]))

    def fingerprint(self) -> str:
        """Hash of the serialised tokenizer."""
        return hashlib.sha256(self.tok.to_str().encode()).hexdigest()[:16]

    def hf_backend(self) -> tuple:
        """The tokenizer itself (it is a `tokenizers.Tokenizer`) and its end-of-text token."""
        tokenizers = require("tokenizers", "hf")
        return tokenizers.Tokenizer.from_str(self.tok.to_str()), {"eos_token": EOT}
