"""The websocket policy server against the real openpi-client (PyPI openpi-client==0.1.2, installed with
--no-deps because it pins numpy<2; see README "Serving a policy to a robot").

One tiny checkpoint and one compiled sampler (batch sizes 1 and 4) serve every test here; the API-key
server shares the sampler, so nothing compiles twice.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import urllib.request

import jax
import msgpack
import numpy as np
import pytest

openpi_client = pytest.importorskip("openpi_client")
from openpi_client import action_chunk_broker, msgpack_numpy, websocket_client_policy  # noqa: E402
from websockets.exceptions import ConnectionClosedError, InvalidStatus  # noqa: E402
from websockets.sync.client import connect  # noqa: E402

from tests.helpers.serve_checkpoint import make_checkpoint  # noqa: E402
from vlambpo_jax import loading  # noqa: E402
from vlambpo_jax.serve import server as server_lib  # noqa: E402
from vlambpo_jax.serve import wire  # noqa: E402

pytestmark = pytest.mark.filterwarnings(
    # openpi-client 0.1.2 calls websockets.sync.client.connect() outside a `with` (websockets >= 16 warns).
    r"ignore:connect\(\) must be used as a context manager:DeprecationWarning")

MAX_BYTES = 64 * 1024
KEY = "s3cret-key"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("serve") / "policy")


@pytest.fixture(scope="module")
def direct(checkpoint):
    """Calls the policy directly: (client observation dict, seed) -> float32[k, 7]."""
    policy, params, tokenizer, _ = loading.load_policy(checkpoint)
    sample = jax.jit(lambda p, o, k: policy.sample(p, o, k, mode="eval"))
    max_len = int(policy.config.policy.max_text_len)

    def run(obs, seed):
        ids, mask = tokenizer.encode_batch([obs["prompt"]], max_len)
        batch = {"images": np.stack([obs["observation/image"], obs["observation/wrist_image"]])[None],
                 "image_mask": np.ones((1, 2), bool), "tokens": ids, "token_mask": mask}
        return np.asarray(sample(params, batch, jax.random.key(seed))[0])

    run.policy = policy
    return run


@pytest.fixture(scope="module")
def served(checkpoint):
    server = server_lib.build(checkpoint, batch_sizes=(1, 4), batch_wait_s=0.02, port=0,
                              max_request_bytes=MAX_BYTES, log_fn=lambda m: None)
    with server_lib.ServerThread(server) as thread:
        yield thread


def _obs(i: int, size: int = 32) -> dict:
    rng = np.random.default_rng(100 + i)
    return {"observation/image": rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
            "observation/wrist_image": rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
            "prompt": f"pick up cube number {i}"}


def _client(thread, **kw) -> websocket_client_policy.WebsocketClientPolicy:
    return websocket_client_policy.WebsocketClientPolicy("127.0.0.1", thread.port, **kw)


# ---------------------------------------------------------------------------------------------- wire
def test_openpi_client_wheel_tests_pass_on_our_numpy(tmp_path):
    """The tests shipped inside the openpi-client wheel pass with numpy 2 (its numpy<2 pin is stale)."""
    assert int(np.__version__.split(".")[0]) >= 2
    out = subprocess.run([sys.executable, "-m", "pytest", "--pyargs", "openpi_client", "-q", "-p",
                          "no:cacheprovider"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert " passed" in out.stdout


@pytest.mark.parametrize("value", [
    np.zeros((2, 3), np.float32), np.arange(5, dtype=np.int64), np.array([True, False]), np.array(["ab", "c"]),
    np.float32(1.5), np.int16(-3), {"a": [1, "x", np.ones((1, 2, 3), np.uint8)], "b": None}, np.zeros((0, 4)),
])
def test_wire_format_matches_openpi_client_both_ways(value):
    def same(a, b):
        if isinstance(a, dict):
            assert a.keys() == b.keys()
            for k in a:
                same(a[k], b[k])
        elif isinstance(a, list):
            assert len(a) == len(b)
            for x, y in zip(a, b):
                same(x, y)
        elif isinstance(a, (np.ndarray, np.generic)):
            assert a.dtype == b.dtype and np.shape(a) == np.shape(b) and np.array_equal(a, b)
        else:
            assert a == b

    same(value, wire.unpackb(msgpack_numpy.packb(value)))
    same(value, msgpack_numpy.unpackb(wire.packb(value)))


@pytest.mark.parametrize("payload, match", [
    (b"\xc1\x00garbage", "not valid msgpack"),
    (msgpack_numpy.packb({"x": np.ones(3)})[:-5], "not valid msgpack"),
    ({b"__ndarray__": True, b"data": b"\x00" * 8, b"dtype": "|O", b"shape": [1]}, "object"),
    ({b"__ndarray__": True, b"data": b"\x00" * 7, b"dtype": "<f4", b"shape": [2]}, "needs 8 bytes"),
    ({b"__ndarray__": True, b"data": b"", b"dtype": "nonsense", b"shape": [0]}, "unknown array dtype"),
    ({b"__ndarray__": True, b"data": b"", b"dtype": "<f4", b"shape": [-1]}, "non-negative"),
])
def test_wire_decoder_refuses_malformed_messages(payload, match):
    data = payload if isinstance(payload, bytes) else msgpack.packb(payload)
    with pytest.raises(wire.WireError, match=match):
        wire.unpackb(data)


# ---------------------------------------------------------------------------------------------- serving
def test_round_trip_matches_the_policy_called_directly(served, direct):
    client = _client(served)
    meta = client.get_server_metadata()
    assert meta["action_horizon"] == 10 and meta["action_dim"] == 7 and meta["server"] == "vlambpo_jax"
    assert meta["robot_config"]["image_keys"] == ["observation/image", "observation/wrist_image"]

    obs = _obs(0)
    reply = client.infer({**obs, "seed": 7})
    assert reply["actions"].shape == (10, 7) and reply["actions"].dtype == np.float32
    assert reply["seed"] == 7 and reply["server_timing"]["infer_ms"] > 0
    np.testing.assert_allclose(reply["actions"], direct(obs, 7), rtol=1e-5, atol=1e-5)
    # Same seed, same answer; another seed, another sample of the flow.
    np.testing.assert_array_equal(client.infer({**obs, "seed": 7})["actions"], reply["actions"])
    assert not np.allclose(client.infer({**obs, "seed": 8})["actions"], reply["actions"])
    # Without a seed the server draws one and says which, so the answer can be reproduced.
    free = client.infer(obs)
    np.testing.assert_allclose(free["actions"], direct(obs, free["seed"]), rtol=1e-5, atol=1e-5)

    # openpi's ActionChunkBroker (robots step through a chunk one action at a time) works unchanged.
    broker = action_chunk_broker.ActionChunkBroker(client, action_horizon=meta["action_horizon"])
    steps = [broker.infer({**obs, "seed": 7})["actions"] for _ in range(10)]
    np.testing.assert_array_equal(np.stack(steps), reply["actions"])


def test_health_check(served):
    with urllib.request.urlopen(f"http://127.0.0.1:{served.port}/healthz", timeout=10) as r:
        assert r.status == 200 and r.read() == b"OK\n"


def test_eight_concurrent_clients_get_their_own_answers(served, direct):
    n, rounds = 8, 3
    expected = {(i, r): direct(_obs(i), 1000 * i + r) for i in range(n) for r in range(rounds)}
    got, errors = {}, []
    barrier = threading.Barrier(n)

    def work(i):
        try:
            client = _client(served)
            barrier.wait(timeout=30)
            for r in range(rounds):
                got[i, r] = client.infer({**_obs(i), "seed": 1000 * i + r})["actions"]
        except Exception as e:  # noqa: BLE001
            errors.append(repr(e))

    before = dict(served.server.sampler.batch_histogram)
    threads = [threading.Thread(target=work, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    for key, want in expected.items():
        np.testing.assert_allclose(got[key], want, rtol=1e-5, atol=1e-4, err_msg=str(key))
    after = served.server.sampler.batch_histogram
    assert any(size > 1 and after[size] > before.get(size, 0) for size in after), after  # batching happened


BAD_REQUESTS = [
    (lambda o: {k: v for k, v in o.items() if k != "observation/wrist_image"}, "missing 'observation/wrist_image'"),
    (lambda o: {k: v for k, v in o.items() if k != "prompt"}, "missing 'prompt'"),
    (lambda o: {**o, "observation/image": np.zeros((32, 32, 4), np.uint8)}, r"shape \[32, 32, 4\]"),
    (lambda o: {**o, "observation/image": np.zeros((32, 32), np.uint8)}, r"shape \[32, 32\]"),
    (lambda o: {**o, "observation/image": np.zeros((32, 32, 3), np.float32)}, "dtype float32"),
    (lambda o: {**o, "observation/image": "not an image"}, "must be a uint8 image"),
    (lambda o: {**o, "prompt": np.zeros(3)}, "'prompt' must be a string"),
    (lambda o: {**o, "seed": -1}, "'seed' must be an int"),
    (lambda o: {**o, "padding": np.zeros(MAX_BYTES, np.uint8)}, "at most 65536"),
]


@pytest.mark.parametrize("make_bad, match", BAD_REQUESTS)
def test_bad_request_gets_its_error_and_the_next_request_succeeds(served, direct, make_bad, match):
    client = _client(served)
    obs = _obs(1)
    with pytest.raises(RuntimeError, match=match) as info:
        client.infer(make_bad(obs))
    assert "bad request" in str(info.value)
    np.testing.assert_allclose(client.infer({**obs, "seed": 5})["actions"], direct(obs, 5), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("raw, match", [
    (b"\xc1 these bytes are not msgpack", "not valid msgpack"),
    (msgpack_numpy.packb([1, 2, 3]), "must be a dict"),
    ("a text frame", "text frame"),
    (msgpack.packb({"x": {b"__ndarray__": True, b"data": b"\0" * 8, b"dtype": "|O", b"shape": [1]}}), "object"),
])
def test_undecodable_messages_get_errors_on_the_same_connection(served, direct, raw, match):
    with connect(f"ws://127.0.0.1:{served.port}", compression=None, max_size=None) as ws:
        msgpack_numpy.unpackb(ws.recv())                                   # metadata
        ws.send(raw)
        reply = ws.recv()
        assert isinstance(reply, str) and "bad request" in reply
        assert re.search(match, reply), reply
        obs = _obs(2)
        ws.send(msgpack_numpy.packb({**obs, "seed": 4}))
        np.testing.assert_allclose(msgpack_numpy.unpackb(ws.recv())["actions"], direct(obs, 4),
                                   rtol=1e-5, atol=1e-5)


def test_huge_message_closes_only_that_connection(served, direct):
    other = _client(served)
    with connect(f"ws://127.0.0.1:{served.port}", compression=None, max_size=None) as ws:
        ws.recv()
        ws.send(b"\x00" * (server_lib.HARD_LIMIT_FACTOR * MAX_BYTES + 2 ** 20 + 1))
        with pytest.raises(ConnectionClosedError) as info:
            ws.recv()
        assert info.value.rcvd.code == 1009                                # message too big
    obs = _obs(3)
    np.testing.assert_allclose(other.infer({**obs, "seed": 1})["actions"], direct(obs, 1), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(_client(served).infer({**obs, "seed": 1})["actions"], direct(obs, 1),
                               rtol=1e-5, atol=1e-5)


def test_api_key_required_when_configured(served, direct):
    base = served.server
    keyed = server_lib.PolicyServer(base.sampler, base.mapper, base.metadata, port=0, api_key=KEY)
    with server_lib.ServerThread(keyed, stop_sampler=False) as thread:
        for kw in ({}, {"api_key": "wrong-key"}, {"api_key": KEY + "x"}):
            with pytest.raises(InvalidStatus) as info:
                _client(thread, **kw)
            assert info.value.response.status_code == 401
        with urllib.request.urlopen(f"http://127.0.0.1:{thread.port}/healthz", timeout=10) as r:
            assert r.status == 200
        obs = _obs(4)
        reply = _client(thread, api_key=KEY).infer({**obs, "seed": 2})
        np.testing.assert_allclose(reply["actions"], direct(obs, 2), rtol=1e-5, atol=1e-5)


def test_cli_serves_a_checkpoint(checkpoint, direct, tmp_path):
    """python -m vlambpo_jax.serve: compiles, prints the port, serves with an API key, stops on SIGTERM."""
    import jax as _jax

    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT, "VLAMBPO_SERVE_API_KEY": KEY}
    cache = _jax.config.jax_compilation_cache_dir or str(tmp_path / "cache")
    proc = subprocess.Popen([sys.executable, "-m", "vlambpo_jax.serve", f"--checkpoint={checkpoint}", "--port=0",
                             "--batch_sizes=1", f"--jax_cache_dir={cache}"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("serving on ws://"):
                break
        assert lines and lines[-1].startswith("serving on ws://127.0.0.1:"), "".join(lines)
        assert any(line.startswith("compiled batch sizes") for line in lines)
        port = int(lines[-1].split("ws://127.0.0.1:")[1].split(" ")[0])
        with pytest.raises(InvalidStatus):
            websocket_client_policy.WebsocketClientPolicy("127.0.0.1", port)
        obs = _obs(5)
        reply = websocket_client_policy.WebsocketClientPolicy("127.0.0.1", port, api_key=KEY).infer({**obs, "seed": 9})
        np.testing.assert_allclose(reply["actions"], direct(obs, 9), rtol=1e-5, atol=1e-5)
        proc.terminate()
        rest, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0, "".join(lines) + rest
        assert "stopped after 1 requests" in rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_inference_failure_is_reported_and_the_server_goes_on(served):
    """A failure inside the policy, or an unexpected one while reading a request, reaches the client as
    an error; the connection keeps working."""
    from vlambpo_jax.serve.batcher import Result

    class FlakySampler:
        calls = 0

        def submit(self, obs, seed, callback):
            FlakySampler.calls += 1
            if FlakySampler.calls == 1:
                callback(Result(actions=None, seed=0, error=FloatingPointError("NaN in the action expert")))
            else:
                callback(Result(actions=np.zeros((10, 7), np.float32), seed=seed or 0, batch_size=1))

        def stop(self):
            pass

    def mapper(obs):          # an input no check foresaw: an unexpected exception while reading it
        if obs.get("prompt") == "boom":
            raise ZeroDivisionError("unforeseen")
        return served.server.mapper(obs)

    flaky = server_lib.PolicyServer(FlakySampler(), mapper, {"server": "stub"}, port=0)
    with server_lib.ServerThread(flaky) as thread:
        client = _client(thread)
        with pytest.raises(RuntimeError, match=r"bad request: .*ZeroDivisionError: unforeseen"):
            client.infer({**_obs(6), "prompt": "boom"})
        with pytest.raises(RuntimeError, match="inference failed: FloatingPointError: NaN in the action expert"):
            client.infer(_obs(6))
        assert client.infer({**_obs(6), "seed": 3})["actions"].shape == (10, 7)
