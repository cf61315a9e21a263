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
