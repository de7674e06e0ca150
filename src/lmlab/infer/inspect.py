"""`lmlab inspect`'s files: attention maps as PNG grids, the logit lens and the norms as tables."""

from __future__ import annotations

import json
import math
from pathlib import Path

from lmlab.errors import require
from lmlab.model.inspect import Inspection


def _show(token: str) -> str:
    return json.dumps(token)[1:-1].replace("|", "\\|").replace("`", "'") or " "


def write_inspection(insp: Inspection, out: str | Path, *, columns: int = 12) -> list[Path]:
    """attention_layer<i>.png (a grid of heads), logit_lens.md, norms.md and inspect.json under `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    if insp.attention:
        require("matplotlib", "plot")
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        labels = [_show(t) for t in insp.tokens]
        for layer, probs in insp.attention.items():
            n = probs.shape[0]
            cols = min(n, 4)
            rows = math.ceil(n / cols)
            fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3 * rows), squeeze=False)
            for h, ax in enumerate(axes.flat):
                ax.set_axis_off()
                if h < n:
                    ax.imshow(probs[h].numpy(), cmap="viridis", vmin=0, vmax=1)
                    ax.set_title(f"layer {layer} head {h}", fontsize=9)
                    if len(labels) <= 24:
                        ax.set_axis_on()
                        ax.set_xticks(range(len(labels)), labels, fontsize=6, rotation=90)
                        ax.set_yticks(range(len(labels)), labels, fontsize=6)
            fig.tight_layout()
            path = out / f"attention_layer{layer}.png"
            fig.savefig(path, dpi=100)
            plt.close(fig)
            written.append(path)
    shown = list(range(max(0, len(insp.tokens) - columns), len(insp.tokens)))
    lens = [
        "Top token (probability) each layer's residual stream predicts for the next position, read through "
        "the final norm and the output head; the last row is the model's own prediction.",
        "",
        "| layer | " + " | ".join(f"`{_show(insp.tokens[t])}`" for t in shown) + " |",
        "| --- |" + " --- |" * len(shown),
    ]
    for layer, row in enumerate(insp.lens):
        lens.append(f"| {layer} | " + " | ".join(f"`{_show(row[t][0][0])}` {row[t][0][1]:.2f}" for t in shown) + " |")
    (out / "logit_lens.md").write_text("\n".join(lens) + "\n")
    norms = ["| layer | activation RMS | gradient norm |", "| ---: | ---: | ---: |"]
    norms += [
        f"| {i} | {a:.4g} | {g:.4g} |" for i, (a, g) in enumerate(zip(insp.activation_rms, insp.grad_norm, strict=True))
    ]
    if insp.no_attention:
        norms += ["", f"No attention maps: {insp.no_attention}."]
    (out / "norms.md").write_text("\n".join(norms) + "\n")
    record = {
        "tokens": insp.tokens,
        "lens": insp.lens,
        "activation_rms": insp.activation_rms,
        "grad_norm": insp.grad_norm,
        "attention": {str(k): v.tolist() for k, v in insp.attention.items()},
        "no_attention": insp.no_attention,
    }
    (out / "inspect.json").write_text(json.dumps(record))
    return [*written, out / "logit_lens.md", out / "norms.md", out / "inspect.json"]
