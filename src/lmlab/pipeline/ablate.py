"""Ablations: a base config, block swaps alone and together, several seeds each, at a matched budget.

Every variant is trained for N seeds; the report gives the mean final validation loss with a
95% t confidence interval, the difference to the base and Welch's t-test p-value. Budgets:
`tokens` (same steps x batch x context), `time` (same wall-clock seconds), `params` or `flops`
(the variant's FFN width is re-solved so its parameter count or FLOPs/token matches the base).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmlab.config import ModelConfig, deep_merge, field_path, nested, resolve_config
from lmlab.errors import ConfigError
from lmlab.model.cost import params_by_component
from lmlab.model.flops import flops_per_token
from lmlab.pipeline.study import Placement, PlannedRun, Study, run_key
from lmlab.pipeline.study_progress import StudyProgress
from lmlab.runs.run_dir import RunDir
from lmlab.track import stats

# Laptop scale for a study: applied under the user's own flags, so any of them can be overridden.
STUDY_DEFAULTS: dict[str, Any] = {
    "model": {"n_layer": 4, "n_head": 4, "d_model": 128, "max_seq_len": 128, "dropout": 0.0},
    "train": {"batch_size": 16, "eval_iters": 50, "sample_tokens": 0, "progress": False},
}


_JOIN = re.compile(r"\+(?=[A-Za-z_][\w.]*=)")  # `+` before the next field name, not inside 1e+3


@dataclass
class Variant:
    """One arm of the study."""

    name: str
    swaps: dict[str, Any]
    config: ModelConfig | None = None
    losses: list[float] = field(default_factory=list)
    runs: list[str] = field(default_factory=list)
    step_seconds: list[float] = field(default_factory=list)  # wall time per optimizer step, evaluations included


def parse_swaps(swaps: list[str]) -> list[Variant]:
    """base, each swap alone, and (with two or more, each of another field) all of them together.

    A swap is `field=value`, or several joined by `+` that make one arm (`optim=lion+lr=3e-4`)."""
    arms = []
    for s in swaps:
        parts = [p for p in _JOIN.split(s) if p.strip()]
        if not parts or any("=" not in p for p in parts):
            raise ConfigError(f"ablate --swap: '{s}' is not field=value (e.g. pos=rope, or optim=lion+lr=3e-4)")
        arms.append((s, dict((k.strip(), v.strip()) for k, v in (p.split("=", 1) for p in parts))))
    variants = [Variant("base", {})] + [Variant(name, fields) for name, fields in arms]
    keys = [k for _, fields in arms for k in fields]
    if len(arms) > 1 and len(set(keys)) == len(keys):  # two values of one field do not combine
        variants.append(Variant("all", {k: v for _, fields in arms for k, v in fields.items()}))
    return variants


def swap_overrides(swaps: dict[str, Any]) -> dict[str, Any]:
    """{"pos": "rope", "optim": "muon"} -> {"model": {"pos": "rope"}, "train": {"optim": "muon"}}: a bare
    field name belongs to the one section that has it (`train.muon.lr` may be spelled out)."""
    out: dict[str, Any] = {}
    for key, value in swaps.items():
        out = deep_merge(out, nested(field_path(key), value))
    return out


def _cost(cfg: ModelConfig, match: str, seq_len: int) -> float:
    return sum(params_by_component(cfg).values()) if match == "params" else flops_per_token(cfg, seq_len)


def match_width(base: ModelConfig, variant: ModelConfig, match: str, seq_len: int) -> ModelConfig:
    """The variant with d_ff re-solved (multiple of 8) so its params or FLOPs/token match the base's."""
    if match not in ("params", "flops"):
        return variant
    target = _cost(base, match, seq_len)
    lo, hi = (variant.model_copy(update={"d_ff": w}) for w in (8, 16))
    slope = (_cost(hi, match, seq_len) - _cost(lo, match, seq_len)) / 8  # cost is linear in d_ff
    width = (target - _cost(lo, match, seq_len)) / slope + 8 if slope else variant.d_ff
    width = max(8, 8 * round(width / 8))
    return variant.model_copy(update={"d_ff": width})


def run_ablation(
    base: str,
    swaps: list[str],
    *,
    seeds: int = 3,
    match: str = "tokens",
    overrides: dict[str, Any] | None = None,
    save_dir: str | Path = "runs/ablate",
    train_fn=None,
    placement: Placement | None = None,
) -> dict:
    """Train every variant for `seeds` seeds and return the table as a dict (also written to save_dir).

    The same call again with the same `save_dir` trains only the runs that are not complete."""
    if seeds < 2:
        raise ConfigError("ablate --seeds: at least 2 seeds are needed for confidence intervals; allowed: >= 2")
    if match not in ("tokens", "time", "params", "flops"):
        raise ConfigError(f"ablate --match: '{match}'; allowed: tokens, time, params, flops")
    layered = deep_merge(STUDY_DEFAULTS, overrides or {})
    base_cfg = resolve_config(preset=base, cli=layered)
    if "eval_interval" not in (overrides or {}).get("train", {}) and base_cfg.train.max_steps:
        # Ten evaluations per run, so the report has curves and not just end points.
        layered = deep_merge(layered, {"train": {"eval_interval": max(1, base_cfg.train.max_steps // 10)}})
        base_cfg = resolve_config(preset=base, cli=layered)
    variants = parse_swaps(swaps)
    # Validate every arm (unknown block, illegal combination) before training any of them.
    configs = [resolve_config(preset=base, cli=deep_merge(layered, swap_overrides(v.swaps))) for v in variants]
    _train_arms(
        variants, configs, base_cfg, seeds=seeds, match=match, save_dir=save_dir, train_fn=train_fn, placement=placement
    )
    rows = _rows(variants, base_cfg.seq_len)
    report = {"base": base, "swaps": swaps, "match": match, "seeds": seeds, "rows": rows}
    out = Path(save_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "ablation.json").write_text(json.dumps(report, indent=2))
    (out / "ablation.md").write_text(markdown_table(report))
    return report


def _train_arms(variants, configs, base_cfg, *, seeds: int, match: str, save_dir, train_fn, placement) -> None:
    """Train every variant for every seed through the study runner (the plan recorded first, finished runs
    kept), recording each variant's validation losses, trained config and run paths."""
    study = Study(save_dir, "ablate", {"match": match, "seeds": seeds, "variants": [v.name for v in variants]})
    planned = []
    for v, cfg in zip(variants, configs, strict=True):
        model = match_width(base_cfg.model, cfg.model, match, cfg.seq_len)
        for seed in range(seeds):
            config = deep_merge(
                cfg.model_dump(mode="json"),
                {"model": model.model_dump(mode="json"), "train": {"seed": base_cfg.train.seed + seed}},
            )
            planned.append((v, PlannedRun(run_key(f"{v.name}-s{seed}"), f"{v.name} seed {seed}", config)))
    runs = [r for _, r in planned]
    study.record_plan(runs)
    progress = StudyProgress("ablate", len(runs), out=save_dir)
    try:
        if match == "time":  # the base's first seed sets every other run's wall-clock budget
            first = study.run(runs[:1], placement, train_fn=train_fn, progress=progress)[runs[0].key]
            for r in runs[1:]:
                r.config["train"].update(max_time=float(first["metrics"]["wall"]), max_steps=10**9)
        results = study.run(runs, placement, train_fn=train_fn, progress=progress)
    finally:
        progress.close()
    for v, r in planned:
        record = results[r.key]
        v.losses.append(float(record["metrics"]["val_loss"]))
        v.config = RunDir(Path(record["run"])).config().model  # as trained: vocabulary from the tokenizer
        v.runs.append(record["run"])
        steps = record["metrics"].get("step") or 0
        v.step_seconds.append(float(record["metrics"].get("wall", 0.0)) / steps if steps else float("nan"))


def _rows(variants, seq_len: int) -> list[dict]:
    """One table row per variant: mean and 95% CI of its losses, its difference from the base and Welch's p."""
    base_losses = variants[0].losses
    rows = []
    for v in variants:
        s = stats.summarize(v.losses)
        diff, t, p = stats.welch(base_losses, v.losses) if v.name != "base" else (0.0, 0.0, 1.0)
        rows.append(
            {
                "variant": v.name,
                "arch": v.config.arch_name(),
                "params": sum(params_by_component(v.config).values()),
                "flops_per_token": flops_per_token(v.config, seq_len),
                "seeds": s.n,
                "mean": s.mean,
                "ci95": s.ci95,
                "diff_vs_base": diff,
                "t": t,
                "p": p,
                "ms_per_step": 1000 * sum(v.step_seconds) / len(v.step_seconds) if v.step_seconds else None,
                "losses": v.losses,
                "runs": v.runs,
            }
        )
    return rows


def _ms(value: float | None) -> str:
    return "" if value is None or math.isnan(value) else f"{value:.1f}"


def markdown_table(report: dict) -> str:
    """The study as a Markdown table (mean +- 95% CI, difference to base, Welch p, wall time per step:
    a variant that wins per step may lose per second), each arm's full
    architecture string listed under it so the table stays narrow."""
    lines = [
        f"Base `{report['base']}`, {report['seeds']} seeds per variant, budget matched on {report['match']}.",
        "",
        "| variant | params | FLOPs/token | final val loss (mean ± 95% CI) | Δ vs base | p (Welch) | ms/step |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for i, r in enumerate(report["rows"]):  # the first row is the base
        delta = "" if i == 0 else f"{r['diff_vs_base']:+.4f}"
        p = "" if i == 0 else f"{r['p']:.2g}"
        lines.append(
            f"| {r['variant']} | {r['params']:,} | {r['flops_per_token']:,} | "
            f"{r['mean']:.4f} ± {r['ci95']:.4f} | {delta} | {p} | {_ms(r.get('ms_per_step'))} |"
        )
    lines += ["", "Architectures:", ""]
    lines += [f"- {r['variant']}: `{r['arch']}`" for r in report["rows"]]
    return "\n".join(lines) + "\n"
