"""Pieces shared by the config files: argument parsing and sections common to every config.

A config file's `get_config(arg)` takes a string like "smoke" or "smoke,res=64" (flags without a value
become True) and returns an ml_collections.ConfigDict.
"""
import ml_collections


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
    """Parses "a=1,b,c=x" into a ConfigDict, typed after `defaults` (unknown names are an error)."""
    out = ml_collections.ConfigDict(defaults)
    for item in filter(None, (arg or "").split(",")):
        name, _, value = item.partition("=")
        if name not in defaults:
            raise ValueError(f"config argument {name!r} is unknown; allowed: {', '.join(defaults)}")
        kind = type(defaults[name])
        if kind is bool:
            out[name] = value.lower() not in ("0", "false", "no") if value else True
        else:
            out[name] = kind(value)
    return out


def data_config(**overrides) -> ml_collections.ConfigDict:
    """config.data: how RLDS episodes become training batches (vlambpo_jax/data).

    builder_dir: TFDS builder directory (.../<name>/<version>, holding dataset_info.json) to read.
    name, data_dir, version: alternative to builder_dir: data_dir/name/version ('' version = newest).
    split: the split training batches come from.
    layout: 'rail_bridge' (RAIL bridge_dataset 1.0.0), 'oxe_bridge' (OXE bridge 0.1.0) or 'generic'
      (this project's own episodes, vlambpo_jax.data.rlds_writer).
    image_keys: observation keys of the views, in config.views order (head, wrist); '' = a view the
      dataset lacks (always masked).
    empty_view_rule: how a view that is empty in an episode is found and masked: 'pixels' (every frame
      all zero), 'metadata' (episode_metadata has_<key> False), 'either'.
    state_dim: proprio state dims (the action dims are config.action_dim).
    drop_first_zero_action: drop step 0 when its action is all zeros (Bridge episodes start so).
    binarize_gripper, gripper_dim: map a continuous gripper command (1 = open) to {0, 1}.
    norm_mode: 'percentile' (1st/99th percentiles -> [-1, 1], clipped), 'quantile' (the same unclipped, as
      pi0.5) or 'zscore'.
    norm_skip_action_dims, norm_skip_state_dims: dims left unnormalized (the gripper).
    stats_cache_dir: where normalization statistics are cached ('' = <workdir>/norm_stats).
    batch_size: global batch (split over hosts); shuffle_buffer: samples in the shuffle buffer;
    episode_buffer: episodes in the shuffle buffer of tfrecord data (array_record is permuted).
    max_text_len: policy-tokenizer tokens per instruction (= policy.max_text_len; the world model has
      its own wm.max_text_len).
    action_pad: padding of action chunks past the episode end, 'repeat_last' or 'zeros' (masked).
    skip_bad_episodes: skip and count bad episodes instead of stopping with an error.
    inspect_batches: batches the 'data' stage reads and summarizes.
    prefetch: batches prepared ahead in a background thread (0 = none).
    """
    c = ml_collections.ConfigDict(dict(
        builder_dir="", name="", data_dir="", version="", split="train",
        layout="generic", image_keys=("image_0", "image_1"), empty_view_rule="pixels", state_dim=7,
        drop_first_zero_action=False, binarize_gripper=False, gripper_dim=6,
        norm_mode="percentile", norm_skip_action_dims=(6,), norm_skip_state_dims=(),
        stats_cache_dir="", batch_size=32, shuffle_buffer=2000, episode_buffer=16, max_text_len=32,
        action_pad="repeat_last", skip_bad_episodes=False, inspect_batches=2, prefetch=2,
    ))
    c.update(overrides)
    return c


def checkpoint_config() -> ml_collections.ConfigDict:
    """config.checkpoint: how stages save.

    keep: number of newest checkpoints kept per stage.
    every_steps: save every this many training steps (and at the end of a stage).
    async_save: write checkpoints in a background thread.
    """
    return ml_collections.ConfigDict(dict(keep=3, every_steps=200, async_save=True))


def log_config() -> ml_collections.ConfigDict:
    """config.log: where metrics go.

    every_steps: log training metrics every this many steps.
    tensorboard: write TensorBoard event files under workdir/<stage>/tb.
    wandb: also log to Weights & Biases (needs `pip install wandb`; project/entity below).
    progress: tqdm progress bars ('auto' = bars on a TTY, plain lines otherwise; 'off').
    """
    return ml_collections.ConfigDict(dict(
        every_steps=10, tensorboard=True, wandb=False, wandb_project="vlambpo_jax", wandb_entity="",
        progress="auto"))


def mesh_config() -> ml_collections.ConfigDict:
    """config.mesh: how devices are arranged (vlambpo_jax/train/sharding.py).

    data: devices for pure data parallelism (-1 = all that fsdp leaves).
    fsdp: devices that also split parameters and optimizer state (FSDP); 1 = replicate parameters.
    fsdp_min_size: arrays with fewer elements stay replicated.
    rules: (regex, partition spec) pairs matched against '/'-joined parameter paths before the
      default rule, e.g. (("vlm/.*embedding", (None, "fsdp")),).
    """
    return ml_collections.ConfigDict(dict(data=-1, fsdp=1, fsdp_min_size=2 ** 16, rules=()))


def distributed_config() -> ml_collections.ConfigDict:
    """config.distributed: multi-host start-up through jax.distributed.

    enabled: 'auto' (when JAX_COORDINATOR_ADDRESS, or GKE's TPU_WORKER_HOSTNAMES, is set), 'yes', 'no'.
      A Cloud TPU VM pod slice sets neither: `launch/tpu_pod.py run` passes 'yes'.
    coordinator: 'host:port' of process 0 (default from JAX_COORDINATOR_ADDRESS).
    num_processes, process_id: 0 / -1 = from the environment (JAX_NUM_PROCESSES, JAX_PROCESS_ID)
      or detected by JAX on TPU.
    """
    return ml_collections.ConfigDict(dict(enabled="auto", coordinator="", num_processes=0,
                                          process_id=-1))


def policy_config(data: ml_collections.ConfigDict, smoke: bool, **overrides) -> ml_collections.ConfigDict:
    """config.policy: the pi0.5-style VLA (vlambpo_jax/models/policy.py); `data` is config.data.

    vit_patch / vit_width / vit_depth / vit_heads / vit_mlp: the ViT shared across views (patch in px);
      vit_stem: 'patch' (linear patch embedding) or 'conv' (3x3 stride-2 convolutions to the same grid).
    width, depth, num_heads, num_kv_heads (1 = multi-query), head_dim, mlp_dim, rope_theta: the prefix
      (VLM) transformer.
    expert_width, expert_depth (must equal depth: one joint attention per layer; heads and head_dim are
      shared with the prefix), expert_mlp_dim: the action expert.
    num_denoise_steps: Euler / Flow-SDE steps; noise_level: Flow-SDE noise; stochastic_step: the one
      stochastic step drawn 'per_call' (authors' code) or 'per_sample', or 'all' (DPPO's chain: every
      step stochastic, so the log-prob covers every parameter-dependent step and the action is the
      last Gaussian draw); noise_method: 'flow_sde' only
      (the learned-noise 'flow_noise' variant is not implemented); log_prob: the chain's log-probability
      PPO's ratio reads, 'sum' (the joint Gaussian density of the stochastic transition over its
      chunk_size x action_dim dims) or 'mean' (its mean over those dims, as DPPO: the ratio is the
      geometric mean of the per-dim ratios, far less sharp).
    use_state, state_dim: proprio state as one extra prefix token (off, as in the paper).
    perception_dim: 0 (off), or how many of the grounding targets (the first 4 to all 13 in the
      tabletop: object xy, goal xy, every object's xy, tool xyz) a perception head predicts from the
      prefix stream entering block sft.grounding_layer; its stop-gradient prediction joins the action
      expert's adaRMS condition (vlambpo_jax/models/policy.py; trained by the grounding loss, so it
      needs sft.grounding_weight > 0).
    value_hidden: value-head MLP sizes (ReLU) on the mean-pooled stop-gradient prefix outputs.
    max_text_len: tokens per instruction (a reference to data.max_text_len, which the reader uses);
      tokenizer: 'byte' (UTF-8 bytes), 'words:tabletop' (whole words of the tabletop instructions) or a
      local Hugging Face tokenizer directory; prompt_format: 'plain' (the instruction), 'pi0'
      (openpi's cleaned instruction and a newline) or 'pi05' (openpi's pi0.5 prompt with the state
      binned into it as text: data.norm_mode 'quantile', no state token); the openpi formats are
      built from logged data and by the server only (config_checks).
    action_pad_dim: actions padded to this many dims inside the model (only action_dim are real).
    dtype: compute dtype ('float32' | 'bfloat16'; bf16 is far slower on CPU); params stay float32.
    """
    c = ml_collections.ConfigDict(dict(
        vit_patch=8, vit_width=64, vit_depth=2, vit_heads=4, vit_mlp=128, vit_stem="patch",
        width=128, depth=2, num_heads=4, num_kv_heads=1, head_dim=32, mlp_dim=256, rope_theta=10_000.0,
        expert_width=64, expert_depth=2, expert_mlp_dim=128,
        num_denoise_steps=3, noise_level=0.5, stochastic_step="per_call", noise_method="flow_sde", log_prob="sum",
        use_state=False, state_dim=7, perception_dim=0, value_hidden=(128, 64),
        max_text_len=data.get_ref("max_text_len"), tokenizer="byte", prompt_format="plain", action_pad_dim=7,
        dtype="float32",
    ))
    c.update(overrides)
    if smoke:
        c.update(dict(vit_width=32, vit_depth=1, vit_mlp=64, width=64, depth=1, num_heads=2, head_dim=16,
                      mlp_dim=128, expert_width=32, expert_depth=1, expert_mlp_dim=64, value_hidden=(32,)))
    return c


def sft_config(data: ml_collections.ConfigDict, smoke: bool, **overrides) -> ml_collections.ConfigDict:
    """config.sft: behaviour cloning of the policy (the `sft` stage, vlambpo_jax/stages/sft.py; its train
    step: vlambpo_jax/models/policy_train.py); `data` is config.data.

    steps: optimizer steps; batch_size: global batch (a reference to data.batch_size, which the reader
      uses).
    lr / min_lr_ratio / warmup: AdamW peak lr, cosine decay to lr * min_lr_ratio after `warmup` linear
      warm-up steps; b1, b2, weight_decay: AdamW.
    grad_clip: global grad-norm clip (the same name as wm.grad_clip and rl.grad_clip; the old name
      sft.clip is refused with a hint).
    ema: EMA decay of the params used for evaluation and saved as 'params' (0 = off).
    eval_every: steps between simulator evaluations (0 = only at the end); eval_episodes: episodes per
      task in each evaluation (0 = none).
    init_from: '' or a checkpoint dir whose params start the run: one of this project's, or a pi0.5
      checkpoint (config.json + *.safetensors, transformers' or LeRobot's layout; the policy sizes
      must be pi0.5's, e.g. configs/bridge.py:pi05; vlambpo_jax/models/pi05_import.py).
    in_memory: True = read every episode once into memory and draw batches from seeded epoch
      permutations (small demo sets); False = stream them from the reader.
    noise_samples: flow-matching (time, noise) draws per observation, sharing one prefix pass.
    grounding_weight: weight of the grounding co-training loss (vlambpo_jax/models/grounding.py; 0 =
      off; needs a simulator); grounding_scenes: freshly reset scenes rendered for it once before
      training (vlambpo_jax/envs/scene_pool.py; each step draws batch_size of them); grounding_hidden:
      its MLP head's hidden sizes; grounding_layer: the prefix layer whose input stream the head reads
      (-1 = the final output; l = what the action expert's attention reads at layer l);
      grounding_frames: 'reset' (freshly reset scenes) or 'episodes' (frames along scripted-expert
      episodes with the demos' action noise, at a uniformly drawn step: the gripper near, over and
      holding the objects; slower to render, since the physics runs).
    augment_shift: random-shift augmentation of the demo images, in pixels (each view moved by up to
      +-augment_shift in x and y, edges repeated; vlambpo_jax/data/augment.py; 0 = off).
    perception_teacher: with a perceived state of 4 dims (policy.perception_dim=4), the action expert
      reads the true object and goal xy in training (teacher forcing; the demos must carry the
      privileged state: env.privileged_state=True, data.state_dim=11) and its head's estimate when it acts.
    dagger_rounds: DAgger rounds after `steps` (0 = off; stages/sft.py): each runs dagger_episodes
      policy-then-expert takeovers in new scenes, adds the expert parts that succeed to the data and
      trains dagger_steps more steps.
    """
    c = ml_collections.ConfigDict(dict(
        steps=3000, batch_size=data.get_ref("batch_size"), lr=5e-4, min_lr_ratio=0.1, warmup=100,
        b1=0.9, b2=0.95, weight_decay=1e-4, grad_clip=1.0, ema=0.999, eval_every=1000, eval_episodes=16,
        init_from="", in_memory=True, noise_samples=1,
        grounding_weight=0.0, grounding_scenes=4096, grounding_hidden=(128,), grounding_layer=-1,
        grounding_frames="reset", perception_teacher=False, augment_shift=0,
        dagger_rounds=0, dagger_episodes=200, dagger_steps=1000,
    ))
    c.update(overrides)
    if smoke:
        c.update(dict(steps=20, warmup=5, eval_every=0, eval_episodes=2, ema=0.9))
    return c


def reward_config(smoke: bool) -> ml_collections.ConfigDict:
    """config.reward: the separate success classifier (the `reward` stage, vlambpo_jax/stages/reward.py;
    the model vlambpo_jax/models/success_classifier.py), which MBPO reads instead of the world model's
    Yes/No with config.rl.reward_model='classifier'.

    members: ensemble size; aggregate: how the members vote, 'min' (a success only where all agree) or
      'mean'; widths: conv channels per stride-2 stage of each view's tower; features: per-view
      feature size; text_dim / hidden: the instruction embedding and the head's hidden width.
    steps / batch_size / lr: training (AdamW), per member, on batches half of success frames;
      augment_shift: random shifts of +-this many pixels per view (data/augment.py).
    predicted_views: also train on the fine-tuned world model's predictions of frame t + k from frame t
      under the episode's own chunk (Yes where the success lies within the chunk), so the classifier
      reads the views imagined branches end on; predicted_frames: how many (near-success frames first).
    value: also learn a value of the same shape (P(the episode succeeds from this frame), on the
      collected rollouts and, with predicted_views, on predictions of their frames), which MBPO
      bootstraps from with config.rl.bootstrap_model='classifier'.
    Its threshold is the one of best F1 on the held-out episodes (saved with the weights).
    """
    c = ml_collections.ConfigDict(dict(members=4, aggregate="min", widths=(16, 32, 64), features=64, text_dim=32,
                                       hidden=128, steps=1500, batch_size=128, lr=1e-3, augment_shift=2,
                                       predicted_views=False, predicted_frames=4096, value=False))
    if smoke:
        c.update(dict(members=2, widths=(8, 8), features=16, text_dim=8, hidden=16, steps=20, batch_size=16,
                      predicted_frames=64))
    return c


def rl_config(**overrides) -> ml_collections.ConfigDict:
    """config.rl: MBPO / online PPO (the `mbpo` stage, vlambpo_jax/stages/mbpo.py; the algorithms in
    vlambpo_jax/rl); configs add their own fields (collect, baselines).

    world: 'model' (VLA-MBPO: branches in the world model from branch roots), 'sim' (the online-PPO
      baseline: full episodes in the simulator, real env steps counted; fixed_starts: from the same
      num_branches / group_size scenes every iteration, a diagnostic) or 'sim_roots' (MBPO with a
      perfect world model: the same branches as 'model', stepped in the simulator restored to each
      root's state recorded by the collect stage).
    reward_from: '' (the world's own reward) or the truth in place of one half of the world model,
      a diagnostic (rl/rollout.HybridWorld; the simulator restored at the collected roots steps beside
      the world model): 'sim' with world='model' (predicted views, the simulator's success), 'model'
      with world='sim_roots' (real views, the world model's Yes/No read on them).
    num_branches: M branches per refill; branch_chunks: n chunks per branch (0 = full horizon;
      -1 = adaptive, rl/branch_length.py: the n <= adaptive_max_chunks (0 = the horizon; 4 for logged
      episodes, and never more than the longest held-out episode holds) minimizing the Thm 4.2 bound
      with the world model's error measured on adaptive_sequences held-out real sequences and the
      assumed policy shift adaptive_eps_pi).
    reward_model: what reads the reward on a branch's views: 'wm' (the world model's Yes/No, the paper) |
      'classifier' (the `reward` stage's separate success classifier, config.reward, at the threshold
      of best F1 it chose on held-out episodes; the simulator-restored world with reward_from='model'
      then needs no world model at all).
    reward_threshold: world-model P(Yes) above which a chunk counts as success (rl.reward_model='wm').
    iterations: buffer refills; epochs: PPO epochs per refill (each a scan over minibatches of
      minibatch_size transitions); critic_warmup_epochs: critic-only epochs after each refill;
      critic_warmup_iterations: refills at the start that train the critic alone (no actor update);
      target_kl: stop a refill's epochs once an epoch's mean approx KL (of the log-prob policy.log_prob
      defines) exceeds it (0 = always run every epoch);
      recompute_values: re-compute values and advantages with the current critic before each epoch.
    advantage: 'gae' (chunk-level GAE from the critic) | 'group' (GRPO-style: each start state is
      branched group_size times, a branch's return (plus the critic's value of its last state where a
      short branch stops before its episode ends) minus its group's mean is the advantage of all its
      chunks, groups whose branches all agree are dropped; rl/ppo.group_relative_advantages) | 'vine'
      (TRPO's vine estimator: the same group advantage on one explored chunk per group only, drawn
      uniformly from the branch's first vine_window chunks (0 = any chunk); every other chunk is the
      deterministic sampler from noise shared within the group, so a group follows one path up to
      its explored chunk and its returns differ by that chunk alone. vine_window=1 from roots along
      the policy's episodes (rl.world='sim_roots'); 0 from fresh episodes (rl.world='sim'));
      vine_horizon: chunks a vine branch runs from its explored chunk on, that one included, before it
      stops and the critic's value of its state closes its return (0 = to the branch's end; 2 gives
      fresh episodes' branches the roots runs' 2-chunk returns);
      advantage_bootstrap: 'group' / 'vine' returns add the critic's value of a short branch's last state
      (False: the branch's rewards alone, so nothing the critic reads off a predicted view can be
      exploited, a diagnostic: at 1 chunk it loses most of the signal; the critic's targets keep it);
      bootstrap_model: what values a short branch's last state: 'critic' (the policy's value head) |
        'classifier' (the `reward` stage's value classifier, config.reward.value: the SFT policy's
        value learned against what really followed, on real and predicted views, and never trained by
        the policy it scores: the guard against a critic exploited on predicted views);
      value_anchor: with the learned world model's views (rl.world='model', reward_from '' or 'sim'),
        pairs per iteration that tie the critic's value of a predicted view to what really followed
        it: the world model's prediction of a collected chunk boundary's next boundary under the logged
        chunk, valued toward the critic's value of the real next frame (extra critic-only rows of the
        PPO buffer; 0 = off);
      value_anchor_target: what the anchor values a predicted view toward: 'critic' (the critic's value
        of the real frame) | 'return' (the discounted return that really followed the real frame, the
        collecting policy's);
      group_size: branches per start state (num_branches must be a multiple; > 1 also logs the
      exploration metrics: mixed_groups and the within-group action spread).
    gamma, gae_lambda, gae_variant ('paper' Eq. 4 | 'code' the authors' per-chunk form),
      normalize_advantages (GAE only); clip / clip_negative: PPO ratio clip of the surrogate for positive /
      negative advantages (not a gradient clip); value_clip, huber_delta, value_coef: the clipped-value
      Huber critic loss.
    actor_lr / critic_lr, b1, b2, weight_decay: AdamW per group; grad_clip: global grad-norm clip;
      train_vlm: also train the VLM prefix (default: action expert + value head only, as the paper's code);
      vlm_lr: its AdamW learning rate (0 = actor_lr).
    eval_every / eval_episodes: periodic simulator evaluation (iterations; 0 = off).
    """
    c = ml_collections.ConfigDict(dict(
        world="model", reward_from="", reward_model="wm", fixed_starts=False, num_branches=256, branch_chunks=2,
        reward_threshold=0.5,
        adaptive_max_chunks=0, adaptive_sequences=64, adaptive_eps_pi=0.1,
        iterations=30, epochs=4, critic_warmup_epochs=1, critic_warmup_iterations=0, target_kl=0.0,
        recompute_values=True,
        minibatch_size=128,
        advantage="gae", advantage_bootstrap=True, bootstrap_model="critic", value_anchor=0,
        value_anchor_target="critic", group_size=1,
        vine_window=1, vine_horizon=0,
        gamma=0.99, gae_lambda=0.95, gae_variant="paper", normalize_advantages=True,
        clip=0.1, clip_negative=0.1, value_clip=0.5, huber_delta=10.0, value_coef=1.0,
        actor_lr=1e-5, critic_lr=1e-3, b1=0.9, b2=0.95, weight_decay=0.0, grad_clip=1.0,
        train_vlm=False, vlm_lr=0.0, eval_every=0, eval_episodes=16,
    ))
    c.update(overrides)
    return c
