"""The NumPy reference's flat YAML as such projects write it, run exactly as the docs page shows it."""

import re
import shlex
import subprocess
import sys
from pathlib import Path

from lmlab.reference.cli import read_config

PAGE = Path(__file__).resolve().parents[2] / "docs" / "coming-from-nanogpt.md"
REFERENCE_COMMANDS = [
    "python -m lmlab.reference.cli prepare --config reverse.yaml",
    "python -m lmlab.reference.cli train --config reverse.yaml",
]


def reference_yaml() -> str:
    """The page's reference config (its second YAML block)."""
    blocks = re.findall(r"```yaml\n(.*?)```", PAGE.read_text(), re.S)
    return blocks[1]


def _run(command: str, cwd: Path) -> subprocess.CompletedProcess:
    args = shlex.split(command)
    assert args[0] == "python"
    return subprocess.run([sys.executable, *args[1:]], cwd=cwd, capture_output=True, text=True)


def test_the_flat_yaml_schema_runs_as_a_module(tmp_path):
    """`python -m lmlab.reference.cli train --config X`: validation split, val loss and accuracy every epoch."""
    path = tmp_path / "reverse.yaml"
    path.write_text(reference_yaml())
    data, model, loop = read_config(path)
    assert (data.pairs, data.val_split, data.seed, model.d_model, model.n_head, model.d_ff) == (
        "task:reverse:60",
        0.2,
        3,
        16,
        2,
        32,
    )
    assert (model.seed, loop.seed, loop.epochs, loop.lr, loop.clip) == (3, 3, 3, 0.003, 1.0)
    for command in REFERENCE_COMMANDS:
        result = _run(command, tmp_path)
        assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("48 pairs, 12 held out")
    epochs = [line for line in lines if line.startswith("epoch")]
    assert len(epochs) == 3 and all("val loss" in line and "val acc" in line for line in epochs)
    assert lines[-1].startswith("done:") and "val acc" in lines[-1]
    assert (tmp_path / "runs" / "reference" / "reverse" / "val_pairs.json").is_file()
    path.write_text(reference_yaml().replace("dropout: 0.0", "dropout: 0.1"))
    result = _run(REFERENCE_COMMANDS[1], tmp_path)
    assert result.returncode == 2 and "model.dropout: 0.1; the NumPy reference has no dropout" in result.stderr
