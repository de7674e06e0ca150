"""A run's tokenizer as the `tokenizer.json` + `tokenizer_config.json` that `transformers.AutoTokenizer` loads.

Each lmlab tokenizer builds its own `tokenizers.Tokenizer` with the same ids (`hf_backend`); here it
becomes a `PreTrainedTokenizerFast` with the run's special tokens and no clean-up of spaces, so it
encodes and decodes as lmlab does. `export_run` checks that in a process without lmlab.
"""

from __future__ import annotations

from pathlib import Path

from lmlab.data.tokenizers.base import BaseTokenizer
from lmlab.errors import require

SPECIALS = ("bos_token", "eos_token", "pad_token")


def save_hf_tokenizer(tokenizer: BaseTokenizer, out: Path, context: int) -> dict[str, int | None]:
    """Write the tokenizer files into `out`; returns `bos_token_id`, `eos_token_id`, `pad_token_id` (None if absent)."""
    transformers = require("transformers", "hf")
    backend, specials = tokenizer.hf_backend()
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, clean_up_tokenization_spaces=False, model_max_length=context, **specials
    )
    fast.save_pretrained(out)
    return {f"{name}_id": backend.token_to_id(specials[name]) if name in specials else None for name in SPECIALS}


def tokenizer_probe(tokenizer: BaseTokenizer, rows: list[list[int]]) -> dict:
    """Texts (decoded from `rows`) with their lmlab ids, and those ids decoded again: what the export must match."""
    texts = [tokenizer.decode(row) for row in rows]
    encoded = [tokenizer.encode(t) for t in texts]
    return {"texts": texts, "encoded": encoded, "decoded": [tokenizer.decode(ids) for ids in encoded]}
