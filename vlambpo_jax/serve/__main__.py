"""Serve a checkpoint's policy to robots over openpi's websocket protocol.

  python -m vlambpo_jax.serve --checkpoint=WORKDIR/sft/policy [--host=127.0.0.1] [--port=8000]
      [--api_key=KEY] [--robot_config=libero|droid|aloha|FILE.json] [--batch_sizes=1,2,4,8]

A pi0.5 checkpoint as released (transformers / LeRobot safetensors with config.json, and openpi's
assets/<id>/norm_stats.json or LeRobot's normalizer files) is served as is:
  python -m vlambpo_jax.serve --checkpoint=/ckpt/pi05_libero --robot_config=libero
      --config=configs/bridge.py:pi05 --config.policy.tokenizer=/ckpt/paligemma_tokenizer
      [--norm_stats_asset=physical-intelligence/libero]

Robot side (unchanged openpi code):
  from openpi_client import websocket_client_policy
  policy = websocket_client_policy.WebsocketClientPolicy("127.0.0.1", 8000, api_key=KEY)
  actions = policy.infer({"observation/image": img, "observation/wrist_image": wrist,
                          "prompt": "pick up the red cube"})["actions"]      # float32[k, action_dim]

The policy is compiled for every batch size before the port opens, so the first request is fast;
"serving on ws://HOST:PORT" is printed once it accepts connections. Ctrl-C / SIGTERM stop it.
"""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys

import jax
from absl import app, flags

from vlambpo_jax import cli
from vlambpo_jax.serve import server as server_lib
from vlambpo_jax.train.checkpoints import CheckpointError

FLAGS = flags.FLAGS
flags.DEFINE_string("checkpoint", None, "Checkpoint directory of a trained policy (e.g. <workdir>/sft/policy, "
                    "or the mbpo stage's); params, norm stats and tokenizer come from its assets.")
flags.DEFINE_integer("step", None, "Checkpoint step to load (default: the newest intact one).")
flags.DEFINE_string("host", "127.0.0.1", "Address to bind. The default accepts local connections only; "
                    "use 0.0.0.0 to serve a robot on the network (then set --api_key).")
flags.DEFINE_integer("port", 8000, "TCP port (0: any free port, printed at start).")
flags.DEFINE_string("api_key", None, "Require 'Authorization: Api-Key <key>' (openpi-client's api_key=). "
                    "Default: $VLAMBPO_SERVE_API_KEY if set, else no access control.")
flags.DEFINE_string("robot_config", "libero", "Observation mapping: a preset (libero, droid, aloha) or a "
                    "JSON file (see vlambpo_jax/serve/robot.py).")
flags.DEFINE_list("batch_sizes", ["1", "2", "4", "8"], "Compiled batch sizes; concurrent requests are "
                  "batched up to the largest.")
flags.DEFINE_float("batch_wait_ms", 0.0, "How long to wait for more requests to fill a batch.")
flags.DEFINE_enum("mode", "eval", ["eval", "train"], "Policy.sample mode: eval = deterministic ODE given "
                  "the seed; train = Flow-SDE.")
flags.DEFINE_integer("seed", 0, "Seeds the per-request seeds of requests that bring no 'seed'.")
flags.DEFINE_integer("max_request_bytes", 16 * 2 ** 20, "Larger requests get an error reply.")
flags.DEFINE_string("jax_cache_dir", None, "Persistent XLA compilation cache (speeds up restarts).")
flags.DEFINE_string("norm_stats_asset", "", "pi0.5 checkpoints only: which robot's statistics (openpi's "
                    "assets/<id>) when the checkpoint ships several.")
cli.define_config(FLAGS)   # pi0.5 checkpoints only (sizes and tokenizer); trained checkpoints carry theirs
flags.mark_flags_as_required(["checkpoint"])


def main(argv):
    del argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in ("absl", "jax", "orbax", "websockets"):
        logging.getLogger(name).setLevel(logging.WARNING)
    if FLAGS.jax_cache_dir:
        jax.config.update("jax_compilation_cache_dir", FLAGS.jax_cache_dir)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    if not os.path.isdir(FLAGS.checkpoint):
        print(f"error: --checkpoint: no directory {FLAGS.checkpoint!r}", file=sys.stderr)
        sys.exit(2)
    try:
        batch_sizes = [int(b) for b in FLAGS.batch_sizes]
    except ValueError:
        print(f"error: --batch_sizes must be ints, got {FLAGS.batch_sizes}", file=sys.stderr)
        sys.exit(2)
    api_key = FLAGS.api_key if FLAGS.api_key is not None else os.environ.get("VLAMBPO_SERVE_API_KEY")
    try:
        server = server_lib.build(
            FLAGS.checkpoint, robot_config=FLAGS.robot_config, batch_sizes=batch_sizes, mode=FLAGS.mode,
            seed=FLAGS.seed, batch_wait_s=FLAGS.batch_wait_ms / 1e3, step=FLAGS.step, host=FLAGS.host,
            port=FLAGS.port, api_key=api_key, max_request_bytes=FLAGS.max_request_bytes,
            config=None if FLAGS.config is None else cli.checked(FLAGS.config),
            norm_stats_asset=FLAGS.norm_stats_asset, log_fn=lambda m: print(m, flush=True))
    except (ValueError, KeyError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)

    async def run():
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, server.stop)
        await server.serve(ready=lambda port: print(
            f"serving on ws://{FLAGS.host}:{port} (health: http://{FLAGS.host}:{port}{server_lib.HEALTH_PATH}"
            f"; API key {'required' if server.api_key else 'not required'})", flush=True))

    try:
        asyncio.run(run())
    except OSError as e:                     # e.g. the port is taken
        print(f"error: cannot listen on {FLAGS.host}:{FLAGS.port}: {e}", file=sys.stderr)
        sys.exit(2)
    finally:
        server.sampler.stop()
    print(f"stopped after {server.requests_served} requests ({server.requests_refused} refused)", flush=True)


if __name__ == "__main__":
    app.run(main)
