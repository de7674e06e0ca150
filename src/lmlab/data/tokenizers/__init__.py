"""Tokenizers behind the BaseTokenizer protocol, registered in `lmlab.registry.TOKENIZER`."""

from lmlab.data.tokenizers.base import BaseTokenizer, load_tokenizer

__all__ = ["BaseTokenizer", "load_tokenizer"]
