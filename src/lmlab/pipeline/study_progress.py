"""A study's progress: one table for all its runs (run, where, state, step, loss, tokens/s, ETA),
refreshed in place on a terminal; one plain line as each run starts and ends otherwise."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, TextIO


class StudyProgress:
    """Counts the runs of a study and shows where each one is; stderr, so the report on stdout stays clean."""

    def __init__(self, study: str, total: int, stream: TextIO | None = None, out: str | Path | None = None) -> None:
        self.study, self.total, self.done, self.begun = study, total, 0, 0
        self.stream = stream or sys.stderr
        self.out = Path(out) if out is not None else None
        self.rows: dict[str, dict[str, Any]] = {}
        self._t0: dict[str, float] = {}
        self.live = None
        if self.out is not None and getattr(self.stream, "isatty", lambda: False)():
            from rich.console import Console
            from rich.live import Live

            self.live = Live(self._table(), console=Console(file=self.stream), refresh_per_second=2, transient=False)
            self.live.start()

    # ------------------------------------------------------------------ the runner's events

    def add(self, runs: list[Any], results: dict[str, dict | None]) -> None:
        """The study's runs, those already complete (an earlier invocation trained them) marked done."""
        for r in runs:
            if r.key in self.rows:
                continue
            done = results.get(r.key)
            self.rows[r.key] = {"label": r.label, "where": "", "state": "done" if done else "pending"}
            if done:
                self.rows[r.key]["loss"] = done["metrics"].get("val_loss")
                self.done += 1
                self.begun += 1
                self._say(f"[{self.done}/{self.total}] {self.study} {r.label}: complete before, not trained again")
        self.refresh()

    def started(self, key: str, where: str, label: str | None = None) -> None:
        """A run begins on `where` (this process, a device, a job id)."""
        row = self.rows.setdefault(key, {"label": label or key})
        row.update(where=where, state="training")
        self._t0[key] = time.perf_counter()
        self.begun += 1
        self._say(f"[{self.begun}/{self.total}] {self.study} {row['label']}: training on {where}")
        self.refresh()

    def finished(self, key: str, record: dict | None) -> None:
        """A run ended: its result, or None when it failed."""
        row = self.rows.setdefault(key, {"label": key})
        self.done += 1
        seconds = time.perf_counter() - self._t0.get(key, time.perf_counter())
        loss = (record or {}).get("metrics", {}).get("val_loss")
        row.update(state="done" if record else "failed", loss=loss, eta="")
        shown = "-" if loss is None else f"{loss:.4f}"
        outcome = f"val {shown} in {seconds:.1f} s" if record else "failed"
        self._say(f"[{self.done}/{self.total}] {self.study} {row['label']}: {outcome}; {self.total - self.done} to go")
        self.refresh()

    # The plain-function forms the sweep uses for trials it starts itself.
    def start(self, label: str) -> None:
        """A run labelled `label` begins in this process."""
        self.started(label, "this process")

    def end(self, label: str, loss: float | None) -> None:
        """The run labelled `label` ended with final validation loss `loss`."""
        self.finished(label, {"metrics": {"val_loss": loss}})

    def skip(self, label: str, reason: str) -> None:
        """A run that could not start (an invalid point of a search space)."""
        self.done += 1
        self.rows.setdefault(label, {"label": label}).update(state="skipped")
        self._say(
            f"[{self.done}/{self.total}] {self.study} {label}: skipped ({reason}); {self.total - self.done} to go"
        )

    # ------------------------------------------------------------------ the live table

    def refresh(self) -> None:
        """Read each training run's last logged step and redraw the table (a terminal only)."""
        if self.live is None:
            return
        for key, row in self.rows.items():
            if row.get("state") == "training":
                row.update(_last_step(self.out, key))
        self.live.update(self._table())

    def callback(self):
        """For a run training in this process: a trainer callback that redraws the table as it logs (None
        when there is no table to redraw)."""
        if self.live is None:
            return None

        def redraw(trainer: Any, event: Any) -> None:
            if event.name in ("batch_end", "eval_end") and trainer.step % 10 == 0:
                self.refresh()

        return redraw

    def close(self) -> None:
        """Leave the final table on screen."""
        if self.live is not None:
            self.refresh()
            self.live.stop()

    def _table(self):
        from rich.table import Table

        table = Table(title=f"{self.study}: {self.done}/{self.total} runs done", title_justify="left")
        for name, justify in [("run", "left"), ("where", "left"), ("state", "left")] + [
            (c, "right") for c in ("step", "loss", "tok/s", "ETA")
        ]:
            table.add_column(name, justify=justify)
        for row in self.rows.values():
            loss = row.get("loss")
            table.add_row(
                row["label"],
                row.get("where", ""),
                row.get("state", ""),
                str(row.get("step", "")),
                "" if loss is None else f"{loss:.4f}",
                "" if row.get("tok_s") is None else f"{row['tok_s']:,.0f}",
                row.get("eta", ""),
            )
        return table

    def _say(self, line: str) -> None:
        if self.live is not None:
            self.live.console.print(line)
        else:
            print(line, file=self.stream, flush=True)


def _last_step(out: Path | None, key: str) -> dict[str, Any]:
    """Step, loss, tokens/s and ETA from the run's last logged training line (nothing before its first)."""
    if out is None:
        return {}
    logs = sorted(out.glob(f"*_{key}/logs/metrics.jsonl"))
    if not logs:
        return {}
    last = None
    with logs[-1].open() as f:
        for line in f:
            if '"split": "train"' in line:
                last = line
    if last is None:
        return {}
    try:
        r = json.loads(last)
    except json.JSONDecodeError:  # the line being written
        return {}
    config = json.loads((logs[-1].parents[1] / "meta" / "full_config.json").read_text())
    total, step = config["train"].get("max_steps") or 0, r.get("step", 0)
    per_step = r.get("wall", 0) / step if step else 0
    eta = f"{per_step * (total - step):.0f} s" if total and per_step else ""
    return {
        "step": f"{step}/{total}" if total else step,
        "loss": r.get("loss"),
        "tok_s": r.get("tokens_per_s"),
        "eta": eta,
    }
