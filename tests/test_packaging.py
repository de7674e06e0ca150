"""The package declares the oldest torch it supports; only the install step pins this machine's build."""

import re
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_torch_is_a_floor_in_the_metadata_and_a_pin_in_the_install_step():
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    (torch,) = [d for d in deps if re.match(r"torch\b", d)]
    assert re.fullmatch(r"torch>=\d+\.\d+", torch), torch  # a user's CUDA build satisfies it and is kept
    assert re.search(r"pip install -q torch==\d+\.\d+\.\d+", (REPO / "Makefile").read_text())
