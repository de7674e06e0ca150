"""The one pydantic schema for models, data, training and tracking, with presets and config sources.

Precedence, highest first: CLI > environment (``LMLAB_MODEL__N_LAYER=8``) > config file (YAML/JSON)
> preset > defaults. Every source is normalised to canonical field names before merging, so a foreign
alias (``n_embd``) in a file is overridden by a canonical flag (``--dim``) as expected.
"""

from __future__ import annotations

import difflib
import json
import math
import os
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from lmlab.errors import ConfigError

ENV_PREFIX = "LMLAB_"
Activation = Literal["gelu", "gelu_tanh", "relu", "silu", "leaky_relu"]

# Foreign names (HF, nanoGPT, Megatron) -> canonical names, per section.
ALIASES: dict[str, dict[str, str]] = {
    "model": {
        "n_embd": "d_model",
        "hidden_size": "d_model",
        "dim": "d_model",
        "block_size": "max_seq_len",
        "n_positions": "max_seq_len",
        "max_position_embeddings": "max_seq_len",
        "num_layers": "n_layer",
        "num_hidden_layers": "n_layer",
        "n_layers": "n_layer",
        "num_heads": "n_head",
        "num_attention_heads": "n_head",
        "n_heads": "n_head",
        "num_key_value_heads": "n_kv_head",
        "n_kv_heads": "n_kv_head",
        "intermediate_size": "d_ff",
        "n_inner": "d_ff",
        "ffn_dim": "d_ff",
        "position_encoding": "pos",
        "normalization": "norm",
        "attn_impl": "attn",
        "mlp_impl": "ffn",
    },
    "data": {"dataset": "name", "corpus": "name", "dataset_path": "name", "tokenizer_type": "tokenizer"},
    "train": {
        "batch": "batch_size",
        "learning_rate": "lr",
        "max_iters": "max_steps",
        "warmup_iters": "warmup_steps",
        "lr_decay_iters": "decay_steps",
        "gradient_accumulation_steps": "grad_accum",
        "output": "save_dir",
        "out_dir": "save_dir",
        "use_compile": "compile",
        "use_amp": "precision",
    },
}


class Section(BaseModel):
    """Base for every config section: unknown keys are errors, foreign aliases are accepted."""

    model_config = ConfigDict(extra="forbid", validate_default=True)

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise ConfigError(format_validation_error(exc, type(self), self._section_name())) from None

    @model_validator(mode="before")
    @classmethod
    def _canonical_names(cls, data: Any) -> Any:
        if isinstance(data, dict):
            return canonicalize(cls._section_name(), data)
        return data

    SECTION: ClassVar[str] = ""  # the section's name in a run config (`model`, `train`, ...), for messages

    @classmethod
    def _section_name(cls) -> str:
        return cls.SECTION


class OptionsSection(Section):
    """A section that also holds the settings its registered components declare in their own files
    (`model.rope.theta`, `train.muon.momentum`), each validated by that component's options class."""

    block_options: dict[str, Any] = Field(default_factory=dict, exclude=True, repr=False)

    @model_validator(mode="before")
    @classmethod
    def _block_options(cls, data: Any) -> Any:
        from lmlab.registry import option_sections

        if not isinstance(data, dict):
            return data
        data = canonicalize(cls.SECTION, data)
        given = data.pop("block_options", None) or {}
        options = {}
        for key, options_cls in option_sections(cls.SECTION).items():
            value = data.pop(key, given.get(key, {}))
            if isinstance(value, BaseModel):
                value = value.model_dump()
            try:
                options[key] = options_cls.model_validate(value or {})
            except ValidationError as exc:
                raise ValueError(format_validation_error(exc, options_cls, f"{cls.SECTION}.{key}")) from None
        return {**data, "block_options": options}

    def __getattr__(self, name: str) -> Any:
        options = self.__dict__.get("block_options") or {}
        if name in options:
            return options[name]
        return super().__getattr__(name)

    @model_serializer(mode="wrap")
    def _with_block_options(self, handler, info) -> dict[str, Any]:
        out = handler(self)
        out.update({k: v.model_dump(mode=info.mode) for k, v in self.block_options.items()})
        return out


# muP's learning-rate rule (lr / width multiplier for hidden matrices) is the one for optimizers whose step
# does not depend on the gradient's scale; SGD's and Muon's differ.
MUP_OPTIMIZERS = ("adamw", "lion")


class ModelConfig(OptionsSection):
    """Architecture of a decoder-only language model."""

    SECTION: ClassVar[str] = "model"

    arch: Literal["decoder", "seq2seq"] = Field(
        "decoder", description="decoder: causal LM; seq2seq: encoder-decoder (translation, synthetic tasks)"
    )
    vocab_size: int = Field(256, ge=2, description="(target) vocabulary size; set from the tokenizer when training")
    src_vocab_size: int | None = Field(None, ge=2, description="seq2seq: source vocabulary size; default vocab_size")
    n_enc_layer: int | None = Field(None, ge=1, description="seq2seq: encoder layers; default n_layer")
    share_embeddings: bool = Field(False, description="seq2seq: encoder and decoder share one embedding table")
    max_seq_len: int = Field(256, ge=1)
    n_layer: int = Field(4, ge=1)
    n_head: int = Field(4, ge=1)
    n_kv_head: int | None = Field(None, ge=1, description="key/value heads (GQA/MQA); default n_head")
    d_model: int = Field(128, ge=1)
    d_ff: int | None = Field(None, ge=1, description="hidden width of the FFN; default from the FFN's multiplier")
    attn: str = "sdpa"
    ffn: str = "mlp"
    norm: str = "layernorm"
    pos: str = "learned"
    embed: str = "token"
    activation: Activation = "gelu"
    norm_position: Literal["pre", "post"] = "pre"
    bias: bool = True
    qkv_bias: bool | None = Field(None, description="bias on the query/key/value projections; default `bias`")
    attn_proj_bias: bool | None = Field(None, description="bias on the attention output projection; default `bias`")
    ffn_bias: bool | None = Field(None, description="bias on the feed-forward layers; default `bias`")
    head_dim: int | None = Field(
        None, ge=1, description="width of one attention head; default d_model / n_head (n_head x head_dim may differ)"
    )
    tie_weights: bool = True
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    window: int | None = Field(
        None, ge=1, description="sliding-window attention span (tokens), for mha, sdpa, sliding_window"
    )
    attn_backend: Literal["auto", "eager", "flex", "sdpa"] = Field(
        "auto",
        description="how fused attentions compute a whole sequence: eager (a window in blocks, O(T*w)), flex "
        "(FlexAttention block masks, compiled; CPU has no backward), sdpa (one dense masked call); auto = flex "
        "on CUDA, else eager. Same weights and results; mha stays the explicit reference",
    )
    norm_eps: float = Field(1e-5, gt=0)
    init_std: float = Field(0.02, gt=0)
    mup_base_width: int | None = Field(
        None,
        ge=1,
        description="muP: the width whose init and learning rates a wider model scales from (hidden matrices at "
        "init_std / sqrt(m) and lr / m, logits x 1/m, m = d_model / this); unset = standard parametrisation",
    )

    @model_validator(mode="after")
    def _resolve(self) -> ModelConfig:
        from lmlab.registry import BLOCK_REGISTRIES

        for field_name, reg in BLOCK_REGISTRIES.items():
            setattr_raw(self, field_name, _lookup(reg, field_name, getattr(self, field_name)))
        if self.head_dim is None:
            if self.d_model % self.n_head:
                raise ValueError(
                    f"model.d_model: {self.d_model} is not divisible by n_head={self.n_head}; "
                    "allowed: a multiple of n_head, or an explicit model.head_dim"
                )
            setattr_raw(self, "head_dim", self.d_model // self.n_head)
        for name in ("qkv_bias", "attn_proj_bias", "ffn_bias"):
            if getattr(self, name) is None:
                setattr_raw(self, name, self.bias)
        if self.n_kv_head is None:
            setattr_raw(self, "n_kv_head", self.n_head)
        if self.n_head % self.n_kv_head:
            divisors = [k for k in range(1, self.n_head + 1) if self.n_head % k == 0]
            raise ValueError(
                f"model.n_kv_head: n_head={self.n_head} is not divisible by n_kv_head={self.n_kv_head}; "
                f"allowed: {', '.join(map(str, divisors))}"
            )
        if self.d_ff is None:
            setattr_raw(self, "d_ff", default_d_ff(self))
        if self.arch == "seq2seq":
            if self.n_enc_layer is None:
                setattr_raw(self, "n_enc_layer", self.n_layer)
            if self.src_vocab_size is None:
                setattr_raw(self, "src_vocab_size", self.vocab_size)
            if self.share_embeddings and self.src_vocab_size != self.vocab_size:
                raise ValueError(
                    f"model.share_embeddings: needs one vocabulary, but src_vocab_size={self.src_vocab_size} "
                    f"!= vocab_size={self.vocab_size}; allowed: false, or equal sizes"
                )
        check_combinations(self)
        return self

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> ModelConfig:
        """A validated model config from a named preset with field overrides."""
        data = deep_merge(load_preset(name).get("model", {}), canonicalize("model", overrides))
        return validate(cls, data, "model")

    def arch_name(self) -> str:
        """Short architecture name, e.g. ``4L-4H-128D-RoPE-RMS-SwiGLU-PreNorm``."""
        from lmlab.registry import ATTN, FFN, NORM, POS

        depth = f"{self.n_enc_layer}E{self.n_layer}D" if self.arch == "seq2seq" else f"{self.n_layer}L"
        parts = [depth, f"{self.n_head}H"]
        if self.n_kv_head != self.n_head:
            parts.append(f"{self.n_kv_head}KV")
        parts.append(f"{self.d_model}D")
        attn_short = ATTN.entry(self.attn).caps.get("short")
        if attn_short:
            parts.append(attn_short)
        ffn_short = FFN.entry(self.ffn).caps.get("short") or self.activation.upper()
        parts += [POS.entry(self.pos).caps["short"], NORM.entry(self.norm).caps["short"]]
        parts.append(ffn_short.format(act=_ACT_SHORT[self.activation], cfg=self))
        parts.append("PreNorm" if self.norm_position == "pre" else "PostNorm")
        return "-".join(parts)


_ACT_SHORT = {"gelu": "GELU", "gelu_tanh": "GELU", "relu": "ReLU", "silu": "SiLU", "leaky_relu": "LReLU"}


def setattr_raw(model: BaseModel, name: str, value: Any) -> None:
    """Set a field inside a validator without re-triggering validation."""
    object.__setattr__(model, name, value)


def _lookup(reg, field_name: str, value: str, section: str = "model") -> str:
    try:
        return reg.canonical(value)
    except ConfigError as exc:
        raise ValueError(f"{section}.{field_name}: {exc}") from None


def default_d_ff(cfg: ModelConfig) -> int:
    """FFN hidden width from the FFN's registered multiplier, rounded up to a multiple of 8."""
    from lmlab.registry import FFN

    mult = FFN.entry(cfg.ffn).caps.get("d_ff_mult", 4.0)
    return 8 * math.ceil(int(mult * cfg.d_model) / 8)


def check_combinations(cfg: ModelConfig) -> None:
    """Reject block combinations that a block's registry metadata declares unsupported or incomplete."""
    from lmlab.registry import BLOCK_REGISTRIES

    for field_name, reg in BLOCK_REGISTRIES.items():
        entry = reg.entry(getattr(cfg, field_name))
        if cfg.arch == "seq2seq" and field_name in ("attn", "pos") and not entry.caps.get("seq2seq"):
            able = [e.name for e in reg.entries() if e.caps.get("seq2seq")]
            raise ValueError(
                f"model.{field_name}: {reg.kind} '{entry.name}' has no encoder-decoder role; "
                f"allowed with arch=seq2seq: {', '.join(able)}"
            )
        for required in entry.caps.get("requires", []):
            if getattr(cfg, required) is None:
                raise ValueError(f"model.{required}: required by {reg.kind} '{entry.name}'; set it to a positive value")
        check = getattr(entry.cls, "check_config", None)
        if check is not None:
            check(cfg)  # block-specific rules, raising ValueError("model.<field>: ...")
        for other, allowed in entry.caps.get("supports", {}).items():
            value = getattr(cfg, other)
            if value not in allowed:
                raise ValueError(
                    f"model.{other}: {reg.kind} '{entry.name}' does not support {other}='{value}'; "
                    f"allowed with it: {', '.join(sorted(allowed))}"
                )


BUILTIN_CORPORA = ("pystdlib", "shakespeare")
CORPUS_PREFIXES = ("file", "dir", "hf", "pairs", "task")


class DataConfig(Section):
    """Where the text comes from and how it becomes tokens."""

    SECTION: ClassVar[str] = "data"

    name: str = Field(
        "pystdlib", description="pystdlib | shakespeare | file:PATH; seq2seq: pairs:enfr | pairs:PATH | task:NAME[:N]"
    )
    tokenizer: str = Field("char", description="char | byte | word | bpe | hf:PATH_OR_NAME | tiktoken:NAME")
    vocab_size: int | None = Field(None, ge=2, description="bpe: vocabulary size to learn (default 2048)")
    val_fraction: float = Field(0.1, gt=0.0, lt=1.0)
    max_chars: int | None = Field(None, ge=1, description="truncate the corpus to this many characters")
    cache_dir: str | None = Field(None, description="token cache; default $LMLAB_CACHE_DIR or ~/.cache/lmlab")
    sampling: Literal["random", "sequential"] = Field(
        "random", description="random windows (nanoGPT) or each token once per epoch, streamed in order"
    )
    align_bos: bool = Field(False, description="random sampling: every window starts at a document start")
    doc_mask: bool = Field(
        False,
        description="packed windows: tokens attend only within their document (up to each end-of-text "
        "separator), and positions restart per document; needs a tokenizer with a separator",
    )
    workers: int | None = Field(None, ge=1, description="tokenisation processes; default one per CPU core")
    errors: Literal["strict", "replace"] = Field(
        "strict", description="non-UTF-8 bytes: strict reports file and offset, replace substitutes U+FFFD"
    )
    token_dtype: Literal["auto", "uint16", "uint32"] = Field("auto", description="storage of token ids on disk")

    @field_validator("name")
    @classmethod
    def _corpus_or_path(cls, value: str) -> str:
        """A bare path that exists needs no prefix: a file is `file:PATH`, a folder `dir:PATH`."""
        if value in BUILTIN_CORPORA or value.split(":", 1)[0] in CORPUS_PREFIXES:
            return value
        path = Path(value).expanduser()
        if path.is_file():
            return f"file:{value}"
        if path.is_dir():
            return f"dir:{value}"
        raise ValueError(
            f"data.name: '{value}' is neither a known corpus ({', '.join(BUILTIN_CORPORA)}, "
            f"{', '.join(p + ':...' for p in CORPUS_PREFIXES)}) nor an existing file or folder"
        )

    @field_validator("tokenizer")
    @classmethod
    def _known_tokenizer(cls, value: str) -> str:
        from lmlab.registry import TOKENIZER

        name, sep, arg = value.partition(":")
        return _lookup(TOKENIZER, "tokenizer", name, section="data") + sep + arg


class TrainConfig(OptionsSection):
    """Optimisation, schedule, evaluation, checkpointing and run-directory settings."""

    SECTION: ClassVar[str] = "train"

    batch_size: int = Field(32, ge=1)
    seq_len: int | None = Field(None, ge=1, description="training context; default model.max_seq_len")
    grad_accum: int = Field(1, ge=1)
    max_steps: int | None = Field(None, ge=1)
    max_time: float | None = Field(None, gt=0, description="stop after this many seconds of training (a time budget)")
    epochs: float | None = Field(None, gt=0)
    lr: float = Field(1e-3, gt=0)
    min_lr: float | None = Field(None, ge=0, description="cosine floor; default lr/10")
    warmup_steps: int = Field(100, ge=0)
    decay_steps: int | None = Field(None, ge=1, description="cosine length; default the total steps")
    optim: str = Field(
        "adamw", description="optimizer (`lmlab list` shows them); its own settings are train.<name>.<field>"
    )
    weight_decay: float = Field(0.1, ge=0, description="decoupled decay on matrices; never on biases, norms, gains")
    decay_embeddings: bool = Field(
        True, description="decay the token/position embedding tables too (nanoGPT does); false exempts them"
    )
    beta1: float = Field(0.9, ge=0, lt=1, description="Adam-style first-moment decay (AdamW, and Muon's AdamW part)")
    beta2: float = Field(0.95, ge=0, lt=1, description="Adam-style second-moment decay")
    clip_grad: float | None = Field(1.0, gt=0)
    eval_interval: int = Field(250, ge=1)
    eval_iters: int = Field(20, ge=1)
    log_interval: int = Field(
        10, ge=1, description="steps per logged line: the loss logged is the interval's mean, read back once"
    )
    ckpt_interval: int | None = Field(None, ge=1, description="default eval_interval")
    keep_last: int = Field(2, ge=1)
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N | mps")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    seed: int = 1337
    save_dir: str = "runs"
    run_tag: str = ""
    resume: str | None = Field(None, description="auto | a run directory | a checkpoint directory")
    init_from: str | None = Field(
        None,
        description="fine-tune: start from this run's weights, architecture and tokenizer (e.g. from lmlab import)",
    )
    distributed: Literal["auto", "none", "ddp", "zero1", "fsdp"] = Field(
        "auto",
        description="data parallelism under torchrun; auto = ddp with several processes; zero1 = ddp with the "
        "optimizer state sharded across ranks (ZeRO stage 1)",
    )
    compile: bool = Field(False, description="torch.compile the model (falls back to eager with a warning)")
    fused_adamw: Literal["auto", "on", "off"] = Field(
        "auto", description="fused AdamW kernel; auto = when every parameter is a floating CUDA tensor"
    )
    tf32: bool = Field(True, description="TF32 for fp32 matmuls and convolutions on Ampere or newer GPUs")
    pin_memory: bool = Field(True, description="on CUDA: pinned host batches, copied with non_blocking")
    deterministic: bool = Field(
        False,
        description="torch.use_deterministic_algorithms for the process (and cuBLAS's fixed workspace): bitwise "
        "repeatable GPU runs, at some speed",
    )
    activation_checkpointing: Literal["none", "full", "every_n"] = "none"
    ac_every: int = Field(2, ge=1, description="with every_n: checkpoint every n-th block")
    nonfinite: Literal["skip", "stop"] = Field("skip", description="on a NaN/inf loss or gradient")
    early_stopping: int | None = Field(None, ge=1, description="stop after this many evals without improvement")
    peak_flops: float | None = Field(None, gt=0, description="peak FLOP/s for MFU (default: table or measured)")
    inspect_interval: int | None = Field(
        None,
        ge=1,
        description="steps between per-layer statistics sent to the trackers: activation RMS, attention entropy "
        "(on the step's first training row) and gradient norm (causal LM runs)",
    )
    progress: bool = True
    sample_tokens: int = Field(200, ge=0, description="tokens to sample after training")
    num_samples: int = Field(2, ge=0)

    @field_validator("precision", mode="before")
    @classmethod
    def _amp_switch(cls, value: Any) -> Any:
        # `use_amp: true|false` (llm-style configs) reads as a switch: on = auto mixed precision, off = fp32.
        if isinstance(value, bool) or (isinstance(value, str) and value.lower() in ("true", "false", "yes", "no")):
            return "auto" if TypeAdapter(bool).validate_python(value) else "fp32"
        return value

    @field_validator("optim")
    @classmethod
    def _known_optim(cls, value: str) -> str:
        from lmlab.registry import OPTIM

        return _lookup(OPTIM, "optim", value, section="train")

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.max_steps is None and self.epochs is None:
            setattr_raw(self, "max_steps", 1000)
        return self


class TrackConfig(Section):
    """Where metrics go: registered trackers (`lmlab list` shows them); jsonl is always written."""

    SECTION: ClassVar[str] = "track"

    trackers: list[str] = Field(
        default_factory=lambda: ["jsonl"],
        description="jsonl (metrics.jsonl in logs/), tensorboard, aim, wandb (stays local when WANDB_MODE is "
        "offline); extra [track]; comma-separated on the command line",
    )
    shared: bool = Field(
        True,
        description="runs under one save_dir share one Aim repo (.aim in it) and one TensorBoard root (tb/ in "
        "it, a folder per run), so `lmlab board` shows them side by side; false: each run keeps its own in logs/",
    )
    hist_interval: int = Field(100, ge=1, description="steps between parameter/gradient histograms")
    project: str = Field("lmlab", description="project name for W&B, experiment name for Aim")

    @model_validator(mode="before")
    @classmethod
    def _tracker_switches(cls, data: Any) -> Any:
        # `tensorboard: true` (earlier runs' configs, and a shorter flag) adds that tracker.
        if not isinstance(data, dict):
            return data
        data = dict(data)
        names = data.get("trackers", ["jsonl"])
        names = [n.strip() for n in names.split(",") if n.strip()] if isinstance(names, str) else list(names)
        for switch in ("tensorboard", "aim", "wandb"):
            if switch not in data:
                continue
            try:
                on = TypeAdapter(bool).validate_python(data.pop(switch))
            except ValidationError:
                raise ValueError(f"track.{switch}: not a boolean; allowed: true, false") from None
            if on:
                names.append(switch)
        data["trackers"] = names
        return data

    @field_validator("trackers")
    @classmethod
    def _known_trackers(cls, names: list[str]) -> list[str]:
        from lmlab.registry import TRACKER

        out = ["jsonl"]  # always on: compare, replay and the results page read it
        for name in names:
            canonical = _lookup(TRACKER, "trackers", name, section="track")
            if canonical not in out:
                out.append(canonical)
        return out


class RunConfig(BaseModel):
    """Everything a run did: the saved form of a run, and what `lmlab train` validates."""

    model_config = ConfigDict(extra="forbid")
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    track: TrackConfig = Field(default_factory=TrackConfig)
    preset: str | None = None
    sources: list[str] = Field(default_factory=list, exclude=True)  # config files read; copied into meta/

    @model_validator(mode="after")
    def _cross(self) -> RunConfig:
        pairs = self.data.name.startswith(("pairs:", "task:"))
        if self.model.arch == "seq2seq" and not pairs:
            raise ValueError(
                f"data.name: '{self.data.name}' is a text corpus, but model.arch=seq2seq trains on pairs; "
                "allowed: pairs:enfr, pairs:PATH, task:copy|reverse|sort|add[:N]"
            )
        if self.model.arch == "decoder" and pairs:
            raise ValueError(
                f"data.name: '{self.data.name}' holds sentence pairs; set model.arch=seq2seq to train on them"
            )
        if self.model.mup_base_width is not None:
            if self.model.arch == "seq2seq":
                raise ValueError("model.mup_base_width: muP scales causal LMs, not model.arch=seq2seq; allowed: unset")
            if self.train.optim not in MUP_OPTIMIZERS:
                raise ValueError(
                    f"model.mup_base_width: muP's learning-rate rule here is the one for Adam-style steps, not "
                    f"train.optim={self.train.optim}; allowed: {', '.join(MUP_OPTIMIZERS)}"
                )
            if self.model.mup_base_width % self.model.head_dim:
                raise ValueError(
                    f"model.mup_base_width: {self.model.mup_base_width} is not a multiple of the head width "
                    f"{self.model.head_dim}; allowed: multiples of {self.model.head_dim}"
                )
        if self.model.arch == "seq2seq" and self.train.inspect_interval:
            raise ValueError(
                "train.inspect_interval: per-layer statistics are for causal LM runs, not model.arch=seq2seq; "
                "allowed: unset"
            )
        seq = self.train.seq_len
        if seq is not None and seq > self.model.max_seq_len:
            raise ValueError(
                f"train.seq_len: {seq} exceeds model.max_seq_len={self.model.max_seq_len}; "
                f"allowed: 1..{self.model.max_seq_len} (the model's context is --context / model.max_seq_len)"
            )
        return self

    @property
    def seq_len(self) -> int:
        """The training context length."""
        return self.train.seq_len or self.model.max_seq_len

    def save(self, path: str | Path) -> None:
        """Write the full resolved config as JSON (or YAML by suffix)."""
        path = Path(path)
        data = self.model_dump(mode="json")
        text = yaml.safe_dump(data, sort_keys=False) if path.suffix in (".yaml", ".yml") else json.dumps(data, indent=2)
        path.write_text(text)

    @classmethod
    def load(cls, path: str | Path) -> RunConfig:
        """Read a saved config file back into a validated RunConfig."""
        return validate(cls, read_config_file(path), "")


SECTIONS: dict[str, type[Section]] = {
    "model": ModelConfig,
    "data": DataConfig,
    "train": TrainConfig,
    "track": TrackConfig,
}


# ----------------------------------------------------------------------------- sources and merging


def canonicalize(section: str, data: dict[str, Any]) -> dict[str, Any]:
    """Rename foreign aliases to canonical names; a key given twice under two names is an error."""
    aliases = ALIASES.get(section, {})
    out: dict[str, Any] = {}
    spelled: dict[str, str] = {}
    for key, value in data.items():
        name = aliases.get(key, key)
        if name in out:  # dict keys are unique, so a repeat means two spellings of one field
            raise ConfigError(f"{section}.{name}: given twice (as '{spelled[name]}' and '{key}')")
        out[name], spelled[name] = value, key
    return out


def section_fields(section: str) -> list[str]:
    """The keys a section accepts: its schema fields and the options sections of its registered components."""
    from lmlab.registry import option_sections

    names = [n for n in SECTIONS[section].model_fields if n != "block_options"]
    return names + list(option_sections(section))


def field_path(name: str) -> tuple[str, ...]:
    """`train.lr` -> ("train", "lr"); a bare name (`lr`, `d_model`, `n_embd`) is looked up across sections."""
    parts = tuple(name.strip().split("."))
    if parts[0] in SECTIONS:
        if len(parts) < 2:
            raise ConfigError(f"{name}: name a field of the section, e.g. {parts[0]}.{section_fields(parts[0])[0]}")
        return (parts[0], ALIASES.get(parts[0], {}).get(parts[1], parts[1]), *parts[2:])
    owners = [sec for sec in SECTIONS if ALIASES.get(sec, {}).get(parts[0], parts[0]) in section_fields(sec)]
    if len(owners) != 1:
        known = sorted({f for sec in SECTIONS for f in section_fields(sec)})
        close = difflib.get_close_matches(parts[0], known, n=1)
        why = f"in {' and '.join(owners)}; write section.field" if owners else "unknown field"
        hint = f"; did you mean '{close[0]}'?" if close and not owners else ""
        raise ConfigError(f"{name}: {why}{hint}; sections: {', '.join(SECTIONS)}")
    sec = owners[0]
    return (sec, ALIASES.get(sec, {}).get(parts[0], parts[0]), *parts[1:])


def nested(path: tuple[str, ...], value: Any) -> dict[str, Any]:
    """{"a": {"b": value}} from ("a", "b")."""
    out: Any = value
    for part in reversed(path):
        out = {part: out}
    return out


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"model": {"rope": {"theta": 1e4}}} -> {"model.rope.theta": 1e4}."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        out |= flatten(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value}
    return out


def set_path(tree: dict[str, Any], parts: list[str], value: Any) -> None:
    """tree[a][b][c] = value for parts [a, b, c], making the intermediate dicts."""
    *parents, leaf = parts
    for part in parents:
        tree = tree.setdefault(part, {})
    tree[leaf] = value


def changed_fields(before: dict[str, Any], after: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """{dotted field: (before, after)} for every leaf whose value differs between two nested dicts."""
    a, b = flatten(before), flatten(after)
    return {k: (a.get(k), b.get(k)) for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)}


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge; values of `override` win."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def list_presets() -> list[str]:
    """Names of the shipped presets."""
    return sorted(p.name[:-5] for p in resources.files("lmlab.presets").iterdir() if p.name.endswith(".yaml"))


def load_preset(name: str) -> dict[str, Any]:
    """The raw (unvalidated) dict of a preset, sections canonicalised."""
    key = name.lower()
    known = list_presets()
    if key not in known:
        close = difflib.get_close_matches(key, known, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"preset: unknown preset '{name}'; known: {', '.join(known)}{hint}")
    raw = yaml.safe_load(resources.files("lmlab.presets").joinpath(f"{key}.yaml").read_text()) or {}
    return normalize_sections(raw, f"preset '{key}'")


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Parse a YAML, JSON or nanoGPT-style Python config file into a dict of sections.

    A file without section names (nanoGPT's `config/*.py`, an old flat `config.json`) has each key
    routed to the one section that has such a field; see `route_flat`.
    """
    path = Path(path)
    raw = _read_mapping(path, "sections (model, data, train)")
    return normalize_sections(raw, str(path)) if raw else {}


def _read_mapping(path: Path, holds: str) -> dict[str, Any]:
    """The mapping a JSON, YAML or Python config file holds ({} when empty); one line on any problem."""
    if not path.is_file():
        raise ConfigError(f"config: file not found: {path}")
    try:
        if path.suffix == ".py":
            raw = python_assignments(path)
        else:
            raw = json.loads(path.read_text()) if path.suffix == ".json" else yaml.safe_load(path.read_text())
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"config: cannot parse {path}: {str(exc).splitlines()[0]}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config: {path} must hold a mapping of {holds}")
    return raw


def read_config_sources(
    config_dir: str | Path | None, config_file: str | Path | None
) -> tuple[dict[str, Any], list[Path]]:
    """The sections of a config folder, then a config file over them, and the files read in that order."""
    data, sources = read_config_dir(config_dir) if config_dir else ({}, [])
    if config_file:
        data = deep_merge(data, read_config_file(config_file))
        sources.append(Path(config_file))
    return data, sources


def normalize_sections(raw: dict[str, Any], where: str) -> dict[str, Any]:
    """Check top-level section names and canonicalise each section's keys."""
    allowed = [*SECTIONS, "preset"]
    if raw and not any(k in allowed or isinstance(v, dict) for k, v in raw.items()):
        return route_flat(raw, where)  # flat: no section names, no mappings (a misspelt section stays an error)
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in allowed:
            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"{key}: unknown section in {where}; allowed: {', '.join(allowed)}{hint}")
        out[key] = canonicalize(key, value) if key in SECTIONS and isinstance(value, dict) else value
    return out


def python_assignments(path: Path) -> dict[str, Any]:
    """`NAME = literal` lines of a nanoGPT-style Python config, read with `ast` (the file is never run)."""
    import ast

    out: dict[str, Any] = {}
    for node in ast.parse(path.read_text(), str(path)).body:
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue  # a docstring
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)):
            raise ConfigError(
                f"config: {path} line {node.lineno}: only NAME = value assignments are read (the file is not run)"
            )
        name = node.targets[0].id
        try:
            out[name] = ast.literal_eval(node.value)
        except ValueError:
            raise ConfigError(f"config: {path} line {node.lineno}: {name} is not a literal value") from None
    return out


def route_flat(flat: dict[str, Any], where: str) -> dict[str, Any]:
    """{section: {field: value}} from keys without sections, each to the one section that has it (or its alias)."""
    owners = {sec: set(section_fields(sec)) | set(ALIASES.get(sec, {})) for sec in SECTIONS}
    out: dict[str, Any] = {}
    for key, value in flat.items():
        found = [sec for sec, names in owners.items() if key in names]
        if not found:
            known = sorted(set().union(*owners.values()))
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"{key}: unknown name in {where}{hint}")
        if len(found) > 1:
            raise ConfigError(
                f"{key}: in {where} it could be {' or '.join(f'{s}.{key}' for s in found)}; write it under its section"
            )
        out.setdefault(found[0], {})[key] = value
    return {sec: canonicalize(sec, values) for sec, values in out.items()}


# The files a config folder may hold: each one section, or (config.json) flat keys of several.
CONFIG_DIR_FILES = ("config", *SECTIONS, "tensorboard")


def read_config_dir(directory: str | Path) -> tuple[dict[str, Any], list[Path]]:
    """The merged sections of a config folder and the files read (`config.json` first, then one per section).

    `tensorboard.json` holds `{"enabled": true|false}` and adds or drops the tensorboard tracker.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise ConfigError(f"config: --config-dir {directory} is not a folder")
    merged: dict[str, Any] = {}
    read: list[Path] = []
    for stem in CONFIG_DIR_FILES:
        for suffix in (".json", ".yaml", ".yml"):
            path = directory / f"{stem}{suffix}"
            if path.is_file():
                read.append(path)
                merged = deep_merge(merged, _config_dir_part(stem, path, merged))
    known = {f"{stem}{suffix}" for stem in CONFIG_DIR_FILES for suffix in (".json", ".yaml", ".yml")}
    stray = sorted(
        p.name for p in directory.iterdir() if p.suffix in (".json", ".yaml", ".yml") and p.name not in known
    )
    if stray:
        raise ConfigError(f"config: {directory}/{stray[0]} is not read; allowed: {', '.join(sorted(known))}")
    return merged, read


def _config_dir_part(stem: str, path: Path, merged: dict[str, Any]) -> dict[str, Any]:
    if stem == "config":
        return read_config_file(path)
    raw = _read_mapping(path, f"{stem} fields")
    if stem == "tensorboard":
        extra = set(raw) - {"enabled"}
        if extra:
            raise ConfigError(f"config: {path}: unknown key '{sorted(extra)[0]}'; allowed: enabled")
        trackers = list(merged.get("track", {}).get("trackers", TrackConfig().trackers))
        trackers = [t for t in trackers if t != "tensorboard"] + (["tensorboard"] if raw.get("enabled") else [])
        return {"track": {"trackers": trackers}}
    return {stem: canonicalize(stem, raw)}


def env_overrides(environ: dict[str, str] | None = None, sections: dict[str, Any] | None = None) -> dict[str, Any]:
    """Nested overrides from ``LMLAB_SECTION__FIELD[__SUB]=value`` environment variables."""
    environ = os.environ if environ is None else environ
    sections = SECTIONS if sections is None else sections
    out: dict[str, Any] = {}
    for key, value in environ.items():
        if not key.startswith(ENV_PREFIX) or "__" not in key:
            continue
        path = key[len(ENV_PREFIX) :].lower().split("__")
        if path[0] in sections:
            set_path(out, path, value)
    return {k: canonicalize(k, v) for k, v in out.items()}


def resolve_config(
    *,
    preset: str | None = None,
    config_file: str | Path | None = None,
    cli: dict[str, Any] | None = None,
    environ: dict[str, str] | None = None,
    config_dir: str | Path | None = None,
) -> RunConfig:
    """Merge defaults < preset < config folder < file < env < CLI into one validated RunConfig.

    The config files read are kept (`RunConfig.sources`) so the run can store them verbatim.
    """
    file_data, sources = read_config_sources(config_dir, config_file)
    env_data = env_overrides(environ)
    cli = {k: canonicalize(k, v) if k in SECTIONS else v for k, v in (cli or {}).items()}
    preset = cli.pop("preset", None) or preset or env_data.pop("preset", None) or file_data.get("preset")
    merged: dict[str, Any] = load_preset(preset) if preset else {}
    for layer in (file_data, env_data, cli):
        merged = deep_merge(merged, layer)
    if preset:
        merged["preset"] = preset.lower()
    try:
        cfg = validate(RunConfig, merged, "")
    except ConfigError as exc:
        raise ConfigError(_name_env_sources(str(exc), env_data, cli)) from None
    cfg.sources = [str(p) for p in sources]
    return cfg


def _name_env_sources(message: str, env_data: dict[str, Any], cli: dict[str, Any]) -> str:
    """Say which environment variable set a field the error names (a flag for the same field wins over it)."""
    for dotted in sorted(flatten(env_data).keys() - flatten(cli).keys()):
        variable = ENV_PREFIX + dotted.replace(".", "__").upper()
        message = message.replace(f"{dotted}:", f"{dotted} (from environment variable {variable}):")
    return message


def validate(cls: type[BaseModel], data: dict[str, Any], prefix: str) -> Any:
    """Validate `data` against `cls`, turning pydantic's report into one ConfigError line."""
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, cls, prefix)) from None


def _fields_at(cls: type[BaseModel], loc: tuple) -> list[str]:
    node: Any = cls
    for part in loc:
        field = getattr(node, "model_fields", {}).get(part)
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            return []
        node = field.annotation
    return section_fields("model") if node is ModelConfig else list(node.model_fields)


def format_validation_error(exc: ValidationError, cls: type[BaseModel], prefix: str) -> str:
    """One line per problem, each naming the dotted field, the value and what is allowed."""
    msgs = []
    for err in exc.errors():
        loc = tuple(str(p) for p in err["loc"])
        name = ".".join(([prefix] if prefix else []) + list(loc)) or prefix or "config"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            known = _fields_at(cls, loc[:-1])
            close = difflib.get_close_matches(loc[-1], known, n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            msgs.append(f"{name}: unknown field; {hint}allowed: {', '.join(known)}")
        elif ":" in msg.split(" ")[0]:
            msgs.append(msg)  # the validator already named the field
        else:
            got = err.get("input")
            shown = f" (got {got!r})" if not isinstance(got, dict) and got is not None else ""
            msgs.append(f"{name}: {msg}{shown}")
    return "; ".join(msgs)
