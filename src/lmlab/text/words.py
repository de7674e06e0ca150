"""Word-level tokenisation with four specials, shared by the NumPy reference and lmlab's `word` tokenizer.

Normalisation (documented, so round trips are exact modulo it): text is NFKC-normalised and
lower-cased; a token is a run of word characters (apostrophes inside a word stay: "don't",
"j'ai") or a single punctuation character. `decode` joins tokens with spaces but attaches
closing punctuation to the word before it, opening punctuation to the word after it and
`-` `/` to both, so
`encode(decode(encode(s))) == encode(s)` for every string.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIALS = (PAD, BOS, EOS, UNK)
PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3

TOKEN_PATTERN = r"\w+(?:['’]\w+)*|[^\w\s]"
_TOKEN = re.compile(TOKEN_PATTERN)
# The same split in Oniguruma (the `tokenizers` library's regex engine), whose \w also takes combining
# marks and whose \s leaves out \x1c-\x1f: Python's \w is letters, numbers and `_`, its \s adds those four.
ONIG_SPACE = r"[\s\x1c-\x1f]"
ONIG_TOKEN_PATTERN = r"[\p{L}\p{N}_]+(?:['’][\p{L}\p{N}_]+)*|[^\p{L}\p{N}_\s\x1c-\x1f]"
CLOSING = frozenset(".,!?;:%)]}»…")
OPENING = frozenset("([{«¿¡")
JOINING = frozenset("-/")  # no space on either side: "assieds-toi", "km/h"


def normalize(text: str) -> str:
    """NFKC and lower case: the only changes `tokenize` makes besides splitting."""
    return unicodedata.normalize("NFKC", text).lower()


def tokenize(text: str) -> list[str]:
    """Deterministic whitespace + punctuation split of the normalised text."""
    return _TOKEN.findall(normalize(text))


def detokenize(tokens: Iterable[str]) -> str:
    """Tokens back to text: spaces between words, none before closing or after opening punctuation."""
    out: list[str] = []
    glue = True
    for tok in tokens:
        if out and not glue and tok not in CLOSING and tok not in JOINING:
            out.append(" ")
        out.append(tok)
        glue = tok in OPENING or tok in JOINING
    return "".join(out)


class Vocab:
    """Token <-> id table; ids 0-3 are <pad>, <bos>, <eos>, <unk>."""

    def __init__(self, tokens: Iterable[str]) -> None:
        self.itos = list(SPECIALS) + [t for t in tokens if t not in SPECIALS]
        self.stoi = {t: i for i, t in enumerate(self.itos)}
        if len(self.stoi) != len(self.itos):
            raise ValueError("vocab: a token appears twice")

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, text: str, *, bos: bool = False, eos: bool = False) -> list[int]:
        """Ids of the text's tokens; unknown words become <unk>, never an error."""
        ids = [self.stoi.get(t, UNK_ID) for t in tokenize(text)]
        return ([BOS_ID] if bos else []) + ids + ([EOS_ID] if eos else [])

    def decode(self, ids: Iterable[int], *, stop_at_eos: bool = True) -> str:
        """Text of the ids, skipping <pad>/<bos> and stopping at <eos>; <unk> is kept visible."""
        tokens = []
        for i in ids:
            i = int(i)
            if i == EOS_ID and stop_at_eos:
                break
            if i in (PAD_ID, BOS_ID, EOS_ID):
                continue
            tokens.append(self.itos[i] if 0 <= i < len(self.itos) else UNK)
        return detokenize(tokens)

    def save(self, path: str | Path) -> None:
        """Write the table as JSON (a list of tokens in id order)."""
        Path(path).write_text(json.dumps({"kind": "word", "itos": self.itos}, ensure_ascii=False, indent=0))

    @classmethod
    def load(cls, path: str | Path) -> Vocab:
        """Read a table written by `save`."""
        data = json.loads(Path(path).read_text())
        if data.get("itos", [])[:4] != list(SPECIALS):
            raise ValueError(f"vocab: {path} is not a word vocabulary (specials missing)")
        return cls(data["itos"][4:])


def build_vocab(texts: Iterable[str], min_freq: int = 1, max_size: int | None = None) -> Vocab:
    """Tokens seen at least `min_freq` times, most frequent first (ties alphabetical: deterministic)."""
    counts = Counter(t for text in texts for t in tokenize(text))
    ranked = sorted((t for t, c in counts.items() if c >= min_freq), key=lambda t: (-counts[t], t))
    return Vocab(ranked[: max_size - len(SPECIALS)] if max_size else ranked)


def build_vocabs(pairs: list[tuple[str, str]], min_freq: int = 1) -> tuple[Vocab, Vocab]:
    """Source and target vocabularies of a list of (source, target) pairs."""
    return build_vocab((s for s, _ in pairs), min_freq), build_vocab((t for _, t in pairs), min_freq)
