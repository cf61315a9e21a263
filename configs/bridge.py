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
from configs.tabletop import wm_config

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

    # --- data: how RLDS episodes become training batches (fields: configs/common.py:data_config) ---
    c.data = common.data_config(
        name="bridge_dataset", version="1.0.0", layout="rail_bridge", drop_first_zero_action=True,
        binarize_gripper=True, episode_buffer=32, max_text_len=64)
    if args.smoke:  # the tiny Bridge-format fixture shipped with the tests
        c.data.update(dict(builder_dir=os.path.join(_ROOT, "tests", "fixtures", "bridge_dataset", "1.0.0"),
                           batch_size=8, shuffle_buffer=64, episode_buffer=4, max_text_len=32))

    # --- policy and sft (fields: configs/common.py:policy_config, sft_config) ---
    # 64 px views with 16 px patches keep 16 tokens a view (smoke: 32 px views, 8 px patches).
    c.policy = common.policy_config(c.data, args.smoke, vit_patch=8 if args.smoke else 16)
    c.sft = common.sft_config(c.data, args.smoke, in_memory=False)

    # --- wm: the UMM world model (fields documented in configs/tabletop.py:wm_config) ---
    c.wm = wm_config(args.smoke)
    if not args.smoke:  # 64 px views: an 8x-down VAE and 16 px ViT patches keep 16 tokens per view
        c.wm.vae.update(dict(downsample=8, widths=(32, 64, 64)))
        c.wm.vit.patch = 16

    c.mesh = common.mesh_config()
    c.distributed = common.distributed_config()
    c.checkpoint = common.checkpoint_config()
    c.log = common.log_config()
    if args.smoke:
        c.image_size = 32
    return c
