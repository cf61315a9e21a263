"""VLA-MBPO on BridgeData V2 (RLDS): the real-robot data path, without a simulator.

Usage: python -m vlambpo_jax.main --config=configs/bridge.py[:ARG] --workdir=DIR
ARG (comma separated): `smoke` reads the tiny Bridge-format fixture shipped in tests/fixtures and
shrinks every size; `pi05` gives the policy the released pi0.5 checkpoints' sizes (3.3B parameters,
224 px views, chunks of 50), to start from one with --config.sft.init_from=DIR and PaliGemma's tokenizer
(--config.policy.tokenizer=DIR); a GPU/TPU configuration (README, "Starting from pi0.5"); `bagel` gives
the world model BAGEL-7B-MoT's sizes and the paper's sampling (14B parameters, the FLUX VAE, 224 px
views): for the memory plan (`python -m vlambpo_jax.tools.plan --config=configs/bridge.py:bagel`) and
models/bagel_import.load_world_model. It runs the data stage only by default; with --config.wm.init_from
(a release directory) the world-model stages load the release (README, "Starting from BAGEL").
Point at the real release with --config.data.builder_dir=/path/bridge_dataset/1.0.0.

The whole loop runs from logged episodes, as for a real robot whose rollouts were recorded:
  data          inspect a few batches of the RLDS episodes
  sft           behaviour cloning on split config.data.split
  logged_roots  chunk-aligned branch roots from those episodes (successes and failures) and every step
                of the held-out split config.logged.heldout_split (vlambpo_jax/stages/logged_roots.py)
  wm_pretrain / wm_finetune   the world model on the logged episodes (both on config.data unless
                config.wm.pretrain_data / finetune_data name other RLDS datasets, e.g. broad Bridge
                data for pretraining and the robot's own rollouts for fine-tuning)
  mbpo          PPO on branches imagined by the world model from the logged roots
  evaluate      offline: held-out action error vs the logged actions, imagined success rate under the
                world model's Yes/No reward, world-model metrics -> evaluate/results.json
  report        report/report.md with those tables, curves and imagined-vs-logged GIFs

Views: the head slot reads image_0 (the over-the-shoulder camera) and the wrist slot reads image_1, a
second fixed camera: BridgeData V2's wrist camera, image_3, is blank in most episodes (in all 50 of the
shared slice). With --config.data.image_keys="('image_0','image_3')" an episode without a wrist camera
gets a black view with image_mask False: the policy's attention skips it; the world model learns it black.

Top-level fields: seed, stages, chunk_size, action_dim, views, image_size as in configs/tabletop.py.
Sections: data, policy, sft, wm, logged, rl, eval, report, mesh, distributed, checkpoint, log.
"""
import os

import ml_collections

from configs import common
from configs.tabletop import wm_config
from vlambpo_jax.models import bagel_import, pi05_import

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = common.parse_arg(arg, smoke=False, pi05=False, bagel=False)
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.stages = ("data", "sft", "logged_roots", "wm_pretrain", "wm_finetune", "mbpo", "evaluate", "report")
    c.chunk_size = 10
    c.action_dim = 7
    c.views = ("head", "wrist")
    c.image_size = 64

    # --- data: how RLDS episodes become training batches (fields: configs/common.py:data_config) ---
    c.data = common.data_config(
        name="bridge_dataset", version="1.0.0", layout="rail_bridge", drop_first_zero_action=True,
        binarize_gripper=True, episode_buffer=32, max_text_len=64,
        image_keys=("image_0", "image_1"))  # (head, wrist) slots; see the module docstring
    if args.smoke:  # the tiny Bridge-format fixture shipped with the tests
        c.data.update(dict(builder_dir=os.path.join(_ROOT, "tests", "fixtures", "bridge_dataset", "1.0.0"),
                           batch_size=8, shuffle_buffer=64, episode_buffer=4, max_text_len=32))

    # --- policy and sft (fields: configs/common.py:policy_config, sft_config) ---
    # 64 px views with 16 px patches keep 16 tokens a view (smoke: 32 px views, 8 px patches).
    c.policy = common.policy_config(c.data, args.smoke, vit_patch=8 if args.smoke else 16)
    c.sft = common.sft_config(c.data, args.smoke, in_memory=False)

    # --- wm: the UMM world model (fields documented in configs/tabletop.py:wm_config) ---
    c.wm = wm_config(args.smoke)
    c.reward = common.reward_config(args.smoke)   # the `reward` stage's success classifier
    if not args.smoke:  # 64 px views: an 8x-down VAE and 16 px ViT patches keep 16 tokens per view
        c.wm.vae.update(dict(downsample=8, widths=(32, 64, 64)))
        c.wm.vit.patch = 16

    # --- logged: the logged_roots stage (vlambpo_jax/stages/logged_roots.py, rl/offline.py) ---
    # max_episodes: episodes of config.data.split whose chunk-aligned frames become MBPO branch roots
    #   (0 = all; the roots are held in memory, ~25 KB each at 64 px).
    # heldout_split: the split of held-out episodes for the offline evaluation (never trained on);
    #   heldout_max_episodes: how many of them (0 = all).
    c.logged = ml_collections.ConfigDict(dict(max_episodes=2000, heldout_split="val", heldout_max_episodes=200))

    # --- rl: MBPO in the world model (fields: configs/common.py:rl_config; no simulator here, so
    # world must be 'model' and eval_every 0). branch_chunks 0 = the longest logged episode. ---
    c.rl = common.rl_config(eval_episodes=0)

    # --- eval: the offline evaluation the evaluate stage runs without a simulator (rl/offline.py) ---
    # policies: finished stages whose policies are compared; batch_size: samples per jitted call;
    # action_stride: held-out steps t with t % stride == 0 get an action-error sample (1 = every step);
    # imagined_branches: branches from held-out roots rolled in the world model per policy (0 = skip);
    # imagined_chunks: chunks per branch (0 = rl.branch_chunks, else the longest held-out episode);
    # wm_batches: held-out batches of batch_size transitions for the world model's PSNR / SSIM /
    # reward accuracy on the held-out split (0 = skip).
    c.eval = ml_collections.ConfigDict(dict(policies=("sft", "mbpo"), batch_size=64, action_stride=1,
                                            imagined_branches=256, imagined_chunks=0, wm_batches=4))

    # --- report: <workdir>/report; num_videos imagined-vs-logged GIFs of video_chunks chunks ---
    c.report = ml_collections.ConfigDict(dict(num_videos=4, video_chunks=4))
    if args.smoke:
        c.logged.update(dict(max_episodes=0, heldout_max_episodes=0))
        c.rl.update(dict(num_branches=8, iterations=2, epochs=1, minibatch_size=8, branch_chunks=1))
        c.eval.update(dict(batch_size=8, imagined_branches=8, wm_batches=1))
        c.report.update(dict(num_videos=2, video_chunks=2))

    c.mesh = common.mesh_config()
    c.distributed = common.distributed_config()
    c.checkpoint = common.checkpoint_config()
    c.log = common.log_config()
    if args.smoke:
        c.image_size = 32
        c.checkpoint.every_steps = 20
        c.log.every_steps = 5
    if args.pi05:   # the released pi0.5 checkpoints' sizes, 224 px views (a GPU/TPU run; README "Starting from pi0.5")
        sizes = pi05_import.full_size()
        c.policy.update(sizes["policy"])
        c.policy.update(dict(num_denoise_steps=10, tokenizer="", dtype="bfloat16"))  # tokenizer: PaliGemma's dir
        c.chunk_size, c.image_size = sizes["chunk_size"], sizes["image_size"]
        c.data.max_text_len = 200
        # openpi's pi0.5 input: the state binned into the prompt, every dim quantile-normalized
        c.policy.prompt_format = "pi05"
        c.data.update(dict(norm_mode="quantile", norm_skip_action_dims=(), norm_skip_state_dims=()))
        c.stages = ("data", "sft")
    if args.bagel:  # BAGEL-7B-MoT's world model: 224 px views are 14 x 14 ViT patches, 28 x 28 FLUX latents
        c.wm.update(bagel_import.full_size())
        c.image_size = 224
        c.stages = ("data",)
    return c
