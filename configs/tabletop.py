"""The embedded default: VLA-MBPO on the MJX tabletop tasks, sized for a 2-core laptop CPU.

Usage: python -m vlambpo_jax.main --config=configs/tabletop.py[:ARG] --workdir=DIR
ARG (comma separated): `smoke` shrinks every size so the whole pipeline runs in a couple of minutes.

Top-level fields:
  seed: the one seed every stage derives its PRNG keys from.
  stages: the pipeline stages to run, in order (see vlambpo_jax/pipeline.py for all of them).
  chunk_size: k, actions per chunk; also the world model's frame skip. Must be <= every task horizon.
  action_dim: 7 (Bridge convention: dx, dy, dz, droll, dpitch, dyaw, gripper with 1 = open).
  views: camera names in observation order; index 0 is the head view, 1 the wrist view.
  image_size: square resolution (pixels) of every view the models see.
Sections (each documented where it is built below): env, demos, data, policy, sft, wm, rl, eval,
checkpoint, log.
"""
import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = common.parse_arg(arg, smoke=False)
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.stages = ("demos",)
    c.chunk_size = 10
    c.action_dim = 7
    c.views = ("head", "wrist")
    c.image_size = 32

    # --- env: the MJX tabletop simulator (vlambpo_jax/envs) ---
    c.env = ml_collections.ConfigDict()

    # --- demos: scripted expert episodes written as RLDS (vlambpo_jax/envs/demos.py) ---
    c.demos = ml_collections.ConfigDict()

    # --- data: how RLDS episodes become training batches (vlambpo_jax/data) ---
    c.data = ml_collections.ConfigDict()

    # --- policy: the pi0.5-style VLA (vlambpo_jax/models/policy.py) ---
    c.policy = ml_collections.ConfigDict()

    # --- eval: evaluation in the simulator (vlambpo_jax/envs/evaluation.py) ---
    c.eval = ml_collections.ConfigDict()

    c.checkpoint = common.checkpoint_config()
    c.log = common.log_config()
    if args.smoke:
        c.checkpoint.every_steps = 20
        c.log.every_steps = 5
    return c
