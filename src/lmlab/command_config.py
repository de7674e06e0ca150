"""Settings of the commands that use a trained run: eval, generate, translate, serve and export.

Each class is a schema section like `model` or `train`, so its flags, environment variables
(`LMLAB_SAMPLE__TEMPERATURE`) and reference docs are generated the same way; invalid values name the
field and what is allowed before any run is loaded.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field

from lmlab.config import Section, env_overrides, validate

DEVICE_HELP = "auto (cuda, then mps, then cpu) | cpu | cuda | cuda:N"


class EvalConfig(Section):
    """`lmlab eval`: how much of the validation split to read, and where."""

    SECTION: ClassVar[str] = "eval"

    iters: int = Field(50, ge=1, description="validation batches")
    batch_size: int | None = Field(None, ge=1, description="batch size; default the run's")
    device: str = Field("auto", description=DEVICE_HELP)
    documents: str | None = Field(
        None,
        description="score these documents in full instead (a .txt file is one document, a .jsonl file one "
        '{"text": ...} per line), by disjoint rolling windows as lm-eval scores a perplexity task',
    )
    harness: str | None = Field(None, description="lm-evaluation-harness tasks, comma-separated (extra: harness)")
    include: str | None = Field(None, description="a folder of lm-eval task YAMLs for --harness")
    limit: int | None = Field(None, ge=1, description="--harness: at most this many documents per task")
    num_fewshot: int | None = Field(None, ge=0, description="--harness: few-shot examples per prompt")


class SampleConfig(Section):
    """`lmlab generate`: the decoding rule, and how prompts are batched."""

    SECTION: ClassVar[str] = "sample"

    max_new_tokens: int = Field(200, ge=0, description="tokens to add")
    temperature: float = Field(0.8, ge=0, description="0 = greedy")
    top_k: int | None = Field(None, ge=1, description="keep the k most likely tokens")
    top_p: float | None = Field(None, gt=0, le=1, description="nucleus sampling mass")
    min_p: float | None = Field(None, ge=0, le=1, description="drop tokens below min_p x the top probability")
    repetition_penalty: float = Field(1.0, gt=0, description="CTRL penalty on seen tokens")
    num_samples: int = Field(1, ge=1, description="independent samples per prompt")
    seed: int = Field(0, description="sample i of a prompt uses seed + i")
    batch_size: int = Field(8, ge=1, description="rows decoded together (left-padded)")
    stream: bool = Field(False, description="print tokens as they are generated (one row at a time)")
    cache: bool = Field(True, description="reuse keys and values; off: recompute the full context each step")
    compile: bool = Field(False, description="decode through static caches with a compiled step")
    draft: str | None = Field(None, description="run directory of a draft model for speculative decoding")
    draft_tokens: int = Field(4, ge=1, description="tokens the draft proposes per pass of the model")
    device: str = Field("auto", description=DEVICE_HELP)


class TranslateConfig(Section):
    """`lmlab translate`: beam search over an encoder-decoder run."""

    SECTION: ClassVar[str] = "translate"

    beam: int = Field(1, ge=1, description="beam size (1 = greedy)")
    alpha: float = Field(0.6, ge=0, description="length penalty exponent ((5 + len) / 6) ** alpha")
    max_len: int | None = Field(None, ge=1, description="most output tokens; default the model's context - 1")
    device: str = Field("auto", description=DEVICE_HELP)


class ServeConfig(Section):
    """`lmlab serve`: address, authentication and the limits one request and the server keep."""

    SECTION: ClassVar[str] = "serve"

    host: str = Field("127.0.0.1", description="interface to listen on")
    port: int = Field(8000, ge=0, le=65535)
    api_key_env: str = Field("LMLAB_API_KEY", description="env var holding the bearer token (unset: no auth)")
    max_tokens: int = Field(512, ge=1, description="largest max_tokens a request may ask for")
    max_concurrent: int = Field(64, ge=1, description="requests in flight before 429")
    max_batch: int = Field(16, ge=1, description="requests decoded together (1: no batching)")
    max_body_kb: int = Field(1024, ge=1, description="largest request body")
    compile: bool = Field(False, description="decode through static caches with a compiled step")
    draft: str | None = Field(None, description="run directory of a draft model (one served run only)")
    draft_tokens: int = Field(4, ge=1, description="tokens the draft proposes per pass of the model")
    device: str = Field("auto", description=DEVICE_HELP)


class ExportConfig(Section):
    """`lmlab export`: the format and where it goes."""

    SECTION: ClassVar[str] = "export"

    format: Literal["hf", "safetensors"] = Field(
        "hf", description="hf: loadable by transformers (parity-checked); safetensors: weights + config"
    )
    out: str | None = Field(None, description="output directory; default export_FORMAT in the run's artifacts folder")


COMMAND_SECTIONS: dict[str, type[Section]] = {
    "eval": EvalConfig,
    "sample": SampleConfig,
    "translate": TranslateConfig,
    "serve": ServeConfig,
    "export": ExportConfig,
}


def command_settings(section: str, flags: dict[str, Any], environ: dict[str, str] | None = None) -> Any:
    """One command's validated settings: flags > environment > defaults."""
    merged = env_overrides(environ, sections=COMMAND_SECTIONS).get(section, {}) | flags
    return validate(COMMAND_SECTIONS[section], merged, section)
