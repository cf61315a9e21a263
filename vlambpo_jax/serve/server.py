"""Websocket policy server speaking openpi's protocol (openpi_client.WebsocketClientPolicy is the client).

The protocol, as the client implements it:
  * the client opens ws://HOST:PORT (header ``Authorization: Api-Key KEY`` when it has a key);
  * the server first sends one binary message: a msgpack-numpy metadata dict;
  * then, per request, the client sends a binary msgpack-numpy observation dict and reads one reply:
    a binary msgpack-numpy dict with "actions" float32[k, action_dim] (robot units), or a text frame,
    which the client raises as ``RuntimeError("Error in inference server: ...")``.
  * ``GET /healthz`` on the same port answers 200 "OK" (no key needed; it says nothing about the policy).

Unlike openpi's server, which closes the connection after an error, a bad request here only gets its
text reply ("bad request: <what is wrong>") and the connection stays open for the next request. Requests
above `max_request_bytes` get such a reply; above `HARD_LIMIT_FACTOR` times that, the websocket layer
closes the connection (close code 1009) without reading the payload, so no client can make the server
buffer unbounded data. Whatever one client sends, every other client keeps being served.

Inference runs in one worker thread (vlambpo_jax.serve.batcher), the network in an asyncio loop, so
slow clients do not hold up inference and concurrent requests are batched without mixing results.
"""
from __future__ import annotations

import asyncio
import hmac
import http
import logging
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import numpy as np
import websockets
from websockets.asyncio.server import ServerConnection, serve
from websockets.http11 import Request, Response

from vlambpo_jax import loading
from vlambpo_jax.models import pi05_import
from vlambpo_jax.serve import wire
from vlambpo_jax.serve.batcher import BatchedSampler, Result
from vlambpo_jax.serve.robot import ObservationMapper, RequestError, load_robot_config

log = logging.getLogger(__name__)

HEALTH_PATH = "/healthz"
HARD_LIMIT_FACTOR = 4
DEFAULT_MAX_REQUEST_BYTES = 16 * 2 ** 20


class PolicyServer:
    """Serves `sampler` (a started BatchedSampler) to openpi clients.

    mapper: ObservationMapper for the robot; metadata: the dict sent on connect; api_key: None/'' = no
    access control, else connections without ``Authorization: Api-Key <api_key>`` are refused (HTTP 401).
    """

    def __init__(self, sampler: BatchedSampler, mapper: ObservationMapper, metadata: dict | None = None, *,
                 host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
                 max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES):
        if max_request_bytes < 1:
            raise ValueError(f"max_request_bytes must be positive, got {max_request_bytes}")
        self.sampler, self.mapper = sampler, mapper
        self.metadata = dict(metadata or {})
        self.host, self.port = host, int(port)
        self.api_key = api_key or None
        self.max_request_bytes = int(max_request_bytes)
        self.requests_served = 0
        self.requests_refused = 0
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # ------------------------------------------------------------------ HTTP stage: health, access
    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        if request.path == HEALTH_PATH:
            return connection.respond(http.HTTPStatus.OK, "OK\n")
        if self.api_key is not None:
            given = request.headers.get("Authorization", "")
            if not hmac.compare_digest(given.encode(), f"Api-Key {self.api_key}".encode()):
                log.warning("refused %s: %s API key", connection.remote_address,
                            "wrong" if given else "missing")
                return connection.respond(http.HTTPStatus.UNAUTHORIZED,
                                          "missing or wrong API key (send 'Authorization: Api-Key <key>')\n")
        return None

    # ------------------------------------------------------------------ websocket stage
    async def _handler(self, ws: ServerConnection) -> None:
        log.info("connection from %s opened", ws.remote_address)
        try:
            await ws.send(wire.packb(self.metadata))
            while True:
                message = await ws.recv()
                await ws.send(await self._answer(message))
        except websockets.ConnectionClosed as e:
            log.info("connection from %s closed (%s)", ws.remote_address, e)

    async def _answer(self, message: Any) -> bytes | str:
        """One request -> the binary reply, or the error text."""
        try:
            if isinstance(message, str):
                raise RequestError("expected a binary msgpack-numpy message, got a text frame")
            if len(message) > self.max_request_bytes:
                raise RequestError(f"request is {len(message)} bytes; this server takes at most "
                                   f"{self.max_request_bytes} (--max_request_bytes)")
            obs, seed = self.mapper(wire.unpackb(message))
        except (RequestError, wire.WireError) as e:
            self.requests_refused += 1
            log.warning("bad request: %s", e)
            return f"bad request: {e}"
        except Exception as e:  # noqa: BLE001 - input no check foresaw: still this client's error only
            self.requests_refused += 1
            log.exception("unreadable request")
            return f"bad request: the observation could not be read ({type(e).__name__}: {e})"

        loop = asyncio.get_running_loop()
        future: asyncio.Future = loop.create_future()

        def deliver(result: Result) -> None:
            loop.call_soon_threadsafe(lambda: future.done() or future.set_result(result))

        self.sampler.submit(obs, seed, deliver)
        result: Result = await future
        if result.error is not None:
            log.error("inference failed", exc_info=result.error)
            tb = "".join(traceback.format_exception(result.error))
            return f"inference failed: {type(result.error).__name__}: {result.error}\n{tb}"
        self.requests_served += 1
        return wire.packb({
            "actions": np.asarray(result.actions, np.float32),
            "seed": result.seed,
            "server_timing": {"infer_ms": result.infer_ms, "queue_ms": result.queue_ms,
                              "batch_size": result.batch_size},
        })

    # ------------------------------------------------------------------ running
    async def serve(self, ready: Callable[[int], None] | None = None) -> None:
        """Listens until stop(); `ready(port)` is called once the socket is bound (port 0 = any free)."""
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        hard_limit = max(HARD_LIMIT_FACTOR * self.max_request_bytes, self.max_request_bytes + 2 ** 20)
        async with serve(self._handler, self.host, self.port, compression=None, max_size=hard_limit,
                         process_request=self._process_request) as server:
            self.port = server.sockets[0].getsockname()[1]
            log.info("serving on ws://%s:%d", self.host, self.port)
            if ready is not None:
                ready(self.port)
            await self._stop.wait()

    def stop(self) -> None:
        """Thread-safe: makes serve() return (open connections are closed with code 1001)."""
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)


class ServerThread:
    """Runs a PolicyServer's asyncio loop in a background thread (tests, notebooks, benchmarks).

    with ServerThread(server) as t: ... t.port ...   (stops the server, and its sampler unless
    stop_sampler=False, e.g. when several servers share one sampler, on exit)
    """

    def __init__(self, server: PolicyServer, timeout: float = 30.0, stop_sampler: bool = True):
        self.server = server
        self.stop_sampler = stop_sampler
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="policy-server", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError("policy server did not start")
        if self._error is not None:
            raise self._error

    def _main(self) -> None:
        try:
            asyncio.run(self.server.serve(ready=lambda port: self._ready.set()))
        except BaseException as e:  # noqa: BLE001 - re-raised in the starting thread
            self._error = e
            self._ready.set()

    @property
    def port(self) -> int:
        return self.server.port

    def stop(self) -> None:
        self.server.stop()
        self._thread.join(10)
        if self.stop_sampler:
            self.server.sampler.stop()

    def __enter__(self) -> "ServerThread":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def build(checkpoint, *, robot_config: str = "", batch_sizes=(1, 2, 4, 8), mode: str = "eval", seed: int = 0,
          batch_wait_s: float = 0.0, step: int | None = None, host: str = "127.0.0.1", port: int = 8000,
          api_key: str | None = None, max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
          config=None, norm_stats_asset: str = "", log_fn: Callable[[str], None] = log.info) -> PolicyServer:
    """Loads a checkpoint (vlambpo_jax.loading.load_policy; a pi0.5 checkpoint as released through
    loading.load_pi05_policy, which needs `config`), compiles every batch size (warm-up) and returns a
    PolicyServer whose sampler is started; call `await server.serve()` or ServerThread(server)."""
    t0 = time.perf_counter()
    if pi05_import.is_pi05_checkpoint(str(checkpoint)):
        if config is None:
            raise ValueError(f"{checkpoint} is a pi0.5 checkpoint: serve it with --config=configs/bridge.py:pi05 "
                             "--config.policy.tokenizer=<PaliGemma tokenizer directory>")
        policy, params, tokenizer, assets = loading.load_pi05_policy(checkpoint, config, norm_stats_asset)
    else:
        policy, params, tokenizer, assets = loading.load_policy(Path(checkpoint), step=step)
    config, dims = policy.config, policy.dims
    robot = load_robot_config(robot_config, dims.num_views)
    prompt_format = config.policy.get("prompt_format", "plain")
    reads_state = dims.use_state or prompt_format == "pi05"
    max_text_len = int(config.policy.max_text_len)
    mapper = ObservationMapper(robot, image_size=dims.image_size, max_text_len=max_text_len,
                               tokenizer=tokenizer, use_state=dims.use_state, state_dim=int(config.policy.state_dim),
                               state_norm=loading.state_normalizer(assets, config) if reads_state else None,
                               prompt_format=prompt_format)
    log_fn(f"loaded {checkpoint} in {time.perf_counter() - t0:.1f} s; robot config {robot.name!r}")

    sampler = BatchedSampler(policy, params, batch_sizes=batch_sizes, mode=mode, seed=seed,
                             batch_wait_s=batch_wait_s)
    tokens, token_mask = tokenizer.encode("warm up", max_text_len)
    example = {"images": np.zeros((dims.num_views, dims.image_size, dims.image_size, 3), np.uint8),
               "image_mask": np.ones((dims.num_views,), bool), "tokens": np.asarray(tokens, np.int32),
               "token_mask": np.asarray(token_mask, bool)}
    if dims.use_state:
        example["state"] = np.zeros((dims.state_dim,), np.float32)
    times = sampler.warmup(example)
    log_fn("compiled batch sizes " + ", ".join(f"{b}: {s:.1f} s" for b, s in times.items()))
    sampler.start()

    metadata = {
        "server": "vlambpo_jax", "mode": mode,
        "action_horizon": int(dims.chunk_size), "action_dim": int(dims.action_dim),
        "views": list(config.views), "image_size": int(dims.image_size),
        "use_state": bool(dims.use_state), "state_dim": int(dims.state_dim) if reads_state else 0,
        "prompt_format": prompt_format,
        "robot_config": robot.to_dict(), "max_request_bytes": int(max_request_bytes),
        "batch_sizes": list(sampler.batch_sizes),
    }
    return PolicyServer(sampler, mapper, metadata, host=host, port=port, api_key=api_key,
                        max_request_bytes=max_request_bytes)
