"""Load test of `lmlab serve` on loopback: many concurrent streaming clients, then a barrage of bad requests.

Starts the server in-process on 127.0.0.1 with a small model trained for a few steps, runs
`--clients` concurrent clients each sending `--requests` streaming completions through the
official `openai` client, and reports errors, lost requests, p50/p99 latency and aggregate
tokens/s. Then sends malformed requests and checks each gets its 4xx while /health stays ok.

    python bench/serve_load.py [--clients 32 --requests 20 --max-tokens 32 --max-batch 16]

`--max-batch 1` turns dynamic batching off (one request decodes at a time, interleaved per
batch), the peer to compare the batched figures with.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import socket
import statistics
import tempfile
import threading
import time
from pathlib import Path

import httpx
import openai
import uvicorn

from lmlab.config import resolve_config
from lmlab.infer.load import load_run
from lmlab.infer.server import Limits, create_app
from lmlab.pipeline.train import train_from_config

BAD = [
    (b"{not json", 400),
    (b'{"prompt": 5}', 400),
    (b'{"prompt": "a", "max_tokens": -1}', 400),
    (b'{"prompt": "a", "max_tokens": 1000000}', 400),
    (b'{"prompt": "' + b"ab " * 400 + b'"}', 400),
    (b'{"prompt": "\xff"}', 400),
    (b'{"prompt": "a", "model": "nope"}', 404),
]


def main() -> None:
    """Train a tiny run, serve it, hammer it, print the figures."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--requests", type=int, default=20)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--max-batch", type=int, default=16, help="rows per decoding batch (1: no batching)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "c.txt"
        corpus.write_text("the quick brown fox jumps over the lazy dog. " * 500)
        cfg = resolve_config(
            preset="tiny",
            cli={
                "data": {"name": f"file:{corpus}"},
                "model": {"n_layer": 2, "d_model": 64, "max_seq_len": 128},
                "train": {"max_steps": 30, "save_dir": tmp, "sample_tokens": 0, "progress": False},
            },
        )
        loaded = load_run(train_from_config(cfg, quiet=True).run.path)
        limits = Limits(max_tokens=256, max_concurrent=args.clients * 2, max_batch=args.max_batch)
        app = create_app({"tiny": loaded}, limits=limits, api_key="k")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        threading.Thread(target=server.run, daemon=True).start()
        while not server.started:
            time.sleep(0.05)
        url = f"http://127.0.0.1:{port}"
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="k", timeout=600, max_retries=0)

        def one_client(c: int) -> list[tuple[float, int]]:
            out = []
            for r in range(args.requests):
                t0 = time.perf_counter()
                stream = client.completions.create(
                    model="tiny", prompt="the ", max_tokens=args.max_tokens, seed=c * 1000 + r, stream=True
                )
                chunks = [p for p in stream]
                assert chunks[-1].choices[0].finish_reason in ("length", "stop")
                out.append((time.perf_counter() - t0, len(chunks) - 1))
            return out

        t0 = time.perf_counter()
        errors, results = 0, []
        with concurrent.futures.ThreadPoolExecutor(args.clients) as pool:
            for fut in [pool.submit(one_client, c) for c in range(args.clients)]:
                try:
                    results += fut.result()
                except Exception as exc:  # counted, not raised: the figure is the error count
                    errors += 1
                    print("client error:", type(exc).__name__, exc)
        wall = time.perf_counter() - t0
        lat = sorted(x for x, _ in results)
        expected = args.clients * args.requests
        print(f"{args.clients} clients x {args.requests} streaming requests, max_tokens {args.max_tokens}")
        print(f"completed {len(results)}/{expected} | client errors {errors} | lost {expected - len(results)}")
        print(
            f"latency p50 {statistics.median(lat):.2f} s | p99 {lat[int(0.99 * (len(lat) - 1))]:.2f} s | "
            f"aggregate {args.clients * args.requests * args.max_tokens / wall:,.0f} tokens/s over {wall:.1f} s"
        )
        batching = httpx.get(f"{url}/health").json()["batching"]["tiny"]
        print(f"max batch {args.max_batch}: {batching['batches']} batches, largest {batching['largest_batch']} rows")
        h = {"Authorization": "Bearer k", "Content-Type": "application/json"}
        for body, status in BAD:
            got = httpx.post(f"{url}/v1/completions", content=body, headers=h).status_code
            print(f"bad request -> {got} (expected {status}) | health {httpx.get(f'{url}/health').json()['status']}")
        no_key = httpx.post(f"{url}/v1/completions", json={"prompt": "a"}).status_code
        print(f"missing token -> {no_key} (expected 401)")
        server.should_exit = True


if __name__ == "__main__":
    main()
