"""An encoder-decoder run's two word tokenizers as one transformers tokenizer, for `trust_remote_code=True`.

`lmlab export --format hf` copies this file beside `tokenizer.json` (the source vocabulary) and
`target_tokenizer.json` (the target vocabulary) of a seq2seq run. Text is encoded with the source
vocabulary, `text_target=` with the target one, and ids decode through the target one, as
transformers' Marian tokenizer does with its two vocabularies. Both append `<eos>`, as lmlab's
encoder input and training targets do.
"""

from __future__ import annotations

from typing import ClassVar

from tokenizers import Tokenizer
from transformers import PreTrainedTokenizerFast


class LmlabSeq2SeqTokenizer(PreTrainedTokenizerFast):
    """Source vocabulary in, target vocabulary out."""

    vocab_files_names: ClassVar[dict[str, str]] = {
        "tokenizer_file": "tokenizer.json",
        "target_tokenizer_file": "target_tokenizer.json",
    }

    @classmethod
    def convert_to_native_format(cls, trust_remote_code: bool = False, **kwargs) -> dict:
        """Load `tokenizer.json` as it is: transformers would otherwise rebuild a subclass's model from its vocab."""
        return kwargs

    def __init__(self, *args, target_tokenizer_file: str | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._source = self._tokenizer
        self._target = Tokenizer.from_file(target_tokenizer_file) if target_tokenizer_file else self._tokenizer

    def _switch_to_target_mode(self) -> None:
        self._tokenizer = self._target

    def _switch_to_input_mode(self) -> None:
        self._tokenizer = self._source

    def _decode(self, token_ids, skip_special_tokens: bool = False, **kwargs) -> str:
        """Generated ids are target ids."""
        current, self._tokenizer = self._tokenizer, self._target
        try:
            return super()._decode(token_ids, skip_special_tokens=skip_special_tokens, **kwargs)
        finally:
            self._tokenizer = current
