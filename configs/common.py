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
    norm_mode: 'percentile' (1st/99th percentiles -> [-1, 1]) or 'zscore'.
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

    enabled: 'auto' (on multi-host TPU VMs or when JAX_COORDINATOR_ADDRESS is set), 'yes', 'no'.
    coordinator: 'host:port' of process 0 (default from JAX_COORDINATOR_ADDRESS).
    num_processes, process_id: 0 / -1 = from the environment (JAX_NUM_PROCESSES, JAX_PROCESS_ID)
      or detected by JAX on TPU.
    """
    return ml_collections.ConfigDict(dict(enabled="auto", coordinator="", num_processes=0,
                                          process_id=-1))
