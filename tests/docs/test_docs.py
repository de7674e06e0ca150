"""The documentation cannot rot: the site builds strictly, generated pages follow the code, and every
code block of the README, the Quickstart and the How-to pages runs.

Code blocks run as written, at test sizes: one bash script per page, in a fresh folder, with
these rewrites and nothing else —
- `--max-steps`, `--train.ckpt_interval`, `--train.eval_interval` N become max(2, N // 50);
  `--seeds` and `--trials` become 2, `--max-new-tokens` at most 20; `--tokens-per-param` becomes
  0.2 with `--bootstrap 20`;
- every `lmlab train` / `ablate` / `sweep` / `scale` command also gets `--train.eval_iters 2 --batch 4`, and
  `--seq-len 64` unless it sets `--context` or `--seq-len` (training windows, not the model);
- `--data shakespeare` reads a few kilobytes of stand-in text (the tests are offline);
- torchrun runs one node of two CPU processes on 127.0.0.1, on a free port (a c10d rendezvous on
  localhost); the server too;
- SLURM is played by this host: `sbatch FILE` runs the file as one job of one node (`srun` runs its
  command once, `scontrol show hostnames` says localhost), and `--launcher slurm` becomes
  submitit's local executor, one process per node;
- `make` targets run in the repository, with training steps, evaluation and the run folder
  set through `LMLAB_TRAIN__*` variables (batch 4, 40 sample tokens) and `make test` limited to one test file in one process; the fresh
  folder links the repository's `.venv` and `experiments/`, so `source .venv/bin/activate` and
  the reference configs work as in a clone.
A block of any language with a `title="path"` is written to that file; a path under `src/` goes into a
copy of the package that the page's commands import (PYTHONPATH), so the repository is never
edited while other tests run beside it. Other `python` blocks run with the environment's Python.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lmlab.pipeline.train_cluster import free_port

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
BIN = Path(sys.executable).parent
EXECUTED_PAGES = [
    "README.md",
    "docs/quickstart.md",
    *sorted(p.relative_to(REPO).as_posix() for p in (DOCS / "howto").glob("*.md")),
]
STAND_IN = "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n" * 200
FENCE = re.compile(r"^```(\w+)([^\n]*)\n(.*?)^```", re.S | re.M)


def shrink(script: str) -> str:
    """The test-size rewrites listed in the module docstring."""
    script = re.sub(r"\\\n\s*", " ", script)
    for flag in ("--max-steps", "--train.ckpt_interval", "--train.eval_interval"):
        script = re.sub(rf"{flag} (\d+)", lambda m, f=flag: f"{f} {max(2, int(m.group(1)) // 50)}", script)
    script = re.sub(r"--seeds \d+", "--seeds 2", script)
    script = re.sub(r"--trials \d+", "--trials 2", script)
    script = re.sub(r"--tokens-per-param [\d.]+", "--tokens-per-param 0.2 --bootstrap 20", script)
    script = script.replace("--data shakespeare", "--data file:shakespeare_stand_in.txt")
    script = re.sub(r"--max-new-tokens (\d+)", lambda m: f"--max-new-tokens {min(20, int(m.group(1)))}", script)
    script = re.sub(r"--nnodes \d+", "--nnodes 1", script)
    script = re.sub(r"--nproc_per_node \d+", "--nproc_per_node 2", script)
    script = re.sub(r"--master_addr \S+", "--master_addr 127.0.0.1", script)
    script = re.sub(r"--master_port \d+", f"--master_port {free_port()}", script)
    script = re.sub(r"--rdzv-endpoint [\w.-]+:\d+", lambda m: f"--rdzv-endpoint localhost:{free_port()}", script)
    script = re.sub(r"\b29500\b", lambda m: str(free_port()), script)
    script = script.replace("--launcher slurm", "--launcher submitit-local")
    script = re.sub(r"--nproc-per-node \d+", "--nproc-per-node 1", script)
    script = re.sub(r"\b8000\b", str(free_port()), script)
    lines = []
    for line in script.splitlines():
        if re.search(r"(lmlab (train|ablate|sweep|scale)|-m lmlab train)\b", line) and not line.lstrip().startswith(
            "#"
        ):
            command, hash_, comment = line.partition("  #")  # the flags go before a trailing comment
            command += " --train.eval_iters 2 --batch 4"
            if "--context" not in command and "--seq-len" not in command:
                command += " --seq-len 64"
            line = command + (f"  #{comment}" if hash_ else "")
        lines.append(line)
    return "\n".join(lines)


# A one-node SLURM allocation on this host, for the pages' sbatch scripts.
SLURM_ON_THIS_HOST = """
srun() { while [[ "$1" == --* ]]; do shift; done; "$@"; }
scontrol() { echo localhost; }
sbatch() { SLURM_JOB_NODELIST=localhost SLURM_NNODES=1 SLURM_NODEID=0 SLURM_JOB_ID=1 bash "$1"; }
export -f srun scontrol
"""


def page_script(page: str) -> tuple[str, dict[Path, str]]:
    """The page's blocks as one bash script, and the files its titled blocks write."""
    parts, files = [], {}
    for lang, info, body in FENCE.findall((REPO / page).read_text()):
        title = re.search(r'title="([^"]+)"', info)
        if title:
            files[Path(title.group(1))] = shrink(body) if lang == "bash" else body
        elif lang == "bash":
            parts.append(body)
        elif lang == "python":
            parts.append(f"python - <<'PYEOF'\n{body}PYEOF\n")
    return shrink("\n".join(parts)), files


def package_copy(dest: Path) -> Path:
    """A copy of `src/lmlab` under dest/src, to add files to without touching the repository; dest/src."""
    shutil.copytree(REPO / "src" / "lmlab", dest / "src" / "lmlab", ignore=shutil.ignore_patterns("__pycache__"))
    return dest / "src"


def test_every_executed_page_has_code():
    assert "docs/howto/add-a-block.md" in EXECUTED_PAGES and len(EXECUTED_PAGES) >= 8
    for page in EXECUTED_PAGES:
        assert page_script(page)[0].strip(), f"{page} has no code blocks"


@pytest.mark.timeout(900)
@pytest.mark.parametrize("page", EXECUTED_PAGES)
def test_code_blocks_run(page, tmp_path):
    script, files = page_script(page)
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "LMLAB_TRAIN__SAVE_DIR": str(tmp_path / "runs"),
        "LMLAB_TRAIN__MAX_STEPS": "20",
        "LMLAB_TRAIN__EVAL_ITERS": "2",
        "LMLAB_TRAIN__EVAL_INTERVAL": "10",
        "LMLAB_TRAIN__BATCH_SIZE": "4",
        "LMLAB_TRAIN__SAMPLE_TOKENS": "40",
        "PYTEST_ADDOPTS": "tests/test_registry.py -p no:cacheprovider",
        "PYTEST_WORKERS": "0",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "MPLBACKEND": "Agg",
    }
    env.pop("LMLAB_API_KEY", None)
    preamble = f'set -euo pipefail\nmake() {{ command make -C "{REPO}" "$@"; }}\n' + SLURM_ON_THIS_HOST
    (tmp_path / ".venv").symlink_to(REPO / ".venv")
    (tmp_path / "experiments").symlink_to(REPO / "experiments")
    (tmp_path / "shakespeare_stand_in.txt").write_text(STAND_IN)
    for path, body in files.items():
        if path.parts[0] == "src":
            env["PYTHONPATH"] = str(package_copy(tmp_path / "package"))
            target = tmp_path / "package" / path
        else:
            target = tmp_path / path
        assert not target.exists(), f"{target} exists already; the page would overwrite it"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(body)
    proc = subprocess.run(
        ["bash", "-c", preamble + script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, (
        f"{page}\n--- script\n{script}\n--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-4000:]}"
    )
    if page == "docs/howto/add-a-block.md":
        assert "relu_squared" in proc.stdout  # `lmlab list ffn` shows the new file's block


def test_mkdocs_build_is_strict_and_clean(site):
    for page in ("reference/blocks", "reference/config", "reference/cli", "reference/api", "results", "quickstart"):
        assert (site / f"{page}.html").is_file(), page


def test_generated_pages_cover_the_code():
    from lmlab.cli.app import cli
    from lmlab.cli.schema_flags import ALL_SECTIONS, leaf_fields
    from lmlab.docgen import block_catalogue, cli_reference, config_reference
    from lmlab.registry import component_registries

    catalogue = block_catalogue()
    for _, _, reg in component_registries():
        for e in reg.entries():
            assert f"| `{e.name}` |" in catalogue and e.paper in catalogue
    assert "`native_sparse` + `alibi`" in catalogue  # a refused pair, with the validator's reason
    assert "d_ff_mult: 2.667" in catalogue and "2.6666" not in catalogue  # 8/3, rounded for a reader
    config = config_reference()
    for section, cls in ALL_SECTIONS.items():
        for path, _ in leaf_fields(cls):
            dotted = ".".join((section, *path))
            assert f"| `{dotted}` |" in config
    assert "`LMLAB_MODEL__ROPE__THETA`" in config and "`--model.rope.theta`" in config  # the naming rule, once
    assert "## Optimizer (`train.optim`)" in catalogue and "| `train.muon.lr` |" in config
    commands = cli_reference()
    for name in cli.commands:
        assert f"`lmlab {name}`" in commands


TOY_BLOCK = '''
from torch import nn
from lmlab.registry import FFN


@FFN.register("toy_docs_ffn", tags=("toy",), caps={"d_ff_mult": 2.0}, paper="a test's toy")
class ToyDocsFFN(nn.Identity):
    """A toy feed-forward that returns its input."""

    aux_loss = None

    def __init__(self, cfg) -> None:
        super().__init__()

    @classmethod
    def flops_per_token(cls, cfg, seq_len):
        return {"ffn": 0}
'''


def test_a_new_block_file_appears_in_the_catalogue_and_lmlab_list_with_no_other_edit(tmp_path):
    src = package_copy(tmp_path)
    (src / "lmlab" / "ffn" / "toy_docs_ffn.py").write_text(TOY_BLOCK)
    env = {**os.environ, "PYTHONPATH": str(src)}
    code = "import lmlab; from lmlab.docgen import block_catalogue; print(lmlab.__file__); print(block_catalogue())"
    catalogue = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout
    assert catalogue.startswith(str(src))  # the copy, not the repository, was imported
    listed = subprocess.run(
        [str(BIN / "lmlab"), "list", "ffn"], capture_output=True, text=True, check=True, env=env
    ).stdout
    row = next(line for line in catalogue.splitlines() if "`toy_docs_ffn`" in line)
    assert "A toy feed-forward that returns its input." in row and "a test's toy" in row
    assert "toy_docs_ffn" in listed
