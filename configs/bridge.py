"""VLA-MBPO on BridgeData V2 (RLDS): the real-robot data path, without a simulator.

Usage: python -m vlambpo_jax.main --config=configs/bridge.py[:ARG] --workdir=DIR
ARG (comma separated): `smoke` reads the tiny Bridge-format fixture shipped in tests/fixtures and
shrinks every size. Point at the real release with --config.data.builder_dir=/path/bridge_dataset/1.0.0.

Top-level fields: seed, stages, chunk_size, action_dim, views, image_size as in configs/tabletop.py.
Sections: data, policy, sft, wm, rl, mesh, distributed, checkpoint, log.
"""
import os

import ml_collections

from configs import common

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = common.parse_arg(arg, smoke=False)
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.stages = ("data",)
    c.chunk_size = 10
    c.action_dim = 7
    c.views = ("head", "wrist")
    c.image_size = 64

    # --- data: how RLDS episodes become training batches (vlambpo_jax/data) ---
    c.data = ml_collections.ConfigDict()

    c.mesh = common.mesh_config()
    c.distributed = common.distributed_config()
    c.checkpoint = common.checkpoint_config()
    c.log = common.log_config()
    if args.smoke:
        c.image_size = 32
    return c
