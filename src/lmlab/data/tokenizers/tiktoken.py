"""`tiktoken:NAME` (e.g. `tiktoken:gpt2`): OpenAI's BPE encodings, when tiktoken can read their files."""

from __future__ import annotations

from lmlab.errors import DataError, require
from lmlab.registry import TOKENIZER


@TOKENIZER.register("tiktoken", tags=("pretrained", "subword"))
class TiktokenTokenizer:
    """Wraps a `tiktoken.Encoding`; only its name is saved (tiktoken's own files are the vocabulary)."""

    name = "tiktoken"

    def __init__(self, encoding) -> None:
        self.enc = encoding
        self.eos_id = encoding.eot_token if "<|endoftext|>" in encoding.special_tokens_set else None
        self.bos_id = None

    @classmethod
    def train(cls, text: str = "", *, source: str | None = None, **_: object) -> TiktokenTokenizer:
        """The named encoding (default gpt2); tiktoken reads it from its cache or downloads it once."""
        tiktoken = require("tiktoken", "hf")
        name = source or "gpt2"
        try:
            return cls(tiktoken.get_encoding(name))
        except ValueError as exc:
            raise DataError(f"data.tokenizer: tiktoken:{name}: {exc}") from None
        except Exception as exc:  # network errors come from requests and urllib alike
            raise DataError(
                f"data.tokenizer: tiktoken:{name}: its files are not available here ({type(exc).__name__}); "
                "point TIKTOKEN_CACHE_DIR at a folder that holds them, or use the bpe or hf: tokenizers"
            ) from None

    @property
    def vocab_size(self) -> int:
        """Ids in the encoding, specials included."""
        return self.enc.n_vocab

    def encode(self, text: str) -> list[int]:
        """Token ids; special-token text is encoded as ordinary text."""
        return self.enc.encode_ordinary(text)

    def decode(self, ids: list[int]) -> str:
        """Text of the ids."""
        return self.enc.decode([i for i in ids if i != self.eos_id])

    def to_dict(self) -> dict:
        """The encoding's name."""
        return {"encoding": self.enc.name}

    @classmethod
    def from_dict(cls, data: dict) -> TiktokenTokenizer:
        """Inverse of `to_dict`."""
        return cls.train(source=data["encoding"])

    def fingerprint(self) -> str:
        """The encoding's name (tiktoken encodings are immutable by name)."""
        return f"tiktoken-{self.enc.name}"

    def hf_backend(self) -> tuple:
        """The encoding as a byte-level BPE `tokenizers.Tokenizer` with the same ids, and its end-of-text token."""
        from lmlab.data.tokenizers.byte import byte_symbols

        tokenizers = require("tokenizers", "hf")
        ranks: dict[bytes, int] = self.enc._mergeable_ranks
        symbol = byte_symbols()

        def text(b: bytes) -> str:
            return "".join(symbol[x] for x in b)

        # tiktoken merges the adjacent pair whose union has the lowest rank; BPE merges by list
        # order, so each token's ways of being built from two tokens are listed in its rank order.
        merges = []
        for token, rank in ranks.items():
            for i in range(1, len(token)):
                left, right = token[:i], token[i:]
                if left in ranks and right in ranks:
                    merges.append((rank, ranks[left], ranks[right], text(left), text(right)))
        merges.sort()
        vocab = {text(t): r for t, r in ranks.items()}
        model = tokenizers.models.BPE(vocab=vocab, merges=[(a, b) for *_, a, b in merges])
        tok = tokenizers.Tokenizer(model)
        tok.pre_tokenizer = tokenizers.pre_tokenizers.Sequence(
            [
                tokenizers.pre_tokenizers.Split(tokenizers.Regex(self.enc._pat_str), behavior="isolated"),
                tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
        tok.decoder = tokenizers.decoders.ByteLevel()
        for name, i in sorted(self.enc._special_tokens.items(), key=lambda kv: kv[1]):
            if i != tok.get_vocab_size(with_added_tokens=True):
                raise DataError(
                    f"tokenizer export: tiktoken:{self.enc.name} special token {name} has a gap before id {i}"
                )
            tok.add_special_tokens([name])
        return tok, ({"eos_token": "<|endoftext|>"} if self.eos_id is not None else {})
