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

    # --- policy: the pi0.5-style VLA (vlambpo_jax/models/policy.py) ---
    c.policy = ml_collections.ConfigDict(dict(
        # ViT (shared across views; 64 px views -> 16 tokens each): patch size in px, width, blocks,
        # heads, MLP hidden size.
        vit_patch=16, vit_width=64, vit_depth=2, vit_heads=4, vit_mlp=128,
        # Prefix (VLM) transformer: width, layers, query heads, key/value heads (1 = multi-query),
        # head size, gated-MLP hidden size, RoPE base.
        width=128, depth=2, num_heads=4, num_kv_heads=1, head_dim=32, mlp_dim=256, rope_theta=10_000.0,
        # Action expert: width and gated-MLP size; its depth must equal `depth` (one joint attention per
        # layer; heads and head_dim are shared with the prefix).
        expert_width=64, expert_depth=2, expert_mlp_dim=128,
        # Sampling: Euler/Flow-SDE denoising steps; Flow-SDE noise level; whether the one stochastic step
        # is drawn once per sampling call ('per_call', authors' code) or per sample ('per_sample');
        # noise_method: 'flow_sde' only (the learned-noise 'flow_noise' variant is not implemented).
        num_denoise_steps=3, noise_level=0.5, stochastic_step="per_call", noise_method="flow_sde",
        # Proprio state as one extra prefix token (off, as in the paper); its size.
        use_state=False, state_dim=7,
        # Value head MLP hidden sizes (ReLU) on the mean-pooled stop-gradient prefix outputs.
        value_hidden=(128, 64),
        # Text: tokens per instruction (pad/cut; a reference to data.max_text_len, which the reader
        # uses) and tokenizer: 'byte' (UTF-8 bytes), 'words:tabletop' (tabletop instruction words) or a
        # local Hugging Face tokenizer directory.
        max_text_len=c.data.get_ref("max_text_len") if "max_text_len" in c.data else 32, tokenizer="byte",
        # Actions padded to this many dims inside the model (>= action_dim; only action_dim are real).
        action_pad_dim=7,
        # Compute dtype ('float32' | 'bfloat16'; bf16 is far slower on CPU); params stay float32.
        dtype="float32",
    ))
    if args.smoke:
        c.policy.update(dict(vit_width=32, vit_depth=1, vit_mlp=64, width=64, depth=1, num_heads=2,
                             head_dim=16, mlp_dim=128, expert_width=32, expert_depth=1, expert_mlp_dim=64,
                             value_hidden=(32,), vit_patch=8))

    # --- sft: behaviour cloning of the policy on the demos (vlambpo_jax/models/sft.py) ---
    # steps: optimizer steps; batch_size: global batch (a reference to data.batch_size, which the reader
    # uses); lr / min_lr_ratio / warmup: AdamW peak lr, cosine decay to lr * min_lr_ratio after linear
    # warmup steps; b1, b2, weight_decay: AdamW; clip: global grad-norm clip; ema: EMA decay of the
    # params used for evaluation and saved as 'params' (0 = off); eval_every: steps between simulator
    # evaluations (0 = only at the end); eval_episodes: episodes per task in each periodic evaluation;
    # init_from: '' or a checkpoint dir whose params start the run. Metrics every config.log.every_steps.
    # in_memory: read every episode once into memory and draw batches from seeded epoch permutations
    # (small demo sets); False streams batches from the reader (the real Bridge release).
    c.sft = ml_collections.ConfigDict(dict(
        steps=3000, batch_size=c.data.get_ref("batch_size") if "batch_size" in c.data else 32,
        lr=5e-4, min_lr_ratio=0.1, warmup=100,
        b1=0.9, b2=0.95, weight_decay=1e-4, clip=1.0, ema=0.999, eval_every=1000, eval_episodes=16,
        init_from="", in_memory=False,
    ))
    if args.smoke:
        c.sft.update(dict(steps=20, warmup=5, eval_every=0, eval_episodes=2, ema=0.9))

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
