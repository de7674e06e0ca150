"""One training run over K nodes as one SLURM job through submitit: a task per node, each starting
`torchrun` with a c10d rendezvous on the job's first node, as the multi-node recipe of
docs/howto/distributed.md does by hand with sbatch + srun."""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from lmlab.errors import LmlabError, require
from lmlab.pipeline.study_cluster import slurm_parameters

# A fixed base plus the job id: jobs that share a node get different rendezvous ports.
PORT_BASE, PORT_SPAN = 20000, 20000
RENDEZVOUS_WAIT_S = 600  # how long a node waits for the first node's rendezvous store before giving up


def torchrun_args(nodes: int, node_rank: int, nproc_per_node: int, endpoint: str, rdzv_id: str) -> list[str]:
    """torchrun's flags for node `node_rank` of `nodes`: the same line in the docs' sbatch script, the tests
    and the job submitted by `lmlab train --launcher slurm`."""
    return [
        *("--nnodes", str(nodes), "--node_rank", str(node_rank), "--nproc_per_node", str(nproc_per_node)),
        *("--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint, "--rdzv-id", rdzv_id),
    ]


def listening(host: str, port: int) -> bool:
    """Whether something accepts connections at host:port."""
    with socket.socket() as s:
        s.settimeout(5)
        return s.connect_ex((host, port)) == 0


def free_port() -> int:
    """A TCP port free on this host now, below the kernel's ephemeral range.

    The port is closed again before its user (torchrun, a server) binds it, seconds later. A port from the
    ephemeral range could meanwhile go to any process that binds port 0 or connects out, and a second
    process would then answer at the address; below the range only an explicit bind can take it."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768  # Linux's default start; other systems' ranges start higher
    candidates = list(range(max(1024, low - 8192), low))
    random.shuffle(candidates)
    for port in candidates[:200]:
        with socket.socket() as s:
            try:
                s.bind(("", port))  # every interface, as torchrun's store binds it
            except OSError:
                continue
            return port
    with socket.socket() as s:  # every candidate taken: any port the kernel gives
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class NodeJob:
    """What every node of the job runs: `lmlab train ARGS` under torchrun, node rank from submitit."""

    args: list[str]
    nodes: int
    nproc_per_node: int
    port: int | None = None  # None: derived from the SLURM job id
    env: dict[str, str] = field(default_factory=dict)

    def __call__(self) -> str:
        """Run this node's share; return what its torchrun printed on stdout (rank 0's summary on node 0)."""
        submitit = require("submitit", "cluster")
        job = submitit.JobEnvironment()
        local = "SUBMITIT_LOCAL_JOB_ID" in os.environ
        # submitit's local executor has one node: each of its tasks stands for a node, all on this host
        rank = job.global_rank if local else job.node
        head = "localhost" if local else job.hostnames[0]
        port = self.port or PORT_BASE + int(str(job.job_id).split("_")[0]) % PORT_SPAN
        if rank:  # node 0 hosts the rendezvous store; the others connect once it listens
            deadline = time.monotonic() + RENDEZVOUS_WAIT_S
            while not listening(head, port):
                if time.monotonic() > deadline:
                    raise LmlabError(
                        f"train: node {rank} found no rendezvous at {head}:{port} after {RENDEZVOUS_WAIT_S} s"
                    )
                time.sleep(0.2)
        flags = torchrun_args(self.nodes, rank, self.nproc_per_node, f"{head}:{port}", str(job.job_id))
        command = [sys.executable, "-m", "torch.distributed.run", *flags, "-m", "lmlab", "train", *self.args]
        proc = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **self.env}
        )
        errors: list[str] = []
        relay = threading.Thread(target=_relay, args=(proc.stderr, sys.stderr, errors), daemon=True)
        relay.start()
        lines: list[str] = []
        _relay(proc.stdout, sys.stdout, lines)  # to the job's log as it comes, and kept for the submitter
        relay.join()
        if proc.wait() != 0:
            said = [line.strip()[7:] for line in errors if line.lower().startswith("error: ")]  # lmlab's or click's
            why = said[-1].rstrip(".") if said else "its log says why"
            raise LmlabError(f"train: node {rank} stopped (torchrun exit {proc.returncode}): {why}")
        return "".join(lines)


def _relay(source: IO[str], sink: IO[str], kept: list[str]) -> None:
    """Copy a child's stream line by line to `sink`, keeping the lines."""
    for line in source:
        sink.write(line)
        kept.append(line)


def submit_train(
    args: Sequence[str],
    *,
    save_dir: str,
    nodes: int,
    nproc_per_node: int,
    launcher: str,
    slurm: dict[str, Any],
    detach: bool,
    env: dict[str, str] | None = None,
) -> str | None:
    """Submit `lmlab train ARGS` on `nodes` nodes as one job; wait and return node 0's output, or with
    `detach` return None once it is queued. Logs go to `<save_dir>/submitit/`."""
    submitit = require("submitit", "cluster")
    folder = Path(save_dir) / "submitit"
    cluster = "slurm" if launcher == "slurm" else "local"
    try:
        executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
    except RuntimeError as exc:  # no srun on this machine
        raise LmlabError(f"train --launcher slurm: {exc} (run it on a SLURM login node)") from None
    if cluster == "slurm":
        params = slurm_parameters(slurm, 1) | {"nodes": nodes, "tasks_per_node": 1}
        params.pop("slurm_array_parallelism")
        port = None
    else:
        params, port = {"timeout_min": slurm.get("time") or 60, "tasks_per_node": nodes}, free_port()
    executor.update_parameters(name="lmlab-train", **params)
    job = executor.submit(NodeJob(list(args), nodes, nproc_per_node, port, dict(env or {})))
    print(
        f"train: job {job.job_id} submitted ({nodes} nodes x {nproc_per_node} processes); logs in {folder}",
        file=sys.stderr,
    )
    if detach:
        return None
    try:
        outputs = job.results()
    except Exception as exc:  # submitit's message holds the failing node's traceback
        lines = str(exc).strip().splitlines()
        reason = next((line.split("LmlabError: ", 1)[1] for line in reversed(lines) if "LmlabError: " in line), None)
        raise LmlabError(f"train: job {job.job_id} failed: {reason or lines[-1].strip()}; logs in {folder}") from None
    return outputs[0]
