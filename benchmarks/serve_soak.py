#!/usr/bin/env python3
"""A bounded soak of the websocket policy server on loopback: 8 clients for a few minutes, then 64
clients briefly. Every reply is checked against the single-client reply for the same observation and
seed; a reply that differs is wrong, a request without a reply (error, timeout, closed socket) is lost.

  python benchmarks/serve_soak.py [--minutes=3] [--burst_seconds=30] [--checkpoint=DIR] [--out=FILE]

Without --checkpoint, the serving tests' smoke-sized tabletop policy with random weights is used. The
server runs in this process (ServerThread on 127.0.0.1); each client is openpi_client's
WebsocketClientPolicy in its own thread, cycling through a pool of (observation, seed) pairs. Prints
JSON: per phase the requests, latency percentiles (client side), wrong and lost counts.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
import warnings

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.serve_latency import _stats  # noqa: E402

warnings.filterwarnings("ignore", message=r"connect\(\) must be used as a context manager")
POOL = 32   # distinct (observation, seed) requests, reused round-robin


def _requests(meta: dict) -> list[dict]:
    size = meta["image_size"]
    keys = [k for k in meta["robot_config"]["image_keys"] if k]
    out = []
    for i in range(POOL):
        rng = np.random.default_rng(i)
        o = {k: rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for k in keys}
        o["prompt"] = ["pick up the red cube", "push the blue block to the left square"][i % 2]
        o["seed"] = int(1000 + i)
        if meta["use_state"]:
            o["observation/state"] = rng.normal(size=meta["state_dim"]).astype(np.float32)
        out.append(o)
    return out


def _phase(port: int, clients: int, seconds: float, requests: list[dict], expected: list[np.ndarray],
           atol: float) -> dict:
    from openpi_client import websocket_client_policy

    latency: list[float] = []
    counts = {"requests": 0, "wrong": 0, "lost": 0}
    errors: list[str] = []
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def work(j: int) -> None:
        try:
            client = websocket_client_policy.WebsocketClientPolicy("127.0.0.1", port)
        except Exception as e:  # noqa: BLE001 - a client that cannot connect loses its first request
            with lock:
                counts["requests"] += 1
                counts["lost"] += 1
                errors.append(f"connect: {type(e).__name__}: {e}")
            return
        i = j
        while time.monotonic() < deadline:
            k = i % POOL
            t0 = time.perf_counter()
            try:
                actions = np.asarray(client.infer(requests[k])["actions"])
                ok = actions.shape == expected[k].shape and np.allclose(actions, expected[k], atol=atol)
                lost, err = False, ""
            except Exception as e:  # noqa: BLE001
                ok, lost, err = False, True, f"{type(e).__name__}: {e}"
            ms = (time.perf_counter() - t0) * 1e3
            with lock:
                counts["requests"] += 1
                counts["lost"] += lost
                counts["wrong"] += (not ok) and not lost
                latency.append(ms)
                if err and len(errors) < 5:
                    errors.append(err)
            if lost:   # a broken connection: start a new one, as a robot would
                try:
                    client = websocket_client_policy.WebsocketClientPolicy("127.0.0.1", port)
                except Exception:  # noqa: BLE001
                    return
            i += clients
        client._ws.close()   # openpi-client 0.1.2 has no close(); its connection is this attribute

    threads = [threading.Thread(target=work, args=(j,)) for j in range(clients)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - t0
    return {"clients": clients, "seconds": round(wall, 1), **counts,
            "requests_per_s": round(counts["requests"] / wall, 1),
            "latency": _stats(latency) | {"p99_ms": float(np.percentile(latency, 99))} if latency else {},
            "errors": errors}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default="")
    ap.add_argument("--minutes", type=float, default=3.0, help="the 8-client phase")
    ap.add_argument("--burst_seconds", type=float, default=30.0, help="the 64-client phase")
    ap.add_argument("--clients", default="8,64", help="clients of the long phase, then of the burst")
    ap.add_argument("--atol", type=float, default=1e-5, help="max abs difference from the single-client reply")
    ap.add_argument("--out", default="")
    a = ap.parse_args(argv)

    from openpi_client import websocket_client_policy

    from vlambpo_jax.serve import server as server_lib

    tmp = None
    checkpoint = a.checkpoint
    if not checkpoint:
        from tests.helpers.serve_checkpoint import make_checkpoint
        tmp = tempfile.TemporaryDirectory()
        checkpoint = str(make_checkpoint(os.path.join(tmp.name, "policy")))
    server = server_lib.build(checkpoint, port=0, log_fn=lambda m: None)
    requests = _requests(server.metadata)
    long_clients, burst_clients = (int(c) for c in a.clients.split(","))
    with server_lib.ServerThread(server) as thread:
        single = websocket_client_policy.WebsocketClientPolicy("127.0.0.1", thread.port)
        expected = [np.asarray(single.infer(r)["actions"]) for r in requests]
        single._ws.close()
        phases = [_phase(thread.port, long_clients, a.minutes * 60, requests, expected, a.atol),
                  _phase(thread.port, burst_clients, a.burst_seconds, requests, expected, a.atol)]
    if tmp is not None:
        tmp.cleanup()
    result = {"benchmark": "serve_soak", "checkpoint": a.checkpoint or "tabletop:smoke (random weights)",
              "cpu_count": os.cpu_count(), "atol": a.atol, "pool": POOL, "phases": phases,
              "wrong": sum(p["wrong"] for p in phases), "lost": sum(p["lost"] for p in phases)}
    text = json.dumps(result, indent=2)
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text + "\n")
    return 0 if result["wrong"] == 0 and result["lost"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
