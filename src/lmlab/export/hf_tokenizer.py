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
    return save_hf_tokenizer_backend(*tokenizer.hf_backend(), out, context)


def save_hf_tokenizer_backend(backend, specials: dict[str, str], out: Path, context: int) -> dict[str, int | None]:
    """`save_hf_tokenizer` for a `tokenizers.Tokenizer` and its special tokens."""
    transformers = require("transformers", "hf")
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


def save_seq2seq_tokenizer(source: BaseTokenizer, target: BaseTokenizer, out: Path, context: int) -> dict:
    """Write an encoder-decoder run's source and target vocabularies as `tokenization_lmlab.py`'s tokenizer.

    Each appends `<eos>` when transformers adds special tokens, as lmlab's encoder input and targets end.
    Returns the target's special ids (the decoder's).
    """
    import json
    import shutil

    import lmlab.export as export_package

    tokenizers = require("tokenizers", "hf")
    backends = []
    for tok in (source, target):
        backend, specials = tok.hf_backend()
        eos = specials["eos_token"]
        backend.post_processor = tokenizers.processors.TemplateProcessing(
            single=f"$A {eos}", pair=f"$A {eos} $B {eos}", special_tokens=[(eos, backend.token_to_id(eos))]
        )
        backends.append((backend, specials))
    save_hf_tokenizer_backend(*backends[0], out, context)
    backends[1][0].save(str(out / "target_tokenizer.json"))
    shutil.copy(Path(export_package.__file__).with_name("tokenization_lmlab.py"), out / "tokenization_lmlab.py")
    config_path = out / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["tokenizer_class"] = "LmlabSeq2SeqTokenizer"
    config["auto_map"] = {"AutoTokenizer": [None, "tokenization_lmlab.LmlabSeq2SeqTokenizer"]}
    config_path.write_text(json.dumps(config, indent=2))
    target_backend, target_specials = backends[1]
    return {f"{n}_id": target_backend.token_to_id(s) if (s := target_specials.get(n)) else None for n in SPECIALS}
