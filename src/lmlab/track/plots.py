"""Loss curves as PNG files, one self-contained HTML report (images embedded as base64), and scaling-law plots."""

from __future__ import annotations

import base64
import html
from pathlib import Path

import numpy as np

from lmlab.errors import require
from lmlab.track.compare import AXES, RunSummary, loss_label, table_rows
from lmlab.track.compare import notes as compare_notes

LABELS = {"step": "optimizer step", "tokens": "tokens seen", "flops": "training FLOPs", "wall": "wall-clock (s)"}


def plot_curves(summaries: list[RunSummary], out_dir: str | Path) -> dict[str, Path]:
    """One PNG per x axis (step, tokens, flops, wall) with every run's validation loss."""
    require("matplotlib", "plot")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    # Runs of one architecture (e.g. the seeds of an ablation arm) share a colour and one legend entry.
    archs = list(dict.fromkeys(s.arch for s in summaries))
    many = len(archs) < len(summaries)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for axis in AXES:
        fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
        labelled = set()
        for s in summaries:
            xs, ys = s.curve(axis)
            if xs:
                label = s.arch if many else f"{s.name} ({s.arch})"
                ax.plot(
                    xs,
                    ys,
                    marker="o",
                    markersize=3,
                    color=colours[archs.index(s.arch) % len(colours)],
                    alpha=0.8,
                    label=None if (many and s.arch in labelled) else label,
                )
                labelled.add(s.arch)
        ax.set_xlabel(LABELS[axis])
        ax.set_ylabel(loss_label(summaries[0].unit if summaries else "token"))
        if axis == "flops" and any(x > 0 for s in summaries for x in s.curve(axis)[0]):
            ax.set_xscale("log")  # not for runs without a FLOPs count (encoder-decoders record 0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        ax.set_title(f"validation loss vs {LABELS[axis]}")
        fig.tight_layout()
        paths[axis] = out_dir / f"val_loss_vs_{axis}.png"
        fig.savefig(paths[axis])
        plt.close(fig)
    return paths


def html_report(summaries: list[RunSummary], pngs: dict[str, Path], out: str | Path) -> Path:
    """A single HTML file with the ranking table and the embedded plots."""
    rows = table_rows(summaries)
    head = "".join(f"<th>{html.escape(c)}</th>" for c in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows[1:])
    figures = "".join(
        f'<figure><img alt="val loss vs {axis}" src="data:image/png;base64,'
        f'{base64.b64encode(Path(p).read_bytes()).decode()}"><figcaption>validation loss vs {LABELS[axis]}'
        "</figcaption></figure>"
        for axis, p in pngs.items()
    )
    notes = "".join(f"<p class='note'>{html.escape(n)}</p>" for n in compare_notes(summaries))
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>lmlab compare</title><style>"
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
        "padding:4px 8px;text-align:right}figure{display:inline-block;margin:1em}</style></head><body>"
        f"<h1>lmlab compare: {len(summaries)} runs</h1>{notes}<table id='ranking'><thead><tr>{head}</tr></thead>"
        f"<tbody>{body}</tbody></table>{figures}</body></html>"
    )
    out = Path(out)
    out.write_text(page)
    return out


def plot_scaling(report: dict, out: str | Path) -> Path:
    """A scaling report's loss against compute (log axis): every run's point, each fit over the ladder, dashed
    beyond it to the compute of its prediction, with the prediction's interval."""
    require("matplotlib", "plot")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lmlab.track.scaling import PowerLaw  # scipy's import stays off the curve plots' path

    out = Path(out)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    low = min(p["compute"] for p in report["points"])
    top = max(p["compute"] for p in report["points"])
    for i, f in enumerate(report["fits"]):
        color = f"C{i}"
        ps = [p for p in report["points"] if p["variant"] == f["variant"]]
        ax.scatter([p["compute"] for p in ps], [p["val_loss"] for p in ps], color=color, s=14)
        law = PowerLaw(f["E"], f["A"], f["alpha"])
        inside = np.geomspace(low, top, 100)
        beyond = np.geomspace(top, f["predicted_at"], 50)
        ax.plot(inside, law(inside), color=color, label=f"{f['variant']}: α={f['alpha']:.2f}, E={f['E']:.2f}")
        ax.plot(beyond, law(beyond), color=color, linestyle="--")
        lo, hi = f["predicted_ci"]
        span = [[max(0.0, f["predicted"] - lo)], [max(0.0, hi - f["predicted"])]]
        ax.errorbar([f["predicted_at"]], [f["predicted"]], yerr=span, color=color, capsize=3)
    ax.set_xscale("log")
    ax.set_xlabel("training compute (FLOPs)")
    ax.set_ylabel("final validation loss")
    ax.set_title(f"{report['base']}: fits over the ladder, dashed beyond it")
    ax.legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
