"""Request latency of the websocket policy server (vlambpo_jax.serve) with 1 and 8 concurrent clients.

Usage: python benchmarks/serve_latency.py [--checkpoint=DIR | --config_arg=smoke] [--requests=200] [--clients=1,8]
           [--batch_sizes=1,2,4,8] [--batch_wait_ms=0] [--client_image_size=0] [--out=FILE.json]

Without --checkpoint, a tabletop policy with random weights (sizes: configs/tabletop.py with
--config_arg, default 'smoke'; '' = full default sizes) is saved to a temporary directory (the serving
tests' checkpoint maker). The server runs in this process on 127.0.0.1 (ServerThread);
each client is openpi_client.WebsocketClientPolicy in its own thread, sending `--requests` requests
back to back (after 5 warm-up requests). Latency = client-side time of one infer() call (encode, send,
queue, batch, policy, reply, decode); queue_plus_infer = the part spent waiting for and running the
policy (the server's own timing). Also reported: the policy alone at batch 1 (jit call, no server), so
the serving overhead can be read off, and how requests were batched. Prints JSON.
The clients share this process (and its GIL) and the machine's cores with the server, so on a small
machine the 8-client numbers include that contention; robots on other machines see less.
--client_image_size=224 sends 224x224 camera images (resized by the server, as for a real robot).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import threading
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

warnings.filterwarnings("ignore", message=r"connect\(\) must be used as a context manager")


def _stats(ms: list[float]) -> dict:
    a = np.asarray(ms)
    return {"n": int(a.size), "p50_ms": float(np.percentile(a, 50)), "p95_ms": float(np.percentile(a, 95)),
            "mean_ms": float(a.mean()), "max_ms": float(a.max())}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", default="")
    ap.add_argument("--config_arg", default="smoke", help="without --checkpoint: tabletop config arg")
    ap.add_argument("--requests", type=int, default=200, help="requests per client")
    ap.add_argument("--clients", default="1,8")
    ap.add_argument("--batch_sizes", default="1,2,4,8")
    ap.add_argument("--batch_wait_ms", type=float, default=0.0)
    ap.add_argument("--client_image_size", type=int, default=0, help="0: the policy's image size")
    ap.add_argument("--out", default="")
    a = ap.parse_args()

    from openpi_client import websocket_client_policy

    from vlambpo_jax.serve import server as server_lib

    tmp = None
    checkpoint = a.checkpoint
    if not checkpoint:
        from tests.helpers.serve_checkpoint import make_checkpoint
        tmp = tempfile.TemporaryDirectory()
        checkpoint = str(make_checkpoint(os.path.join(tmp.name, "policy"), config_arg=a.config_arg))
    batch_sizes = [int(b) for b in a.batch_sizes.split(",")]
    t0 = time.perf_counter()
    server = server_lib.build(checkpoint, batch_sizes=batch_sizes, batch_wait_s=a.batch_wait_ms / 1e3, port=0,
                              log_fn=lambda m: None)
    startup_s = time.perf_counter() - t0
    meta = server.metadata
    size = a.client_image_size or meta["image_size"]
    keys = [k for k in meta["robot_config"]["image_keys"] if k]

    def obs(i):
        rng = np.random.default_rng(i)
        o = {k: rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for k in keys}
        o["prompt"] = "pick up the red cube"
        if meta["use_state"]:
            o["observation/state"] = rng.normal(size=meta["state_dim"]).astype(np.float32)
        return o

    # The policy alone, batch 1, same jitted function the server runs.
    single, _ = server.mapper(obs(0))
    for _ in range(5):
        server.sampler.run_batch([single], [0])
    direct = []
    for i in range(max(50, a.requests // 2)):
        t0 = time.perf_counter()
        server.sampler.run_batch([single], [i])
        direct.append((time.perf_counter() - t0) * 1e3)

    result = {"backend": jax.default_backend(), "machine": platform.processor() or platform.machine(),
              "cpu_count": os.cpu_count(), "checkpoint": a.checkpoint or f"tabletop:{a.config_arg} (random weights)",
              "action_horizon": meta["action_horizon"], "policy_image_size": meta["image_size"],
              "client_image_size": size, "batch_sizes": batch_sizes, "batch_wait_ms": a.batch_wait_ms,
              "startup_s": startup_s, "policy_only_batch1": _stats(direct), "clients": {}}

    with server_lib.ServerThread(server) as thread:
        for n in [int(c) for c in a.clients.split(",")]:
            clients = [websocket_client_policy.WebsocketClientPolicy("127.0.0.1", thread.port) for _ in range(n)]
            requests = [obs(i + 1) for i in range(n)]
            for c, o in zip(clients, requests):
                for _ in range(5):
                    c.infer(o)
            lat: list[list[float]] = [[] for _ in range(n)]
            in_server: list[list[float]] = [[] for _ in range(n)]
            barrier = threading.Barrier(n + 1)

            def work(j):
                barrier.wait()
                for _ in range(a.requests):
                    t0 = time.perf_counter()
                    reply = clients[j].infer(requests[j])
                    lat[j].append((time.perf_counter() - t0) * 1e3)
                    timing = reply["server_timing"]
                    in_server[j].append(timing["queue_ms"] + timing["infer_ms"])

            server.sampler.batch_histogram.clear()
            threads = [threading.Thread(target=work, args=(j,)) for j in range(n)]
            for t in threads:
                t.start()
            barrier.wait()
            t0 = time.perf_counter()
            for t in threads:
                t.join()
            wall = time.perf_counter() - t0
            hist = dict(sorted(server.sampler.batch_histogram.items()))
            result["clients"][str(n)] = {
                **_stats([x for row in lat for x in row]), "requests_per_s": n * a.requests / wall,
                "queue_plus_infer": _stats([x for row in in_server for x in row]),
                "batches_by_size": {str(k): v for k, v in hist.items()},
                "mean_batch": sum(k * v for k, v in hist.items()) / max(sum(hist.values()), 1)}
            for c in clients:
                c._ws.close()   # openpi-client 0.1.2 has no close(); its connection is this attribute
    if tmp is not None:
        tmp.cleanup()

    text = json.dumps(result, indent=2)
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
