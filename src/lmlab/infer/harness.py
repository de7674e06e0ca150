"""lm-evaluation-harness on lmlab runs: the `lmlab` model class and the runner behind `lmlab eval --harness`.

Importing this module registers `lmlab` with lm-eval (`lm_eval.simple_evaluate(model="lmlab",
model_args="run=DIR")`). lm-eval's own command line has no plugin hook, so `lmlab-lm-eval` is that
command line with this module imported first: `lmlab-lm-eval --model lmlab --model_args run=DIR --tasks ...`.
Scores come from `lmlab.infer.score`, lmlab's batched scoring, and follow lm-eval's HF model class
where it makes a choice: the prefix of an empty context or a document is bos, else end-of-text;
a context is cut on the left to fit the model; generation is greedy unless the task samples.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from lmlab.errors import ConfigError, require
from lmlab.infer.load import load_run
from lmlab.infer.score import document_loglikelihoods, prefix_id, score_pairs
from lmlab.utils.hardware import resolve_device

# lm-eval fills its model registry on first use only while the registry is empty: fill it before adding ours.
require("lm_eval.models", "harness")
from lm_eval.api.model import TemplateLM  # noqa: E402
from lm_eval.api.registry import register_model  # noqa: E402
from lm_eval.utils import make_table  # noqa: E402, F401  lm-eval's results table, for `lmlab eval --harness`


@register_model("lmlab")
class LmlabLM(TemplateLM):
    """A trained decoder run as an lm-eval language model (`run=DIR[,checkpoint=DIR,batch_size=N,device=D]`)."""

    def __init__(self, run: str, checkpoint: str | None = None, batch_size: int | str = 8, device: str = "auto", **_):
        super().__init__()
        self.loaded = load_run(run, device=resolve_device(device), checkpoint=checkpoint)
        if self.loaded.config.model.arch == "seq2seq":
            raise ConfigError("lmlab eval --harness: an encoder-decoder run has no lm-eval model class; use lmlab eval")
        self.model, self.tokenizer = self.loaded.model.eval(), self.loaded.tokenizer
        if getattr(self.tokenizer, "eos_id", None) is None:
            raise ConfigError(f"lmlab eval --harness: tokenizer '{self.tokenizer.name}' has no end-of-text id")
        self.batch_size = int(batch_size) if str(batch_size).isdigit() else 8
        self.max_length = self.loaded.config.model.max_seq_len

    @property
    def eot_token_id(self) -> int:
        """The tokenizer's end-of-text id."""
        return self.tokenizer.eos_id

    @property
    def prefix_token_id(self) -> int:
        """What an empty context or a document's first token conditions on (as lm-eval's HF class chooses)."""
        return prefix_id(self.tokenizer)

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **_) -> list[int]:
        """lmlab's encoding (it adds no special tokens)."""
        return self.tokenizer.encode(string)

    def tok_decode(self, ids: list[int], **_) -> str:
        """lmlab's decoding."""
        return self.tokenizer.decode(list(ids))

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **_) -> list[tuple[float, bool]]:
        pairs = [(context, continuation) for _, context, continuation in requests]
        results = score_pairs(self.model, pairs, max_len=self.max_length, batch_size=self.batch_size)
        for (key, _, _), answer in zip(requests, results, strict=True):
            self.cache_hook.add_partial("loglikelihood", key, answer)
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Each document's log-likelihood over disjoint rolling windows (`lmlab.infer.score`)."""
        encoded = [self.tok_encode(request.args[0]) for request in requests]
        totals = document_loglikelihoods(
            self.model, encoded, self.prefix_token_id, max_len=self.max_length, batch_size=self.batch_size
        )
        for request, total in zip(requests, totals, strict=True):
            self.cache_hook.add_partial("loglikelihood_rolling", (request.args[0],), total)
        return totals

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Greedy (or the task's sampling) continuations, cut at the first stop string or end-of-text."""
        return [self._generate_one(*request.args) for request in requests]

    @torch.no_grad()
    def _generate_one(self, context: str, gen_kwargs: dict) -> str:
        kwargs = dict(gen_kwargs)
        until = kwargs.pop("until", None) or []
        until = [until] if isinstance(until, str) else list(until)
        max_new = int(kwargs.pop("max_gen_toks", 256))
        room = self.max_length - max_new
        if room <= 0:
            raise ConfigError(
                f"lmlab eval --harness: max_gen_toks {max_new} leaves no context in a {self.max_length}-token model"
            )
        ids = (self.tok_encode(context) or [self.prefix_token_id])[-room:]
        sample = bool(kwargs.get("do_sample")) and float(kwargs.get("temperature", 1.0)) > 0
        out = self.model.generate(
            torch.tensor([ids], device=next(self.model.parameters()).device),
            max_new,
            temperature=float(kwargs.get("temperature", 1.0)) if sample else 0.0,
            stop=[self.eot_token_id],
        )[0, len(ids) :].tolist()
        if self.eot_token_id in out:
            out = out[: out.index(self.eot_token_id)]
        text = self.tok_decode(out)
        for stop in until:
            if stop:
                text = text.split(stop)[0]
        self.cache_hook.add_partial("generate_until", (context, gen_kwargs), text)
        return text


def run_harness(
    run: str | Path,
    tasks: list[str],
    *,
    include: str | None = None,
    limit: int | None = None,
    num_fewshot: int | None = None,
    batch_size: int = 8,
    device: str = "auto",
) -> dict:
    """lm-eval's `simple_evaluate` of a run on `tasks` (task YAMLs under `include` too); writes eval/harness.json."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    model = LmlabLM(str(run), batch_size=batch_size, device=device)
    # Indexing lm-eval's own task folder takes seconds: skip it when `include` holds every task asked for.
    manager = TaskManager(include_path=include, include_defaults=False) if include else None
    if manager is None or not set(tasks) <= set(manager.all_tasks):
        manager = TaskManager(include_path=include)
    results = simple_evaluate(
        model=model,
        tasks=tasks,
        task_manager=manager,
        limit=limit,
        num_fewshot=num_fewshot,
        log_samples=False,
    )
    summary = {"run": str(model.loaded.run.path), "tasks": tasks, "results": results["results"]}
    (model.loaded.run.eval / "harness.json").write_text(json.dumps(summary, indent=2, default=str))
    return results


def cli_main() -> None:
    """lm-eval's command line, with the `lmlab` model class registered."""
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()
