"""Scaling ladders: each variant trained at several widths with tokens in proportion to its size, a power law
L(C) = E + A * C^-alpha fitted per variant with bootstrap intervals, and where (if anywhere) the fits cross.

A rung of the ladder keeps the base's depth, head width and context and sets `d_model` to the rung's width
(heads = width / head width; the FFN's default multiplier, or the base's own d_ff ratio). Its tokens are
`tokens_per_param` times its non-embedding parameters (Kaplan et al. 2020 count those: they do not depend
on the tokenizer), rounded up to whole optimizer steps; warm-up is capped at a tenth of each run and the
cosine decays over each run's own length, as in Hoffmann et al. (2022). Compute is lmlab's training FLOPs
per token (attention included) times the tokens trained. The runs go through the study runner that
`ablate` and `sweep` use, so `--jobs`, the launchers, `lmlab study status` and resume apply unchanged.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from lmlab.config import ModelConfig, RunConfig, deep_merge, resolve_config
from lmlab.errors import ConfigError
from lmlab.model.cost import params_by_component
from lmlab.model.flops import flops_per_token
from lmlab.model.mup import at_width
from lmlab.pipeline.ablate import STUDY_DEFAULTS, parse_swaps, swap_overrides
from lmlab.pipeline.study import Placement, PlannedRun, Study, run_key
from lmlab.pipeline.study_progress import StudyProgress
from lmlab.runs.run_dir import RunDir
from lmlab.track.plots import plot_scaling
from lmlab.track.scaling import crossing, fit_with_bootstrap

EXTRAPOLATE = 10.0  # the report predicts each variant's loss at this multiple of the ladder's largest compute
SEARCH = 100.0  # and looks for a crossing up to this multiple of it


def non_embedding_params(cfg: ModelConfig) -> int:
    """Parameters outside the token and position tables and the output head."""
    parts = params_by_component(cfg)
    return sum(n for k, n in parts.items() if k not in ("embedding", "position", "lm_head"))


def rung(cfg: ModelConfig, width: int, *, mup_base: int | None = None) -> ModelConfig:
    """`cfg` at `width` (`model.mup.at_width`), with muP scaled from `mup_base` when given."""
    model = at_width(cfg, width)
    return model.model_copy(update={"mup_base_width": mup_base}) if mup_base is not None else model


def ladder_steps(cfg: ModelConfig, tokens_per_param: float, tokens_per_step: int) -> int:
    """Optimizer steps that give `tokens_per_param` tokens per non-embedding parameter (at least 1)."""
    return max(1, math.ceil(tokens_per_param * non_embedding_params(cfg) / tokens_per_step))


def run_scaling(
    base: str,
    widths: list[int],
    *,
    swaps: list[str] = (),
    tokens_per_param: float = 20.0,
    seeds: int = 2,
    mup: bool = False,
    overrides: dict[str, Any] | None = None,
    save_dir: str | Path = "runs/scale",
    train_fn=None,
    placement: Placement | None = None,
    bootstrap: int = 1000,
) -> dict:
    """Train the ladder of every variant and fit it; the report as a dict (also scale.json, scale.md and
    scale.png in save_dir). The same call again trains only what is not complete."""
    widths = sorted(set(widths))
    if len(widths) < 3:
        raise ConfigError("scale --widths: a power law with a floor needs 3 or more widths; allowed: e.g. 32,48,64,96")
    if seeds < 1:
        raise ConfigError(f"scale --seeds: {seeds}; allowed: >= 1")
    if tokens_per_param <= 0:
        raise ConfigError(f"scale --tokens-per-param: {tokens_per_param}; allowed: > 0")
    layered = deep_merge(STUDY_DEFAULTS, overrides or {})
    variants = parse_swaps(list(swaps))
    if len(variants) > 2:  # "all" is an ablation's arm; a ladder fits each swap against the base
        variants = [v for v in variants if v.name != "all"]
    configs = [resolve_config(preset=base, cli=deep_merge(layered, swap_overrides(v.swaps))) for v in variants]
    planned = plan_ladder(variants, configs, widths, tokens_per_param, seeds, mup, (overrides or {}).get("train", {}))
    spec = {"widths": widths, "tokens_per_param": tokens_per_param, "seeds": seeds, "mup": mup}
    study = Study(save_dir, "scale", {**spec, "variants": [v.name for v in variants]})
    runs = [r for *_, r in planned]
    study.record_plan(runs)
    started = time.monotonic()
    progress = StudyProgress("scale", len(runs), out=save_dir)
    try:
        results = study.run(runs, placement, train_fn=train_fn, progress=progress)
    finally:
        progress.close()
    points = [_point(name, width, results[r.key]) for name, width, r in planned]
    report = fit_report(points, [v.name for v in variants], bootstrap=bootstrap)
    report.update(base=base, swaps=list(swaps), **spec, study_seconds=time.monotonic() - started)
    out = Path(save_dir)
    (out / "scale.json").write_text(json.dumps(report, indent=2))
    (out / "scale.md").write_text(markdown_report(report))
    report["plot"] = str(plot_scaling(report, out / "scale.png"))
    return report


def plan_ladder(
    variants: list,
    configs: list[RunConfig],
    widths: list[int],
    tokens_per_param: float,
    seeds: int,
    mup: bool,
    user_train: dict[str, Any],
) -> list[tuple[str, int, PlannedRun]]:
    """(variant, width, run) for every rung and seed: the width's model, its steps, warm-up and evaluations."""
    planned = []
    for v, cfg in zip(variants, configs, strict=True):
        tc = cfg.train
        per_step = tc.batch_size * tc.grad_accum * cfg.seq_len
        for width in widths:
            model = rung(cfg.model, width, mup_base=widths[0] if mup else None)
            steps = ladder_steps(model, tokens_per_param, per_step)
            train = {
                "max_steps": steps,
                "eval_interval": user_train.get("eval_interval", max(1, steps // 5)),
                "warmup_steps": min(tc.warmup_steps, steps // 10),
            }
            for seed in range(seeds):
                config = deep_merge(
                    cfg.model_dump(mode="json"),
                    {"model": model.model_dump(mode="json"), "train": {**train, "seed": tc.seed + seed}},
                )
                label = f"{v.name} w{width} seed {seed}"
                planned.append((v.name, width, PlannedRun(run_key(label), label, config)))
    return planned


def _point(name: str, width: int, record: dict) -> dict:
    """One run of the ladder as a point of its variant's fit."""
    trained = RunDir(Path(record["run"])).config()  # as trained: the vocabulary from the tokenizer
    tokens = int(record["metrics"].get("tokens") or _tokens(trained))
    return {
        "variant": name,
        "width": width,
        "seed": trained.train.seed,
        "params": non_embedding_params(trained.model),
        "tokens": tokens,
        "compute": float(flops_per_token(trained.model, trained.seq_len, training=True) * tokens),
        "val_loss": float(record["metrics"]["val_loss"]),
        "wall": float(record["metrics"].get("wall", 0.0)),
        "run": record["run"],
    }


def _tokens(cfg: RunConfig) -> int:
    tc = cfg.train
    return tc.max_steps * tc.batch_size * tc.grad_accum * cfg.seq_len


def fit_report(points: list[dict], variants: list[str], *, bootstrap: int = 1000) -> dict:
    """Each variant's power-law fit with intervals, its predicted loss beyond the ladder, and where each swap's
    fit crosses the base's."""
    top = max(p["compute"] for p in points)
    low = min(p["compute"] for p in points)
    fits, rows = {}, []
    for name in variants:
        rungs: dict[float, list[float]] = {}
        for p in points:
            if p["variant"] == name:
                rungs.setdefault(p["compute"], []).append(p["val_loss"])
        fit = fits[name] = fit_with_bootstrap(rungs, samples=bootstrap)
        loss, lo, hi = fit.predict(EXTRAPOLATE * top)
        rows.append(
            {
                "variant": name,
                "E": fit.law.E,
                "E_ci": fit.interval("E"),
                "A": fit.law.A,
                "A_ci": fit.interval("A"),
                "alpha": fit.law.alpha,
                "alpha_ci": fit.interval("alpha"),
                "rmse": fit.rmse,
                "predicted_at": EXTRAPOLATE * top,
                "predicted": loss,
                "predicted_ci": (lo, hi),
            }
        )
    crossings = []
    for name in variants[1:]:
        c = crossing(fits[variants[0]], fits[name], low, SEARCH * top)
        crossings.append(
            {"variant": name, "low": c.low, "high": c.high, "at": c.at, "share": c.share, "interval": c.interval}
        )
    return {"points": points, "fits": rows, "crossings": crossings}


def _ci(pair: tuple[float, float], fmt: str) -> str:
    return f"[{pair[0]:{fmt}}, {pair[1]:{fmt}}]"


def markdown_report(report: dict) -> str:
    """The ladder, the fits with 95% bootstrap intervals, and the crossings, as Markdown."""
    mup = ", muP width scaling" if report.get("mup") else ""
    lines = [
        f"Base `{report['base']}`, widths {', '.join(map(str, report['widths']))}, "
        f"{report['tokens_per_param']:g} tokens per non-embedding parameter, {report['seeds']} seeds{mup}; "
        f"{len(report['points'])} runs, {sum(p['wall'] for p in report['points']) / 60:.1f} min of training in all "
        "(the sum of their wall times, evaluations included).",
        "",
        "| variant | width | params | tokens | compute (FLOPs) | final val loss (mean of seeds) | wall s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    groups: dict[tuple[str, int], list[dict]] = {}
    for p in report["points"]:
        groups.setdefault((p["variant"], p["width"]), []).append(p)
    for (name, width), ps in groups.items():
        loss = np.mean([p["val_loss"] for p in ps])
        wall = np.mean([p["wall"] for p in ps])
        lines.append(
            f"| {name} | {width} | {ps[0]['params']:,} | {ps[0]['tokens']:,} | {ps[0]['compute']:.3g} | "
            f"{loss:.4f} | {wall:.0f} |"
        )
    at = report["fits"][0]["predicted_at"] if report["fits"] else 0
    lines += [
        "",
        "Fit L(C) = E + A·C^-α per variant, least squares over every seed's point; 95% intervals from "
        "refitting with each width's seeds resampled.",
        "",
        f"| variant | E | A | α | RMSE | predicted loss at {at:.3g} FLOPs |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for f in report["fits"]:
        lines.append(
            f"| {f['variant']} | {f['E']:.3f} {_ci(f['E_ci'], '.3f')} | {f['A']:.3g} {_ci(f['A_ci'], '.3g')} | "
            f"{f['alpha']:.3f} {_ci(f['alpha_ci'], '.3f')} | {f['rmse']:.4f} | "
            f"{f['predicted']:.4f} {_ci(f['predicted_ci'], '.4f')} |"
        )
    if report["seeds"] == 1:
        lines += ["", "One seed per width: the refits see no seed-to-seed spread, so the intervals are not intervals."]
    lines.append("")
    for c in report["crossings"]:
        where = f"between {c['low']:.3g} and {c['high']:.3g} FLOPs"
        if c["at"] is None:
            said = f"The fits of base and {c['variant']} do not cross {where}"
        else:
            said = f"The fits of base and {c['variant']} cross at {c['at']:.3g} FLOPs"
        share = f"{100 * c['share']:.0f}% of bootstrap refits cross {where}"
        if c["share"] > 0:
            share += f", at {_ci(c['interval'], '.3g')} (95%)"
        lines.append(f"- {said}; {share}.")
    return "\n".join(lines) + "\n"
