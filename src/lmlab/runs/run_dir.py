"""Run directories: `runs/YYYY-MM-DD_NNN_tag/` with meta, logs, artifacts and eval."""

from __future__ import annotations

import datetime as dt
import json
import platform
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from lmlab.config import RunConfig
from lmlab.errors import CheckpointError
from lmlab.runs import checkpoint

RUN_RE = re.compile(r"^(\d{4}-\d{2}-\d{2})_(\d{3,})(?:_(.*))?$")


@dataclass
class RunDir:
    """Paths of one run; everything that reads a run takes one of these (or its path)."""

    path: Path

    @property
    def meta(self) -> Path:
        return self.path / "meta"

    @property
    def logs(self) -> Path:
        return self.path / "logs"

    @property
    def checkpoints(self) -> Path:
        return self.path / "artifacts" / "checkpoints"

    @property
    def export(self) -> Path:
        return self.path / "artifacts" / "export"

    @property
    def tokenizer(self) -> Path:
        return self.path / "artifacts" / "tokenizer.json"

    @property
    def src_tokenizer(self) -> Path:
        """Source-side tokenizer of an encoder-decoder run (the target side is `tokenizer`)."""
        return self.path / "artifacts" / "src_tokenizer.json"

    @property
    def eval(self) -> Path:
        return self.path / "eval"

    @property
    def config_path(self) -> Path:
        return self.meta / "full_config.json"

    @property
    def resumes_path(self) -> Path:
        """One JSON line per resume: step, checkpoint, time and the config fields it changed."""
        return self.meta / "resumes.jsonl"

    def resumes(self) -> list[dict]:
        """The run's resume history, oldest first (empty for a run trained in one go)."""
        if not self.resumes_path.is_file():
            return []
        return [json.loads(line) for line in self.resumes_path.read_text().splitlines() if line.strip()]

    def record_resume(self, cfg: RunConfig, record: dict) -> None:
        """Append a resume to the history and make `full_config.json` the config training continues with."""
        with self.resumes_path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        self.write_config(cfg)

    def write_config(self, cfg: RunConfig) -> None:
        """Write `full_config.json` atomically (its presence marks the run directory as complete)."""
        tmp = self.config_path.with_suffix(".tmp")
        cfg.save(tmp)
        tmp.replace(self.config_path)

    def export_dir(self, fmt: str) -> Path:
        """Where `lmlab export --format FMT` writes by default."""
        return self.path / "artifacts" / f"export_{fmt}"

    def final_weights(self) -> Path:
        """The run's exported final weights, or else its newest checkpoint's (no optimizer state needed)."""
        final = self.export / "model.safetensors"
        if final.is_file():
            return final
        latest = checkpoint.latest_valid(self.checkpoints, checkpoint.WEIGHTS)
        if latest is None:
            raise CheckpointError(
                f"run: {self.path} has no weights (no artifacts/export/model.safetensors, no checkpoint)"
            )
        return latest / "model.safetensors"

    def write_final(self, weights: dict, model_config: dict) -> None:
        """The final weights and the model config that rebuilds them, in `artifacts/export/`."""
        checkpoint.write_model(self.export, weights, model_config)

    @classmethod
    def create(cls, root: str | Path, tag: str = "", *, today: dt.date | None = None) -> RunDir:
        """A new, empty run directory with the next free number for today."""
        root = Path(root)
        root.mkdir(parents=True, exist_ok=True)
        date = (today or dt.date.today()).isoformat()
        safe_tag = re.sub(r"[^A-Za-z0-9._-]+", "-", tag).strip("-")
        while True:
            taken = [int(m.group(2)) for p in root.iterdir() if (m := RUN_RE.match(p.name)) and m.group(1) == date]
            name = f"{date}_{max(taken, default=0) + 1:03d}" + (f"_{safe_tag}" if safe_tag else "")
            try:
                (root / name).mkdir()
                break
            except FileExistsError:  # a concurrent run took the number
                continue
        run = cls(root / name)
        for sub in (run.meta, run.logs, run.checkpoints, run.export, run.eval):
            sub.mkdir(parents=True, exist_ok=True)
        return run

    @classmethod
    def open(cls, path: str | Path) -> RunDir:
        """An existing run; a missing or partial one is reported by path with what is missing.

        `last` (or `DIR/last`) is the newest complete run under `runs/` (or DIR), so commands work on any day.
        """
        path = Path(path)
        if path.name == "last" and not path.exists():
            root = path.parent if path.parent != Path(".") else Path("runs")
            newest = cls.latest(root)
            if newest is None:
                raise CheckpointError(f"run: 'last' is the newest complete run under {root}/, and it holds none")
            return newest
        run = cls(path)
        if not run.path.is_dir():
            raise CheckpointError(f"run: {run.path} does not exist")
        if not run.config_path.is_file():
            raise CheckpointError(f"run: {run.path} is not a run directory (missing meta/full_config.json)")
        return run

    def config(self) -> RunConfig:
        """The full resolved config the run was trained with (an unreadable or older one is reported by path)."""
        from lmlab.errors import ConfigError

        self.require("meta/full_config.json")
        try:
            return RunConfig.load(self.config_path)
        except ConfigError as exc:
            raise CheckpointError(f"run: {self.config_path} is from an older or different schema: {exc}") from None

    def require(self, *relative: str) -> None:
        """Raise, naming the run and what is missing, unless every path exists (a partial run)."""
        missing = [r for r in relative if not (self.path / r).exists()]
        if missing:
            raise CheckpointError(f"run: {self.path} is partial (missing {', '.join(missing)})")

    def write_meta(self, cfg: RunConfig, extra: dict | None = None) -> None:
        """Write full_config.json, git.txt, env.txt, notes.md and any extra JSON files."""
        (self.meta / "git.txt").write_text(git_info())
        (self.meta / "git.diff").write_text(_git("diff", "HEAD"))
        (self.meta / "env.txt").write_text(env_info())
        (self.meta / "pip_freeze.txt").write_text(pip_freeze())
        notes = self.meta / "notes.md"
        if not notes.exists():
            notes.write_text(f"# {self.path.name}\n\n")
        for name, data in (extra or {}).items():
            (self.meta / name).write_text(json.dumps(data, indent=2))
        self.write_config(cfg)  # last: its presence marks the run directory as complete

    @staticmethod
    def latest(root: str | Path, tag: str | None = None) -> RunDir | None:
        """The most recent complete run under `root` (optionally with this tag)."""
        root = Path(root)
        if not root.is_dir():
            return None
        runs = sorted(
            (m.group(1), int(m.group(2)), p)
            for p in root.iterdir()
            if (m := RUN_RE.match(p.name))
            and (tag is None or (m.group(3) or "") == tag)
            and (p / "meta" / "full_config.json").is_file()  # skip runs killed before they were set up
        )
        return RunDir(runs[-1][2]) if runs else None


def _git(*args: str) -> str:
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def git_info() -> str:
    """Commit, branch and dirty state of the working directory's repository (if any)."""
    commit = _git("rev-parse", "HEAD")
    if not commit:
        return "not a git repository\n"
    dirty = bool(_git("status", "--porcelain"))
    return f"commit: {commit}\nbranch: {_git('rev-parse', '--abbrev-ref', 'HEAD')}\ndirty: {dirty}\n"


def pip_freeze() -> str:
    """Installed distributions as `name==version` lines (what `pip freeze` prints, without running pip)."""
    from importlib import metadata

    pins = {f"{d.metadata['Name']}=={d.version}" for d in metadata.distributions() if d.metadata["Name"]}
    return "\n".join(sorted(pins, key=str.lower)) + "\n"


def env_info() -> str:
    """Python, torch and hardware versions."""
    import torch

    lines = [
        f"python: {sys.version.split()[0]}",
        f"torch: {torch.__version__}",
        f"platform: {platform.platform()}",
        f"cpu: {platform.processor() or platform.machine()} x{torch.get_num_threads()} threads",
        f"cuda: {torch.version.cuda if torch.cuda.is_available() else 'none'}",
    ]
    if torch.cuda.is_available():
        lines.append(f"gpu: {torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}")
    return "\n".join(lines) + "\n"
