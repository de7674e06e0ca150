"""Two torchrun nodes on one host (c10d rendezvous on localhost, gloo): the run of one node with the same
world size, and a node killed mid-run leaves the other stopping in one line, the last checkpoint intact,
and the same command resuming it.

The kill comes from inside the node (its worker kills its torchrun agent and itself before a chosen
step), so it lands at the same step on every machine.
"""

import json
import subprocess
import textwrap
import time
from pathlib import Path

import pytest

from lmlab.errors import LmlabError
from lmlab.pipeline.train_cluster import free_port, listening, submit_train, torchrun_args
from lmlab.runs import checkpoint as ckpt
from tests.conftest import varied_text
from tests.helpers import BIN, lmlab_train, small_train_args

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("two_nodes")]

TOLERANCE = 8 * 32 * 2**-24  # test_distributed's bound: the fp32 error of a mean over 8 x 32 tokens

KILL_NODE = textwrap.dedent(
    """
    import os, signal, sys
    from lmlab.trainer.mini_trainer import MiniTrainer

    at, step = int(sys.argv.pop(1)), MiniTrainer.train_step

    def train_step(self, batches):
        if self.step == at:  # the node dies: its agent first, so nothing of it restarts the worker
            print(f"node killed before step {at + 1}", file=sys.stderr, flush=True)
            os.kill(os.getppid(), signal.SIGKILL)
            os.kill(os.getpid(), signal.SIGKILL)
        return step(self, batches)

    MiniTrainer.train_step = train_step
    from lmlab.cli.app import main

    sys.argv[0] = "lmlab"
    main()
    """
)


def node_command(node: int, port: int, args: list, entry: tuple = ("-m", "lmlab")) -> list[str]:
    """The command docs/howto/distributed.md gives for node `node` of two, one process each."""
    return [str(BIN / "torchrun"), *torchrun_args(2, node, 1, f"localhost:{port}", "lmlab"), *entry, "train", *args]


def two_nodes(args: list, *, kill_at: int | None = None, script: Path | None = None) -> list[tuple[int, str]]:
    """Launch node 0, then (once its rendezvous store listens) node 1; (return code, stderr) of each."""
    first, port = _first_node(args)
    entry = ("-m", "lmlab") if kill_at is None else (str(script), str(kill_at))
    second = subprocess.Popen(node_command(1, port, args, entry), stderr=subprocess.PIPE, text=True)
    out = []
    for process in (second, first):
        try:
            _, err = process.communicate(timeout=300)  # a bound on a hang only; each node ends on its own
        except subprocess.TimeoutExpired:
            for p in (first, second):
                p.kill()
            tails = [p.communicate()[1][-2000:] for p in (first, second)]
            raise AssertionError(f"a node did not end; node 0: {tails[0]}\nnode 1: {tails[1]}") from None
        out.append((process.returncode, err))
    return out[::-1]


def _first_node(args: list) -> tuple[subprocess.Popen, int]:
    """Node 0 listening on its rendezvous port; a port another process took first is replaced by a new one."""
    for _ in range(3):
        port = free_port()
        first = subprocess.Popen(node_command(0, port, args), stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120  # a bound on a failure only: the loop ends when the port opens
        while first.poll() is None and not listening("127.0.0.1", port):
            assert time.monotonic() < deadline, "node 0 never opened its rendezvous store"
            time.sleep(0.05)
        if first.poll() is None:
            return first, port
        err = first.communicate()[1]
        if "address already in use" not in err.lower():
            raise AssertionError(f"node 0 stopped before it listened: {err[-2000:]}")
    raise AssertionError("three free ports in a row were taken before node 0 could bind them")


def _curve(save_dir: Path) -> list[tuple[str, int, float]]:
    (metrics,) = save_dir.glob("*/logs/metrics.jsonl")
    return [(r["split"], r["step"], r.get("loss", r.get("val_loss"))) for r in map(json.loads, metrics.open())]


def _assert_same(curve: list, reference: list) -> None:
    assert [r[:2] for r in curve] == [r[:2] for r in reference]  # every step once: nothing repeated or lost
    for (split, step, a), (_, _, b) in zip(curve, reference, strict=True):
        assert abs(a - b) <= TOLERANCE * abs(b), (split, step, a, b)


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> tuple[Path, list, list]:
    """A folder, the run's flags, and the curve of one node with two processes."""
    root = tmp_path_factory.mktemp("nodes")
    corpus = root / "corpus.txt"
    corpus.write_text(varied_text())
    args = small_train_args(
        corpus, max_steps=8, dropout=0, batch=4, train__log_interval=1, train__eval_interval=4, train__eval_iters=2
    )
    args += ["--train.distributed", "ddp", "--train.resume", "auto"]  # auto: a relaunch resumes
    one = lmlab_train([*args, "--save-dir", str(root / "one")], nproc=2)
    assert one.returncode == 0, one.stderr[-3000:]
    return root, args, _curve(root / "one")


def test_two_nodes_on_localhost_equal_one_node(lab):
    root, args, reference = lab
    for code, err in two_nodes([*args, "--save-dir", str(root / "two")]):
        assert code == 0, err[-3000:]
    _assert_same(_curve(root / "two"), reference)


def test_a_node_killed_mid_run_stops_the_other_in_one_line_and_the_same_command_resumes(lab):
    root, args, reference = lab
    script = root / "kill_node.py"
    script.write_text(KILL_NODE)
    flags = [*args, "--save-dir", str(root / "killed")]
    (code0, err0), (code1, err1) = two_nodes(flags, kill_at=5, script=script)
    assert "node killed before step 6" in err1 and code1 != 0
    assert code0 != 0
    stopped = [line for line in err0.splitlines() if "another process of the group stopped" in line]
    assert len(stopped) == 1, err0[-3000:]
    assert "step_00000004 is the last checkpoint, intact; run the same command on every node" in stopped[0]
    (run,) = (root / "killed").glob("2*")
    assert ckpt.latest_valid(run / "artifacts" / "checkpoints").name == "step_00000004"
    again = two_nodes(flags)  # the same command, once more, on both nodes
    for code, err in again:
        assert code == 0, err[-3000:]
    assert any("at step 4 from" in err for _, err in again)
    _assert_same(_curve(root / "killed"), reference)


def test_launcher_submits_one_job_over_two_nodes_that_equals_one_node(lab):
    """`--launcher submitit-local --nodes 2`: the code path of `--launcher slurm`, a task per node on this host."""
    root, args, reference = lab
    out = root / "launched"
    launched = subprocess.run(
        [str(BIN / "lmlab"), "train", *args, "--save-dir", str(out), "--launcher", "submitit-local", "--nodes", "2"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert launched.returncode == 0, launched.stderr[-3000:]
    assert "(2 nodes x 1 processes)" in launched.stderr and "done: step 8" in launched.stdout
    _assert_same(_curve(out), reference)


def test_a_node_that_fails_is_named_with_its_own_error(tmp_path):
    """A node's torchrun failing reaches the submitter as one line with that node's message, not a log path."""
    with pytest.raises(LmlabError) as caught:
        submit_train(
            ["--no-such-flag"],
            save_dir=str(tmp_path),
            nodes=2,
            nproc_per_node=1,
            launcher="submitit-local",
            slurm={},
            detach=False,
        )
    message = str(caught.value)
    assert "\n" not in message and "stopped (torchrun exit 1): No such option '--no-such-flag'" in message
    assert str(tmp_path / "submitit") in message
