"""Byte tokenizer: the UTF-8 bytes of the text (ids 0-255) plus three specials; lossless for any text."""

from __future__ import annotations

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
