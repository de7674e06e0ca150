"""`TextDataset` and `TextDataModule`: the data pipeline in the shape PyTorch and Lightning users expect.

They wrap what `lmlab train` uses (`load_corpus`, `build_tokenizer`, `prepare_tokens`: cached token
shards and the same train/validation split), so a hand-written loop sees exactly the tokens a run sees.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from lmlab.data.tokenizers.base import BaseTokenizer
from lmlab.errors import DataError


class TextDataset(Dataset):
    """Windows of `seq_len` + 1 tokens as (input, next-token target) pairs, one every `stride` tokens."""

    def __init__(self, tokens: Any, seq_len: int, *, stride: int = 1) -> None:
        if seq_len < 1 or stride < 1:
            raise DataError(f"TextDataset: seq_len and stride must be >= 1, got {seq_len} and {stride}")
        if len(tokens) < seq_len + 1:
            raise DataError(f"TextDataset: {len(tokens)} tokens is fewer than one window of {seq_len} + 1")
        self.tokens, self.seq_len, self.stride = tokens, seq_len, stride

    @classmethod
    def from_text(cls, text: str, tokenizer: BaseTokenizer, seq_len: int, *, stride: int = 1) -> TextDataset:
        """A dataset over `text` encoded with `tokenizer`."""
        return cls(np.asarray(tokenizer.encode(text), dtype=np.int64), seq_len, stride=stride)

    def __len__(self) -> int:
        return (len(self.tokens) - self.seq_len - 1) // self.stride + 1

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"TextDataset index {index} out of range for {len(self)} windows")
        start = (index % len(self)) * self.stride
        window = torch.from_numpy(np.asarray(self.tokens[start : start + self.seq_len + 1]).astype(np.int64))
        return window[:-1], window[1:]


class TextDataModule:
    """Corpus -> tokenizer -> cached token splits -> train/val `DataLoader`s (`setup()` first, as in Lightning).

    `data` is a corpus name (`shakespeare`, `pystdlib`), a path, `file:`/`dir:`/`hf:` spec, or a
    `DataConfig`; keyword arguments are `DataConfig` fields (`vocab_size`, `val_fraction`, ...). `tokenizer`
    is a spec to train (`char`, `bpe`, `hf:gpt2`) or a ready tokenizer object.
    Training windows start at every token and are shuffled; validation windows tile the split once.
    """

    def __init__(
        self,
        data: Any = "shakespeare",
        *,
        batch_size: int = 32,
        seq_len: int = 128,
        tokenizer: str | BaseTokenizer | None = None,
        num_workers: int = 0,
        seed: int = 0,
        **fields: Any,
    ) -> None:
        from lmlab.config import DataConfig

        if isinstance(tokenizer, str):  # a tokenizer spec (`char`, `bpe`, `hf:gpt2`) is a DataConfig field
            fields["tokenizer"], tokenizer = tokenizer, None
        if isinstance(data, DataConfig):
            self.config = data.model_copy(update=fields) if fields else data
        else:
            self.config = DataConfig(name=data, **fields)
        self.batch_size, self.seq_len, self.num_workers, self.seed = batch_size, seq_len, num_workers, seed
        self.tokenizer = tokenizer
        self.train_dataset: TextDataset | None = None
        self.val_dataset: TextDataset | None = None

    def setup(self, stage: str | None = None) -> None:
        """Read and tokenise the corpus (once; the token shards are cached on disk like a run's)."""
        from lmlab.data.datasets import prepare_data

        if self.train_dataset is not None:
            return
        _, self.tokenizer, splits = prepare_data(self.config, self.tokenizer)
        self.train_dataset = TextDataset(splits.train, self.seq_len)
        self.val_dataset = TextDataset(splits.val, self.seq_len, stride=self.seq_len)

    @property
    def vocab_size(self) -> int:
        """The tokenizer's vocabulary size (after `setup`)."""
        return self._ready().vocab_size

    def _ready(self) -> BaseTokenizer:
        if self.tokenizer is None or self.train_dataset is None:
            raise DataError("TextDataModule: call setup() before asking for data loaders or the vocabulary")
        return self.tokenizer

    def train_dataloader(self) -> DataLoader:
        """Shuffled (x, y) batches of the training split, reproducible from `seed`."""
        self._ready()
        generator = torch.Generator().manual_seed(self.seed)
        return DataLoader(
            self.train_dataset,
            batch_size=self.batch_size,
            shuffle=True,
            drop_last=True,
            generator=generator,
            num_workers=self.num_workers,
        )

    def val_dataloader(self) -> DataLoader:
        """(x, y) batches covering the validation split once, in order."""
        self._ready()
        return DataLoader(self.val_dataset, batch_size=self.batch_size, num_workers=self.num_workers)
