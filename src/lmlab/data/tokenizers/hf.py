"""`hf:PATH_OR_NAME`: a HuggingFace tokenizer (local directory offline; a hub name downloads when online)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from lmlab.errors import ConfigError, DataError, require
from lmlab.registry import TOKENIZER


@TOKENIZER.register("hf", tags=("pretrained", "subword"))
class HFTokenizer:
    """The fast (Rust) tokenizer behind `AutoTokenizer`; its `tokenizer.json` is saved with the run."""

    name = "hf"

    def __init__(self, tokenizer_json: str, source: str, eos_id: int | None, bos_id: int | None) -> None:
        tokenizers = require("tokenizers", "hf")
        self.tok = tokenizers.Tokenizer.from_str(tokenizer_json)
        self.source, self.eos_id, self.bos_id = source, eos_id, bos_id

    @classmethod
    def train(cls, text: str = "", *, source: str | None = None, **_: object) -> HFTokenizer:
        """Load (not train) the tokenizer at `source`: a local directory, or a hub name (downloaded)."""
        if not source:
            raise ConfigError("data.tokenizer: 'hf' needs a path or name; allowed: hf:./my_tokenizer, hf:gpt2")
        transformers = require("transformers", "hf")
        local = Path(source).expanduser().is_dir()
        try:
            auto = transformers.AutoTokenizer.from_pretrained(
                str(Path(source).expanduser()) if local else source, local_files_only=local
            )
        except (OSError, ValueError) as exc:
            where = "the directory" if local else "the hub name (needs a network, or a local copy)"
            raise DataError(
                f"data.tokenizer: hf:{source}: could not load {where}: {str(exc).splitlines()[0]}"
            ) from None
        if not getattr(auto, "is_fast", False):
            raise DataError(f"data.tokenizer: hf:{source} has no fast (tokenizer.json) form; allowed: fast tokenizers")
        return cls(auto.backend_tokenizer.to_str(), source, auto.eos_token_id, auto.bos_token_id)

    @property
    def vocab_size(self) -> int:
        """Vocabulary size including added tokens."""
        return self.tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        """Token ids, without the tokenizer's automatic BOS/EOS."""
        return self.tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        """Text of the ids (special tokens dropped)."""
        return self.tok.decode(list(ids), skip_special_tokens=True)

    def to_dict(self) -> dict:
        """The full tokenizer, so the run decodes the same even if the source changes or vanishes."""
        return {
            "tokenizer_json": self.tok.to_str(),
            "source": self.source,
            "eos_id": self.eos_id,
            "bos_id": self.bos_id,
        }

    @classmethod
    def from_dict(cls, data: dict) -> HFTokenizer:
        """Inverse of `to_dict`."""
        return cls(data["tokenizer_json"], data["source"], data.get("eos_id"), data.get("bos_id"))

    def fingerprint(self) -> str:
        """Hash of the serialised tokenizer."""
        return hashlib.sha256(self.tok.to_str().encode()).hexdigest()[:16]

    def hf_backend(self) -> tuple:
        """The original `tokenizer.json` and its BOS/EOS tokens."""
        tokenizers = require("tokenizers", "hf")
        specials = {"bos_token": self.bos_id, "eos_token": self.eos_id}
        names = {k: self.tok.id_to_token(i) for k, i in specials.items() if i is not None}
        return tokenizers.Tokenizer.from_str(self.tok.to_str()), names
