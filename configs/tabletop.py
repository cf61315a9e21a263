"""The embedded default: VLA-MBPO on the MJX tabletop tasks, sized for a 2-core laptop CPU.

Usage: python -m vlambpo_jax.main --config=configs/tabletop.py[:ARG] --workdir=DIR
ARG (comma separated): `smoke` shrinks every size so the whole pipeline runs in a couple of minutes;
`tasks=NAME+NAME...` picks the task suite (default `pick`; `tasks=all` = pick+push+place+stack);
`truth` is the privileged-state diagnostic: the policy also reads the instructed object's and the
goal's true xy as a state token (env.privileged_state), so what it must otherwise read from 32 px
images is given; only stages that act in the simulator can run it (no world-model imagination);
`vine` carries the RL settings that did best (docs/results.md, sections 25-26): 2-chunk branches
from the collected roots, stepped in the simulator restored there (MBPO with a perfect world model),
vine advantages with the critic's bootstrap, 3 critic-only refills first, no world-model stages;
`vine,online` the same estimator as online PPO from fresh episodes (rl.world='sim', each group
explores one chunk anywhere along its episode, 15 iterations), with no collect stage; `vine,vlm`
also trains the VLM prefix with the action expert (rl.train_vlm, VLM lr 1e-5) for 74 iterations
(`dagger,vine,vlm` is docs/results.md section 44's run: 79.5% from a 64.5% SFT, 80 minutes of mbpo on 2
shared cores), `vine,online,vlm` the same for online PPO (2-chunk vine horizon, 60 iterations: 80.5%,
2 hours); `dagger` adds six DAgger rounds to SFT at chunks of 5 (sft.dagger_rounds; `dagger,vine` is
docs/results.md section 31's image-only run: 48 minutes of sft, collect, mbpo and evaluate on 2 shared
cores); `claims` is VLA-MBPO as issue 18's table runs it (docs/results.md sections 49 and 51): the
DAgger SFT, the adaLN world model (900 + 600 steps), the `reward` stage's classifier on real and predicted
views as the reward, 2-chunk vine branches for 37 iterations in the learned world model with the critic
anchored to real returns (rl.value_anchor, section 52; about 95 minutes of stages on 2 shared cores, report
aside). `python -m vlambpo_jax.tools.sweep --config=configs/tabletop.py:claims --workdir=DIR --lanes=2` runs
this base run and the table's other rows (`--variants=no_anchor` adds the paper's critic). The counts of demos,
collected rollouts and evaluation episodes are totals split over the tasks.
Why pick alone by default: at this CPU size behaviour cloning on the four tasks stays near chance,
while on pick alone it succeeds often enough to leave RL room to improve (docs/results.md, sections 9
and 15).
Step counts (SFT 3,000, VAE 400, world model 450 + 300, probe 250, 20 PPO iterations) are sized so the
whole default pipeline fits 30 minutes on a 2-core CPU (measured stage times: docs/results.md).

Top-level fields:
  seed: the one seed every stage derives its PRNG keys from.
  stages: the pipeline stages to run, in order (all of them: vlambpo_jax/stages/__init__.py).
  chunk_size: k, actions per chunk; also the world model's frame skip. Must be <= every task horizon.
  action_dim: 7 (Bridge convention: dx, dy, dz, droll, dpitch, dyaw, gripper with 1 = open).
  views: camera names in observation order; index 0 is the head view, 1 the wrist view.
  image_size: square resolution (pixels) of every view the models see.
Sections (each documented where it is built below): env, demos, data, policy, sft, wm, rl, eval,
mesh, distributed, checkpoint, log.
"""
import dataclasses

import ml_collections

from configs import common
from vlambpo_jax.models.flux_vae import FluxVAEConfig


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = common.parse_arg(arg, smoke=False, tasks="pick", truth=False, vine=False, online=False,
                            dagger=False, vlm=False, claims=False)
    if args.claims:   # issue 18's claims run refines the DAgger SFT and the 2-chunk vine PPO
        args.dagger = args.vine = True
    tasks = ("pick", "push", "place", "stack") if args.tasks == "all" else tuple(args.tasks.split("+"))
    per_task = lambda total: -(-total // len(tasks))  # noqa: E731  (a total split over the tasks)
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.stages = ("demos", "sft", "collect", "wm_pretrain", "wm_finetune", "mbpo", "evaluate", "report")
    c.chunk_size = 10
    c.action_dim = 7
    c.views = ("head", "wrist")
    c.image_size = 32

    # --- env: the MJX tabletop simulator (vlambpo_jax/envs) ---
    # tasks: registry names (vlambpo_jax/envs/tasks.py: pick, push, place, stack).
    # horizons: control steps per episode, per task name (chunk_size must be <= each).
    # instruction_split: paraphrase set reset() samples for training/demos ('seen' | 'unseen').
    # substeps: physics steps per control step (control period = substeps x physics.timestep).
    # max_delta_pos / max_delta_rot: action scale: metres / radians per control step (actions are
    #   clipped to +-these); max_tilt: roll/pitch limit (rad). shadows: renderer hard shadows.
    # physics: MJCF settings (see vlambpo_jax/envs/scene.py; the defaults are what grasped reliably).
    # privileged_state: the observation's state also holds the instructed object's and the goal's
    #   true xy (11 dims instead of 7; the `truth` diagnostic, envs/tabletop.py).
    c.env = ml_collections.ConfigDict()
    c.env.tasks = tasks
    c.env.horizons = ml_collections.ConfigDict(dict(pick=50, push=80, place=80, stack=80))
    c.env.instruction_split = "seen"
    c.env.substeps = 4
    c.env.max_delta_pos = 0.015
    c.env.max_delta_rot = 0.1
    c.env.max_tilt = 0.5
    c.env.shadows = True
    c.env.privileged_state = args.truth
    c.env.physics = ml_collections.ConfigDict(dict(
        timestep=0.005, solver="Newton", solver_iterations=4, ls_iterations=4, friction=1.5,
        solref_timeconst=0.01, grip_kp=1000.0, grip_force=40.0, finger_damping=20.0, weld_timeconst=0.01))

    # --- demos: scripted expert episodes written as RLDS (vlambpo_jax/stages/demos.py, envs/demos.py) ---
    # episodes_per_task: expert episodes run per task; noise: Gaussian action noise in units of the
    # action scale (0 = the clean expert); batch_size: episodes per vmapped batch; keep_failures:
    # also write failed episodes; dataset_name: RLDS dataset name under <workdir>/demos/rlds;
    # targets_per_scene: consecutive episodes sharing one initial scene, each instructed to handle a
    # different object (1 = every episode its own scene; 3 = every object once per scene);
    # expert_labels: record the expert's noiseless action at each visited state instead of the noisy
    # action that stepped the simulator (DART), so the labels show recoveries from the drift; the
    # world model then learns from actions that differ from the executed ones by the noise.
    c.demos = ml_collections.ConfigDict()
    c.demos.episodes_per_task = per_task(204)
    c.demos.noise = 0.1
    c.demos.batch_size = 64
    c.demos.keep_failures = False
    c.demos.targets_per_scene = 3
    c.demos.expert_labels = False
    c.demos.dataset_name = "tabletop_demos"

    # --- data: how RLDS episodes become training batches (fields: configs/common.py:data_config) ---
    # builder_dir '' (and no name) = the RLDS dataset the demos stage wrote under <workdir>/demos; the
    # word tokenizer needs <= 14 tokens for every tabletop instruction.
    c.data = common.data_config(max_text_len=16, state_dim=11 if args.truth else 7)
    if args.smoke:
        c.data.update(dict(batch_size=8, shuffle_buffer=256))

    # --- policy and sft (fields: configs/common.py:policy_config, sft_config) ---
    # The conv ViT stem and grounding co-training (vlambpo_jax/models/grounding.py) are on: both raised
    # SFT success (docs/results.md, sections 9-10). The grounding head reads the stream entering the
    # last prefix block, which the action expert's last layer attends to.
    c.policy = common.policy_config(c.data, args.smoke, tokenizer="words:tabletop", vit_stem="conv")
    if args.truth:
        c.policy.update(dict(use_state=True, state_dim=c.data.state_dim))
    c.sft = common.sft_config(c.data, args.smoke, steps=3000, grounding_weight=1.0,
                              grounding_layer=c.policy.depth - 1, eval_every=0, eval_episodes=0)
    if args.dagger:
        c.chunk_size = 5
        c.sft.update(dict(dagger_rounds=6, dagger_steps=5 if args.smoke else 1000,
                          dagger_episodes=8 if args.smoke else 400))
    if args.smoke:
        c.sft.grounding_scenes = 64

    # --- wm: the UMM world model (documented in wm_config below) ---
    c.wm = wm_config(args.smoke)
    c.reward = common.reward_config(args.smoke)   # the `reward` stage's success classifier

    # --- rl: collect, MBPO / online PPO (PPO fields: configs/common.py:rl_config) ---
    # collect_episodes_per_task / collect_mode / collect_batch: real rollouts of the SFT policy per
    #   task ('train' = Flow-SDE sampling, 'eval' = deterministic), envs stepped at once.
    # collect_noise_level / collect_stochastic_step: the Flow-SDE settings collect samples with, in place
    #   of config.policy's (which PPO explores with): `vine` and `claims` raise the policy's noise for PPO,
    #   and their results up to docs/results.md section 53 were measured on rollouts collected at these
    #   (section 54: at the policy's 'all' / 0.6 the collected success falls from 52% to 27%).
    # bc_*: the `wm_bc` baseline (stages/wm_bc.py, rl/wm_bc.py; filtered BC on imagined successes):
    #   bc_rounds rounds of bc_branches full-horizon world-model branches (from episode starts when
    #   bc_initial_roots, else from any root), then bc_steps flow-matching steps at lr bc_lr on batches
    #   of bc_batch_size (observation, chunk) pairs of the successful branches of every round so far.
    c.rl = common.rl_config(
        collect_episodes_per_task=per_task(200), collect_mode="train", collect_batch=100,
        collect_noise_level=0.5, collect_stochastic_step="per_call", iterations=20,
        bc_rounds=3, bc_branches=128, bc_steps=200, bc_lr=1e-4, bc_batch_size=32, bc_initial_roots=True)
    if args.truth:  # the world model predicts images, not the privileged state: online PPO only
        c.stages = ("demos", "sft", "mbpo", "evaluate")
        c.rl.world = "sim"
    if args.vine:
        c.stages = ("demos", "sft", "collect", "mbpo", "evaluate")
        c.rl.update(dict(world="sim_roots", branch_chunks=2, advantage="vine", group_size=8, num_branches=512,
                         actor_lr=1e-5, minibatch_size=512, epochs=4, target_kl=0.05, iterations=37,
                         critic_warmup_iterations=3, eval_every=12, eval_episodes=100))
        c.policy.update(dict(stochastic_step="all", noise_level=0.6, log_prob="sum"))
        if args.online:
            c.stages = ("demos", "sft", "mbpo", "evaluate")
            c.rl.update(dict(world="sim", vine_window=0, iterations=15, critic_warmup_iterations=0, eval_every=5))
        if args.vlm:  # docs/results.md sections 39, 42 and 44
            c.rl.update(dict(train_vlm=True, vlm_lr=1e-5, iterations=74))
            if args.online:
                c.rl.update(dict(vine_horizon=2, minibatch_size=2560, critic_warmup_iterations=3,
                                 iterations=60, eval_every=10))
    elif args.vlm:
        raise ValueError("the `vlm` config argument refines `vine`: use e.g. configs/tabletop.py:dagger,vine,vlm")
    if args.claims:
        # VLA-MBPO as issue 18's table runs it (docs/results.md sections 49 and 51): the adaLN world
        # model, the reward stage's classifier (trained on real and predicted views) as the reward, and
        # 2-chunk vine branches from the collected roots; tools/sweep.py runs the table's other rows.
        if args.online or args.vlm:
            raise ValueError("the `claims` config argument is VLA-MBPO in the learned world model: "
                             "not with `online` or `vlm`")
        c.stages = ("demos", "sft", "collect", "wm_pretrain", "wm_finetune", "reward", "mbpo", "evaluate",
                    "report")
        c.wm.action_adaln = True
        if not args.smoke:
            c.wm.update(dict(pretrain_steps=900, finetune_steps=600))
        c.reward.predicted_views = True
        # the critic anchored to the real returns that followed collected chunk boundaries (beyond the
        # paper; section 52: n = 2 keeps all of the perfect model's gain with it, 44% without)
        c.rl.update(dict(world="model", reward_model="classifier", eval_every=0, value_anchor=512,
                         value_anchor_target="return"))
    if args.smoke:
        c.rl.update(dict(collect_episodes_per_task=2, collect_batch=8, num_branches=8, iterations=2,
                         epochs=1, minibatch_size=8, eval_episodes=2, bc_rounds=2, bc_branches=8,
                         bc_steps=4, bc_batch_size=8, value_anchor=min(c.rl.value_anchor, 8),
                         critic_warmup_iterations=min(c.rl.critic_warmup_iterations, 1)))

    # --- eval: evaluation in the simulator (vlambpo_jax/envs/evaluation.py) ---
    # episodes_per_task: episodes per task in one evaluation (one vmapped batch of tasks x episodes);
    # instruction_split: 'seen' or 'unseen' paraphrases; num_videos: episodes written as GIFs (head |
    # wrist); video_size: their render resolution (px); policies: finished stages whose policies the
    # 'evaluate' stage compares; stochastic: also evaluate them under the RL sampler (Flow-SDE with
    # config.policy's stochastic_step and noise_level), on the same initial states.
    c.eval = ml_collections.ConfigDict()
    c.eval.episodes_per_task = per_task(200)
    c.eval.instruction_split = "seen"
    c.eval.num_videos = 8
    c.eval.video_size = 128
    c.eval.policies = ("sft", "mbpo")
    c.eval.stochastic = False
    if args.smoke:
        c.demos.update(dict(episodes_per_task=4, batch_size=16))
        c.eval.update(dict(episodes_per_task=4, num_videos=4, video_size=96))

    # --- report: <workdir>/report (vlambpo_jax/stages/report.py) ---
    # num_videos: imagined-vs-real GIFs; video_chunks: chunks each one plays. agreement_states /
    # agreement_samples / agreement_chunks: the imagined-reward check (vlambpo_jax/rl/wm_agreement.py):
    # states, Flow-SDE chunks per state, chunk positions per state (agreement_states 0 = off).
    c.report = ml_collections.ConfigDict(dict(num_videos=4, video_chunks=4, agreement_states=16,
                                              agreement_samples=4, agreement_chunks=4))
    if args.smoke:
        c.report.update(dict(agreement_states=2, agreement_samples=2, agreement_chunks=1))

    c.mesh = common.mesh_config()
    c.distributed = common.distributed_config()
    c.checkpoint = common.checkpoint_config()
    c.log = common.log_config()
    if args.smoke:
        c.checkpoint.every_steps = 20
        c.log.every_steps = 5
    return c


def wm_config(smoke: bool = False) -> ml_collections.ConfigDict:
    """config.wm: the UMM world model (vlambpo_jax/models/world_model.py; trained by the stages
    vlambpo_jax/stages/wm_pretrain.py and wm_finetune.py, loaded by vlambpo_jax/loading.py).

    Sizing (32x32 views): VAE 4x down -> 8x8x4 latents -> 2x2 patches = 16 generation tokens per view;
    ViT 8 px patches = 16 understanding tokens per view. One IVD transition sequence = instruction (L)
    + 2 x (16 ViT + 16 VAE) + actions (10 continuous / 70 bins) + 3 x 16 latent blocks = 154 / 214
    tokens at L = 32, plus 16 for the ViT copy of the next head (ivd_vit_copy). Width 96 x 3 layers is
    0.8M parameters in WMNet, 0.18M in the VAE. Measured step times, sampling throughput and the probes
    behind these defaults: docs/results.md, section 15.

    Layout settings (view_decoding, ivd_vit_copy, ivd_wrist_sees_head, action_encoding, predict_delta and
    the others in vlambpo_jax/loading.LAYOUT_KEYS) are saved with the checkpoint; loading it under a
    config that sets them differently stops with one line naming the setting.

    vae.kind: 'project' (the small VAE below, trained by the stages) | 'flux' (FLUX's autoencoder with
      the sizes of vae.flux, BAGEL's; frozen, from a checkpoint: models/bagel_import.load_world_model).
    vae.downsample: spatial factor (= 2 ** len(vae.widths)); vae.widths: conv channels per stride-2
      stage; vae.latent_channels: C; vae.kl_weight: KL weight of the VAE loss; vae.steps / batch_size /
      lr: the VAE phase (first phase of wm_pretrain, or of wm_finetune when pretraining is off).
    vit.*: the understanding ViT (patch px, width, blocks, heads, MLP size; output projected to umm.width
      by a linear layer, or BAGEL's two-layer GELU MLP with connector='mlp').
    umm.*: MoT backbone per expert: width, depth (layers), heads, kv_heads (GQA), head_dim, mlp (SwiGLU
      hidden), rope_theta, qk_norm (BAGEL's per-head q/k RMSNorm), vocab_size (0 = the byte-level
      vocabulary of models/action_tokens.py; at least the tokenizer's with wm.tokenizer), remat (recompute each
      layer in the backward pass: same numbers, less memory; the BAGEL size needs it, tools.plan).
    latent_patch: latent patch size (tokens are patch^2 * C wide).
    num_sample_steps: Euler rectified-flow steps per generated view (paper 50; small on CPU).
    sample_temperature: std of the sampler's starting noise, >= 0 (1 = the flow's own distribution, as
      the paper; 0 = one deterministic path from the mean, the default: at 1 the change the small model
      cannot resolve shows up as noise).
    zero_noise_fraction: in [0, 1]; that fraction of the flow's training examples (per view) posed as
      the temperature-0 sampler's first step sees them, t = 1 with no noise (input 0, target -x0): a
      regression of the next latent on the context, trained where the deterministic sampler reads it.
    timestep_shift: s in t' = s t / (1 + (s - 1) t), for training and sampling (paper 4.0 at 256 px;
      tiny 8x8 latents need less of the schedule spent near pure noise).
    cfg_text_scale / cfg_image_scale / cfg_interval: 3-branch classifier-free guidance, applied for
      t in (lo, hi] (paper 6 / 2 / (0.4, 1.0)); both scales 1.0 disable CFG (no extra branches). Off
      by default on CPU: it triples the sampling cost inside the interval.
    cfg_renorm_type / cfg_renorm_min: BAGEL's CFG renormalization (models/flow_sampling.cfg_velocity):
      the guided velocity is scaled by clamp(|v_full| / |v_guided|, cfg_renorm_min, 1) so its norm
      does not exceed the conditional one's: 'none' | 'global' (per sample) | 'channel' (per token) |
      'text_channel' (per token, on the text-guided velocity before image guidance; BAGEL's edit default).
    view_decoding: 'interleaved' (IVD, the paper's: the wrist is generated from the predicted next head,
      without the action) | 'independent' (each view from the whole context, including the action,
      neither seeing the other's prediction) | 'joint' (both generated together); see
      models/sequence_layout.py. Independent by default: at this size IVD's wrist does not learn to
      read the motion from the head, and the reward reads the wrist view (docs/results.md, sections 3-5).
    ivd_vit_copy: in IVD the wrist view also reads ViT tokens of the (predicted) next head image, not
      only its clean VAE tokens (BAGEL's copies of a generated image; +16 tokens; training and sampling
      use the same layout, so changing it needs retraining).
    ivd_wrist_sees_head: in IVD the wrist also attends to the current head view (ViT + VAE tokens), not
      the action (not the paper's layout, which hides the current head from the second call): the wrist
      can then read the motion as the difference of two head views. Needs retraining.
    action_encoding: 'bins' (k x 7 text tokens, 257 min-max bins per dim, as the paper) | 'continuous'
      (one linear token per action step; the CPU default, cheaper to train).
    action_adaln: the action also modulates the generation expert's norms in every layer (adaptive
      RMSNorm from an MLP of the whole chunk, zero-initialised; DIAMOND conditions every block on the
      action this way), beside the action tokens. Not with interleaved decoding. Needs retraining.
    bagel_embeddings: BAGEL's timestep embedding (of t itself, not 1000 t), latent position table
      (column half first) and the fixed table it adds to the ViT connector's output, so BAGEL's time
      embedder and tables keep their meaning (models/bagel_import.py).
      Needs retraining.
    dropout.text / vit / vae: conditioning dropout probabilities in [0, 1] (text also drops the actions).
      They only train the unconditional branches that CFG needs, so they are 0 while CFG is off (the
      config check refuses CFG without them; the paper's setting with CFG: 0.1 / 0.3 / 0.3).
    loss_image / loss_text: weights of the rectified-flow MSE and the Yes/No CE (paper 1.0 / 0.01; the
      tiny reward head trains from scratch, so the CE gets more weight here).
    reward_balance: weight Yes and No samples to equal total weight in each batch.
    reward_views: the views the Yes/No question reads: 'head' (the paper) | 'wrist' | 'both'. Wrist by
      default: at 32 px the head view hardly shows a finished grasp.
    reward_labels: which frames are Yes: 'paper' (the last 5 frames of a successful episode; No on
      failed episodes and on frames before the last 10) | 'outcome' (only a successful episode's last
      frame, where the simulator's episodes stop; every other frame No, so a frame one step short of
      success is a No).
    reward_batch_size: Yes/No examples per training step, half Yes, drawn from whole episodes
      (stages/wm_common.RewardExamples); 0 = the current head frames of the dynamics batch (few are Yes).
    reward_replay: wm_finetune also draws reward examples (and held-out ones) from the pretraining data
      (the target rollouts of a weak policy may hold no success at all).
    dynamics_replay: every episode of the pretraining data (and play_data) also joins wm_finetune's
      training split for the dynamics, beside the collected rollouts: more transitions at no extra real
      budget; the held-out split stays the rollouts'.
    reward_on_predictions: weight (relative to loss_text) of a second Yes/No loss on the next views as
      the flow estimates them in the same training step (x_t - t v, decoded like a sample, labelled
      as frame t + k): the reward then also learns to read predicted, blurrier views (0 = off).
    eval_reward_frames: held-out reward frames (at most half of them per class) for the reward metrics.
    predict_delta: the flow generates the change of each view's VAE latent, (next - current) /
      delta_scale[view] (head, wrist: about the std of the change on the demos, so the target has
      ~unit scale), and the sampler adds the current latent back: "nothing moves" is the zero target.
    delta_pixels: with predict_delta, decode as current frame + D(next latent) - D(current latent), so
      unchanged regions keep the real pixels instead of their VAE reconstruction. Decoding only: a
      trained model loads under either value.
    motion_weight: (head, wrist), each >= 0; the flow loss of each latent token of that view weighted by
      1 + the weight x its squared latent change over the batch's mean (0 = the plain mean; larger puts
      the loss where the view moves).
    pretrain_enabled: run wm_pretrain on broad data (False = the "w/o pretraining" ablation).
    pretrain_data / finetune_data: TFDS builder dirs of each stage's RLDS data; '' = config.data's
      dataset (fine-tuning first looks for the collect stage's RLDS output under <workdir>/collect).
    play_data: more builder dirs whose episodes all join pretraining's training split (not its
      held-out one): cheap simulator play, e.g. noisy experts written by the demos stage in another
      workdir (`--stages=demos --config.demos.noise=1.0 --config.demos.keep_failures=True`), so the
      action varies more than the demos' given the same frame. On the command line a Python tuple:
      `--config.wm.play_data="('DIR',)"`.
    pretrain_steps / finetune_steps / batch_size: dynamics + reward training.
    lr / weight_decay / b1 / b2 / grad_clip / warmup_steps: AdamW with linear warm-up, cosine decay;
      grad_clip is the global grad-norm clip (the same name as sft.grad_clip and rl.grad_clip).
    ema: EMA decay of the sampled weights (0 = off).
    tokenizer: the world model's tokenizer, independent of the policy's: '' is the byte-level vocabulary
      of models/action_tokens.py (action bins, Yes / No added); a local Hugging Face tokenizer
      directory (BAGEL's Qwen2; needs umm.vocab_size and continuous actions) tokenizes the instruction,
      the reward question and its answers " Yes" / " No" (one token each).
    max_text_len: tokens of the instruction the world model reads.
    init_from: '' or a local BAGEL-7B-MoT release directory the world model starts from (whichever stage
      initialises it: wm_pretrain, or wm_finetune without pretraining); its FLUX VAE stays frozen and
      replaces the VAE phase (models/bagel_import.load_world_model; README "Starting from BAGEL").
    eval_batches: held-out batches for PSNR / SSIM / reward accuracy after each stage.
    probe.*: the multi-view consistency probe (models/state_probe.py): a tiny conv net per view trained
      for probe.steps (batch probe.batch_size, Adam lr probe.lr) on the real frames of
      probe.train_batches training batches to read the end-effector state; enabled False skips it.
      The two views' readings of the same real frame (real_consistency_pos) are the floor of the
      consistency metric.
    dtype: compute dtype ('float32' on CPU).
    """
    w = ml_collections.ConfigDict(dict(
        vae=dict(kind="project", downsample=4, widths=(16, 32), latent_channels=4, kl_weight=1e-4, steps=400,
                 batch_size=16, lr=2e-3, flux=dataclasses.asdict(FluxVAEConfig())),
        vit=dict(patch=8, width=64, depth=1, heads=4, mlp=128, connector="linear"),
        umm=dict(width=96, depth=3, heads=4, kv_heads=2, head_dim=24, mlp=256, rope_theta=10_000.0,
                 qk_norm=True, vocab_size=0, remat=False),
        latent_patch=2, num_sample_steps=8, timestep_shift=2.0,
        cfg_text_scale=1.0, cfg_image_scale=1.0, cfg_interval=(0.4, 1.0),
        cfg_renorm_type="none", cfg_renorm_min=0.0,
        view_decoding="independent", ivd_vit_copy=True, ivd_wrist_sees_head=False,
        action_encoding="continuous", action_adaln=False, bagel_embeddings=False,
        dropout=dict(text=0.0, vit=0.0, vae=0.0),
        loss_image=1.0, loss_text=0.1, reward_balance=True, reward_batch_size=32, reward_replay=True,
        dynamics_replay=False,
        reward_views="wrist", reward_on_predictions=0.0, reward_labels="paper",
        eval_reward_frames=512, predict_delta=True, delta_scale=(0.4, 1.0), delta_pixels=True,
        motion_weight=(0.0, 0.0), sample_temperature=0.0, zero_noise_fraction=0.0,
        pretrain_enabled=True, pretrain_data="", finetune_data="", play_data=(), pretrain_steps=450, finetune_steps=300,
        batch_size=32,
        lr=3e-3, weight_decay=1e-4, b1=0.9, b2=0.95, grad_clip=1.0, warmup_steps=50, ema=0.999,
        eval_batches=4, dtype="float32", tokenizer="", max_text_len=64, init_from="",
        probe=dict(enabled=True, steps=250, batch_size=64, lr=2e-3, train_batches=32),
    ))
    if smoke:
        w.vae.update(dict(widths=(16, 16), steps=20, batch_size=16))
        w.vit.update(dict(width=32, mlp=64, heads=2))
        w.umm.update(dict(width=32, depth=1, heads=2, kv_heads=1, head_dim=16, mlp=64))
        w.update(dict(num_sample_steps=2, pretrain_steps=10, finetune_steps=10, batch_size=8,
                      warmup_steps=2, eval_batches=1, action_encoding="continuous"))
        w.probe.update(dict(steps=20, train_batches=2))
    return w
