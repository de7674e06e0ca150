"""Byte tokenizer: the UTF-8 bytes of the text (ids 0-255) plus three specials; lossless for any text."""

from __future__ import annotations

from lmlab.errors import require
from lmlab.registry import TOKENIZER

BOS, EOS, PAD = 256, 257, 258


@TOKENIZER.register("byte", tags=("lossless", "specials"))
class ByteTokenizer:
    """ids 0-255 are bytes; 256 <bos>, 257 <eos> (between documents), 258 <pad>. Nothing to train."""

    name = "byte"
    eos_id = EOS
    bos_id = BOS

    @classmethod
    def train(cls, text: str = "", **_: object) -> ByteTokenizer:
        """The byte tokenizer (its vocabulary does not depend on the text)."""
        return cls()

    @property
    def vocab_size(self) -> int:
        """256 bytes + 3 specials."""
        return 259

    def encode(self, text: str) -> list[int]:
        """The UTF-8 bytes of the text."""
        return list(text.encode("utf-8", "surrogatepass"))

    def encode_array(self, text: str):
        """The bytes as a uint8 array, without a Python list (fast path for large corpora)."""
        import numpy as np

        return np.frombuffer(text.encode("utf-8", "surrogatepass"), dtype=np.uint8)

    def decode(self, ids: list[int]) -> str:
        """Bytes back to text (specials dropped; a sequence cut inside a character decodes with U+FFFD)."""
        return bytes(i for i in ids if i < 256).decode("utf-8", "replace")

    def to_dict(self) -> dict:
        """Nothing to store."""
        return {}

    @classmethod
    def from_dict(cls, data: dict) -> ByteTokenizer:
        """Inverse of `to_dict`."""
        return cls()

    def fingerprint(self) -> str:
        """Constant: every byte tokenizer encodes alike."""
        return "byte-utf8-v1"

    def hf_backend(self) -> tuple:
        """The same ids as a `tokenizers.Tokenizer` (byte-level symbols, id = byte value) and its special tokens."""
        tokenizers = require("tokenizers", "hf")
        symbol = byte_symbols()
        tok = tokenizers.Tokenizer(tokenizers.models.BPE(vocab={symbol[b]: b for b in range(256)}, merges=[]))
        tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
        tok.decoder = tokenizers.decoders.ByteLevel()
        tok.add_special_tokens(["<bos>", "<eos>", "<pad>"])  # ids 256, 257, 258
        return tok, {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>"}


def byte_symbols() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table (the alphabet of byte-level BPE)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    moved = [b for b in range(256) if b not in keep]
    return {**{b: chr(b) for b in keep}, **{b: chr(256 + i) for i, b in enumerate(moved)}}
