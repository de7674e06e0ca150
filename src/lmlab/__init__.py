"""lmlab: a plug-and-play transformer laboratory.

The public names are re-exported lazily (PEP 562) so that `lmlab --help` and `lmlab.reference`
never import torch.
"""

from __future__ import annotations

from lmlab.utils.lazy import lazy_getattr

__version__ = "0.1.0"

_EXPORTS = {
    "ModelConfig": "lmlab.config",
    "DataConfig": "lmlab.config",
    "TrainConfig": "lmlab.config",
    "RunConfig": "lmlab.config",
    "resolve_config": "lmlab.config",
    "list_presets": "lmlab.config",
    "build_model": "lmlab.model.build",
    "build_transformer": "lmlab.model.build",
    "CausalLM": "lmlab.model.transformer",
    "MiniTrainer": "lmlab.trainer.mini_trainer",
    "Callback": "lmlab.trainer.callbacks",
    "RunDir": "lmlab.runs.run_dir",
    "load_run": "lmlab.infer.load",
    "train_from_config": "lmlab.pipeline.train",
    "ATTN": "lmlab.registry",
    "FFN": "lmlab.registry",
    "NORM": "lmlab.registry",
    "POS": "lmlab.registry",
    "EMBED": "lmlab.registry",
    "TOKENIZER": "lmlab.registry",
    "CharTokenizer": "lmlab.data.tokenizers.char",
    "SimpleCharacterTokenizer": "lmlab.data.tokenizers.char",
    "TextDataset": "lmlab.data.module",
    "TextDataModule": "lmlab.data.module",
}

__all__ = sorted(_EXPORTS)
__getattr__ = lazy_getattr(__name__, _EXPORTS)


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
