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
    # Fields of c.data:
    #   builder_dir: TFDS builder directory (.../<name>/<version>, holding dataset_info.json) to read.
    #   name, data_dir, version: alternative to builder_dir: data_dir/name/version ('' version = newest).
    #   split: the split training batches come from.
    #   layout: 'rail_bridge' (RAIL bridge_dataset 1.0.0), 'oxe_bridge' (OXE bridge 0.1.0) or 'generic'
    #     (this project's own episodes, vlambpo_jax.data.rlds_writer).
    #   image_keys: observation keys of the views, in config.views order (head, wrist); '' = a view the
    #     dataset lacks (always masked).
    #   empty_view_rule: how a view that is empty in an episode is found and masked: 'pixels' (every frame
    #     all zero), 'metadata' (episode_metadata has_<key> False), 'either'.
    #   state_dim: proprio state dims (the action dims are config.action_dim).
    #   drop_first_zero_action: drop step 0 when its action is all zeros (Bridge episodes start so).
    #   binarize_gripper, gripper_dim: map a continuous gripper command (1 = open) to {0, 1}.
    #   norm_mode: 'percentile' (1st/99th percentiles -> [-1, 1]) or 'zscore'.
    #   norm_skip_action_dims, norm_skip_state_dims: dims left unnormalized (the gripper).
    #   stats_cache_dir: where normalization statistics are cached ('' = <workdir>/norm_stats).
    #   batch_size: global batch (split over hosts); shuffle_buffer: samples in the shuffle buffer;
    #   episode_buffer: episodes in the shuffle buffer of tfrecord data (array_record is permuted).
    #   max_text_len: instruction tokens per sample (keep equal to policy.max_text_len).
    #   action_pad: padding of action chunks past the episode end, 'repeat_last' or 'zeros' (masked).
    #   skip_bad_episodes: skip and count bad episodes instead of stopping with an error.
    #   inspect_batches: batches the 'data' stage reads and summarizes.
    c.data.update(dict(
        builder_dir="", name="bridge_dataset", data_dir="", version="1.0.0", split="train",
        layout="rail_bridge", image_keys=("image_0", "image_1"), empty_view_rule="pixels", state_dim=7,
        drop_first_zero_action=True, binarize_gripper=True, gripper_dim=6,
        norm_mode="percentile", norm_skip_action_dims=(6,), norm_skip_state_dims=(),
        stats_cache_dir="", batch_size=32, shuffle_buffer=2000, episode_buffer=32, max_text_len=64,
        action_pad="repeat_last", skip_bad_episodes=False, inspect_batches=2,
    ))
    if args.smoke:  # the tiny Bridge-format fixture shipped with the tests
        c.data.update(dict(builder_dir=os.path.join(_ROOT, "tests", "fixtures", "bridge_dataset", "1.0.0"),
                           batch_size=8, shuffle_buffer=64, episode_buffer=4, max_text_len=32))

    c.mesh = common.mesh_config()
    c.distributed = common.distributed_config()
    c.checkpoint = common.checkpoint_config()
    c.log = common.log_config()
    if args.smoke:
        c.image_size = 32
    return c
