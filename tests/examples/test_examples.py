"""Every script in examples/ runs at its tiny size and checks what it claims (each asserts its own result)."""

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SCRIPTS = sorted(EXAMPLES.glob("[0-9][0-9]_*.py"))


def test_the_four_examples_exist():
    assert [p.name[:2] for p in SCRIPTS] == ["01", "02", "03", "04"]


@pytest.mark.timeout(600)
@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.stem)
def test_example_runs(script, tmp_path):
    extra = ["--out", str(tmp_path / "runs")] if "compare" in script.name else []
    proc = subprocess.run(
        [sys.executable, str(script), "--tiny", *extra], cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    expected = {
        "01": "every parameter received a gradient",
        "02": "memorised: greedy decoding reproduces the text exactly",
        "03": "lowest mean validation loss:",
        "04": "gradient check: max relative error",
    }[script.name[:2]]
    assert expected in proc.stdout
