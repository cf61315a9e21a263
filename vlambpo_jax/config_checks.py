"""Config validation that runs before any compute: every rule on a config lives here.

Each rule names the key it checks and what is allowed; `validate` raises ConfigError on the first
violation so the CLI can stop with one line. Rules skip keys a config does not have (bridge has no
simulator section, for example), so every config file shares one rule list.
"""
from __future__ import annotations

import ast
import importlib.util
from typing import Any, Callable

import ml_collections

from vlambpo_jax import stages as stage_registry
from vlambpo_jax.data import normalization
from vlambpo_jax.data.rlds_reader import ACTION_PADS
from vlambpo_jax.data.standardize import EMPTY_VIEW_RULES, LAYOUTS
from vlambpo_jax.data.tokenizer import PROMPT_FORMATS
from vlambpo_jax.envs import has_simulator
from vlambpo_jax.models.flow_sampling import CFG_RENORM_TYPES
from vlambpo_jax.models.world_model import REWARD_LABELS, REWARD_VIEWS

_MISSING = object()


class ConfigError(ValueError):
    """A config value that cannot work. str() is one line: `config.<key>=<value>: <what is allowed>`."""

    def __init__(self, key: str, value: Any, allowed: str):
        super().__init__(f"config.{key}={value!r}: {allowed}")
        self.key = key


def load_config(spec: str) -> ml_collections.ConfigDict:
    """'path/to/config.py[:arg]' -> the ConfigDict its get_config(arg) returns."""
    path, _, arg = spec.partition(":")
    module_spec = importlib.util.spec_from_file_location("_vlambpo_config", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg or None)


def apply_overrides(config: ml_collections.ConfigDict, assignments) -> ml_collections.ConfigDict:
    """Applies 'path.to.field=VALUE' strings in order (values parsed as Python literals where they
    parse, else kept as strings); an unknown field raises KeyError. For scripts outside main.py."""
    for item in assignments:
        path, _, raw = item.partition("=")
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw
        *parents, leaf = path.split(".")
        node = config
        for p in parents:
            node = node[p]
        if leaf not in node:
            raise KeyError(f"override {item!r}: the config has no field {path!r}")
        node[leaf] = value
    return config


def get(config: ml_collections.ConfigDict, key: str) -> Any:
    node = config
    for part in key.split("."):
        if not isinstance(node, (ml_collections.ConfigDict, dict)) or part not in node:
            return _MISSING
        node = node[part]
    return node


def _nonnegative_number(v) -> str | None:
    return None if isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 else "must be a number >= 0"


def _int_range(lo: int, hi: int | None = None) -> Callable[[Any], str | None]:
    def check(v):
        if not isinstance(v, int) or isinstance(v, bool) or v < lo or (hi is not None and v > hi):
            return f"must be an integer >= {lo}" + (f" and <= {hi}" if hi is not None else "")
        return None
    return check


def _positive_float(v):
    return None if isinstance(v, (int, float)) and v > 0 else "must be a number > 0"


def _unit_interval(v):
    return None if isinstance(v, (int, float)) and 0 <= v <= 1 else "must be a number in [0, 1]"


def _one_of(*choices) -> Callable[[Any], str | None]:
    return lambda v: None if v in choices else "must be one of " + ", ".join(map(repr, choices))


def _stages(v):
    order = list(stage_registry.STAGES)
    unknown = [s for s in v if s not in order]
    if unknown:
        return f"unknown stage {unknown[0]!r}; known stages: {', '.join(order)}"
    if len(set(v)) != len(v):
        return "lists a stage twice"
    if [order.index(s) for s in v] != sorted(order.index(s) for s in v):
        return "stages must follow the pipeline order " + " -> ".join(order)
    return None


def _image_size(v):
    return None if isinstance(v, int) and 8 <= v <= 1024 and v % 8 == 0 else \
        "must be a multiple of 8 between 8 and 1024"


def _bool(v):
    return None if isinstance(v, bool) else "must be True or False"


def _dims(v):
    try:
        ok = all(isinstance(d, int) for d in v)
    except TypeError:
        ok = False
    return None if ok else "must be a tuple of ints (dims left unnormalized)"


def _even(v):
    return None if isinstance(v, int) and v > 0 and v % 2 == 0 else "must be an even integer > 0 (RoPE)"


# Old option names -> the new ones; a config still setting an old name is refused with the new one.
RENAMED = {"sft.clip": "sft.grad_clip"}

# (key, check) pairs; a check returns None when fine, else what is allowed.
RULES: list[tuple[str, Callable[[Any], str | None]]] = [
    ("seed", _int_range(0)),
    ("stages", _stages),
    ("chunk_size", _int_range(1, 64)),
    ("action_dim", _int_range(7, 32)),
    ("views", lambda v: None if 1 <= len(v) <= 4 else "must name 1 to 4 camera views"),
    ("image_size", _image_size),
    ("mesh.data", lambda v: None if v == -1 or (isinstance(v, int) and v >= 1) else "must be -1 or >= 1"),
    ("mesh.fsdp", lambda v: None if v == -1 or (isinstance(v, int) and v >= 1) else "must be -1 or >= 1"),
    ("distributed.enabled", _one_of("auto", "yes", "no")),
    ("checkpoint.keep", _int_range(1)),
    ("checkpoint.every_steps", _int_range(1)),
    ("log.every_steps", _int_range(1)),
    ("log.progress", _one_of("auto", "bar", "lines", "off")),
    ("data.norm_mode", _one_of(*normalization.MODES)),
    ("data.batch_size", _int_range(1)),
    ("data.stats_cache_dir", lambda v: None if "://" not in str(v) else
     "must be a local directory (the statistics are written through local file APIs; mount a bucket)"),
    ("data.max_text_len", _int_range(3, 4096)),
    ("policy.num_denoise_steps", _int_range(1, 100)),
    ("policy.noise_level", _positive_float),
    ("policy.stochastic_step", _one_of("per_call", "per_sample", "all")),
    ("policy.log_prob", _one_of("sum", "mean")),
    ("sft.steps", _int_range(0)),
    ("sft.lr", _positive_float),
    ("sft.noise_samples", _int_range(1)),
    ("sft.grounding_weight", _nonnegative_number),
    ("sft.grounding_scenes", _int_range(1)),
    ("sft.grounding_layer", _int_range(-1)),
    ("sft.grounding_frames", _one_of("reset", "episodes")),
    ("sft.augment_shift", _int_range(0)),
    ("sft.dagger_rounds", _int_range(0)),
    ("sft.dagger_episodes", _int_range(1)),
    ("sft.dagger_steps", _int_range(0)),
    ("policy.tokenizer", lambda v: None if v else
     "name a tokenizer: 'byte', 'words:tabletop' or a local Hugging Face tokenizer directory (pi0.5: "
     "PaliGemma's, e.g. --config.policy.tokenizer=/path/to/paligemma_tokenizer)"),
    ("policy.vit_stem", _one_of("patch", "conv")),
    ("policy.prompt_format", _one_of(*PROMPT_FORMATS)),
    ("wm.vae.kind", _one_of("project", "flux")),
    ("wm.vit.connector", _one_of("linear", "mlp")),
    ("wm.umm.remat", _bool),
    ("policy.perception_dim", _int_range(0)),
    ("policy.vit_patch", _int_range(1)),
    ("policy.num_kv_heads", _int_range(1)),
    ("policy.dtype", _one_of("float32", "bfloat16")),
    ("policy.head_dim", _even),
    ("policy.noise_method", lambda v: None if v == "flow_sde" else
     "only 'flow_sde' is implemented (the learned-noise 'flow_noise' variant is not)"),
    ("sft.grad_clip", _positive_float),
    ("wm.grad_clip", _positive_float),
    ("rl.grad_clip", _positive_float),
    ("demos.targets_per_scene", _int_range(1)),
    ("wm.latent_patch", _int_range(1)),
    ("wm.view_decoding", _one_of("interleaved", "independent", "joint")),
    ("wm.action_encoding", _one_of("bins", "continuous")),
    ("wm.cfg_renorm_type", _one_of(*CFG_RENORM_TYPES)),
    ("wm.reward_views", _one_of(*REWARD_VIEWS)),
    ("wm.reward_labels", _one_of(*REWARD_LABELS)),
    ("wm.delta_scale", lambda v: None if len(v) == 2 and all(isinstance(x, (int, float)) and x > 0 for x in v)
     else "must be two positive factors (head, wrist)"),
    ("eval.instruction_split", _one_of("seen", "unseen")),
    ("rl.gamma", _unit_interval),
    ("rl.gae_lambda", _unit_interval),
    ("rl.branch_chunks", _int_range(-1)),
    ("rl.adaptive_max_chunks", _int_range(0)),
    ("rl.adaptive_sequences", _int_range(1)),
    ("rl.adaptive_eps_pi", _unit_interval),
    ("rl.world", _one_of("model", "sim", "sim_roots")),
    ("rl.reward_from", _one_of("", "sim", "model")),
    ("rl.reward_model", _one_of("wm", "classifier")),
    ("rl.bootstrap_model", _one_of("critic", "classifier")),
    ("rl.value_anchor", _int_range(0)),
    ("rl.value_anchor_target", _one_of("critic", "return")),
    ("reward.value", _bool),
    ("reward.members", _int_range(1)),
    ("reward.aggregate", _one_of("min", "mean")),
    ("rl.gae_variant", _one_of("paper", "code")),
    ("rl.advantage", _one_of("gae", "group", "vine")),
    ("rl.group_size", _int_range(1)),
    ("rl.vine_window", _int_range(0)),
    ("rl.vine_horizon", _int_range(0)),
    ("rl.fixed_starts", _bool),
    ("wm.action_adaln", _bool),
    ("wm.zero_noise_fraction", _unit_interval),
    ("wm.motion_weight", lambda v: None if isinstance(v, (tuple, list)) and len(v) == 2
     and not any(_nonnegative_number(x) for x in v) else "must be (head, wrist): two numbers >= 0"),
    ("demos.expert_labels", _bool),
    ("rl.critic_warmup_iterations", _int_range(0)),
    ("rl.target_kl", _nonnegative_number),
    ("rl.collect_mode", _one_of("train", "eval")),
    ("rl.collect_noise_level", _positive_float),
    ("rl.collect_stochastic_step", _one_of("per_call", "per_sample", "all")),
    ("rl.num_branches", _int_range(1)),
    ("rl.minibatch_size", _int_range(1)),
    ("rl.iterations", _int_range(0)),
    ("rl.actor_lr", _nonnegative_number),
    ("rl.critic_lr", _positive_float),
    ("rl.vlm_lr", _nonnegative_number),
    ("rl.reward_threshold", _unit_interval),
    ("rl.bc_rounds", _int_range(0)),
    ("rl.bc_branches", _int_range(1)),
    ("rl.bc_steps", _int_range(0)),
    ("rl.bc_lr", _positive_float),
    ("rl.bc_batch_size", _int_range(1)),
    ("rl.bc_initial_roots", _bool),
    ("logged.max_episodes", _int_range(0)),
    ("logged.heldout_max_episodes", _int_range(0)),
    ("logged.heldout_split", lambda v: None if isinstance(v, str) and v else "must name a dataset split"),
    ("eval.batch_size", _int_range(1)),
    ("eval.action_stride", _int_range(1)),
    ("eval.imagined_branches", _int_range(0)),
    ("eval.imagined_chunks", _int_range(0)),
    ("eval.wm_batches", _int_range(0)),
    ("data.layout", _one_of(*LAYOUTS)),
    ("data.empty_view_rule", _one_of(*EMPTY_VIEW_RULES)),
    ("data.action_pad", _one_of(*ACTION_PADS)),
    ("data.shuffle_buffer", _int_range(0)),
    ("data.episode_buffer", _int_range(1)),
    ("data.state_dim", _int_range(1)),
    ("data.inspect_batches", _int_range(0)),
    ("data.prefetch", _int_range(0)),
    ("data.skip_bad_episodes", _bool),
    ("data.drop_first_zero_action", _bool),
    ("data.binarize_gripper", _bool),
    ("data.norm_skip_action_dims", _dims),
    ("data.norm_skip_state_dims", _dims),
]

# Sizes (a width, a batch, a count of layers or of episodes) and counts where 0 means "none".
SIZES = ("policy.width", "policy.mlp_dim", "policy.num_heads", "policy.expert_width", "policy.expert_mlp_dim",
         "policy.vit_width", "policy.vit_depth", "policy.vit_heads", "policy.vit_mlp", "policy.state_dim",
         "wm.umm.width", "wm.umm.depth", "wm.umm.heads", "wm.umm.kv_heads", "wm.umm.mlp",
         "wm.vit.width", "wm.vit.depth", "wm.vit.heads", "wm.vit.mlp", "wm.vit.patch",
         "wm.vae.latent_channels", "wm.vae.batch_size", "wm.batch_size", "wm.reward_batch_size",
         "wm.max_text_len", "wm.num_sample_steps", "wm.probe.batch_size", "demos.batch_size",
         "demos.episodes_per_task", "env.substeps", "env.physics.solver_iterations", "env.physics.ls_iterations",
         "eval.episodes_per_task", "eval.video_size", "rl.collect_batch", "rl.epochs",
         "rl.collect_episodes_per_task")
COUNTS = ("eval.num_videos", "report.num_videos", "report.video_chunks", "report.agreement_chunks",
          "report.agreement_samples", "report.agreement_states", "rl.critic_warmup_epochs", "rl.eval_episodes",
          "rl.bc_rounds", "rl.bc_steps", "rl.iterations", "sft.eval_episodes", "sft.warmup", "sft.steps",
          "wm.warmup_steps", "wm.eval_batches", "wm.eval_reward_frames", "wm.finetune_steps",
          "wm.pretrain_steps", "wm.probe.steps", "wm.probe.train_batches", "wm.vae.steps",
          "data.inspect_batches", "data.prefetch", "data.shuffle_buffer", "mesh.fsdp_min_size")
RULES += [(key, _int_range(1)) for key in SIZES] + [(key, _int_range(0)) for key in COUNTS]
RULES.append(("wm.umm.head_dim", _even))

# Stages that need the simulator (config.env); configs without one (the real-robot path) use
# logged_roots instead of collect.
_SIM_STAGES = ("demos", "collect")


def _horizons(config) -> dict[str, int]:
    """Per-task episode horizons (env steps) the env section declares, if any."""
    horizons = get(config, "env.horizons")
    if horizons is _MISSING:
        return {}
    return dict(horizons.items()) if hasattr(horizons, "items") else {}


# Stages that do not tokenize the policy's prompt, or build it from logged data (the data reader)
PI05_PROMPT_STAGES = ("data", "sft", "wm_pretrain", "wm_finetune")


def _pi05_prompt_problems(config, p, stages) -> list[tuple[str, Any, str]]:
    """openpi's prompts are built by the data reader and the server; the simulator's policy functions
    and imagined branches (whose world model predicts no state) tokenize the instruction alone. The
    pi05 prompt writes the robot state into the text."""
    out = []
    fmt = p.prompt_format
    if fmt == "pi05" and p.use_state:
        out.append(("policy.use_state", True, "must be False with policy.prompt_format='pi05' (the state "
                    "is written into the prompt, not given as a token)"))
    if fmt == "pi05" and get(config, "data.norm_mode") != "quantile":
        out.append(("data.norm_mode", get(config, "data.norm_mode"), "must be 'quantile' with "
                    "policy.prompt_format='pi05' (pi0.5 bins the unclipped quantile-normalized state)"))
    other = [s for s in stages if s not in PI05_PROMPT_STAGES]
    if "env" in config or other:
        out.append(("policy.prompt_format", fmt, f"runs only the stages {list(PI05_PROMPT_STAGES)} on "
                    f"logged data (and the server), not {other or 'a simulator'}: the other stages build "
                    "prompts without the robot state"))
    return out


WM_STAGES = ("wm_pretrain", "wm_finetune", "wm_bc", "report", "logged_roots")


def _wm_size_problems(config, w) -> list[tuple[str, Any, str]]:
    out = []
    flux = w.vae.get("kind", "project") == "flux"
    down, what = (2 ** (len(w.vae.flux.ch_mult) - 1), "config.wm.vae.flux.ch_mult") if flux else \
        (2 ** len(w.vae.widths), "config.wm.vae.widths")
    if config.image_size % (down * w.latent_patch):
        out.append(("image_size", config.image_size, f"must be divisible by the VAE downsample ({down}, "
                    f"{what}) x config.wm.latent_patch ({w.latent_patch})"))
    if config.image_size % w.vit.patch:
        out.append(("image_size", config.image_size, f"must be divisible by config.wm.vit.patch ({w.vit.patch})"))
    if not flux and w.vae.downsample != down:
        out.append(("wm.vae.downsample", w.vae.downsample, f"must equal 2 ** len(config.wm.vae.widths) "
                    f"(= {down}: one stride-2 stage per width)"))
    stages = tuple(get(config, "stages")) if get(config, "stages") is not _MISSING else ()
    reads_wm = ("model" in (get(config, "rl.world"), get(config, "rl.reward_from"))
                and not (get(config, "rl.reward_model") == "classifier" and get(config, "rl.world") != "model"))
    uses = [s for s in stages if s in WM_STAGES or (s == "mbpo" and reads_wm)]
    release = w.get("init_from", "")
    if uses and flux and not release:
        out.append(("wm.vae.kind", "flux", f"needs config.wm.init_from (a BAGEL release directory) for stage "
                    f"{uses[0]!r}: the stages keep BAGEL's FLUX VAE frozen and never train one"))
    bagel_kind = flux and w.vit.get("connector", "linear") == "mlp" and w.get("bagel_embeddings", False)
    if release and not bagel_kind:
        out.append(("wm.init_from", release, "a BAGEL release loads into a BAGEL-kind world model: "
                    "config.wm.vae.kind='flux', wm.vit.connector='mlp', wm.bagel_embeddings=True "
                    "(configs/bridge.py:bagel has them)"))
    if w.get("tokenizer", "") not in ("", "byte"):
        if not w.umm.get("vocab_size", 0):
            out.append(("wm.umm.vocab_size", 0, "must be set with config.wm.tokenizer (at least the "
                        "tokenizer's vocabulary; 0 is the byte vocabulary's size)"))
        if w.action_encoding == "bins":
            out.append(("wm.action_encoding", "bins", "needs the byte vocabulary (config.wm.tokenizer=''): "
                        "the action-bin tokens extend it"))
    return out


def _cross_problems(config) -> list[tuple[str, Any, str]]:
    """(key, value, what is allowed) for rules that involve several fields."""
    out = []
    p = get(config, "policy")
    if p is not _MISSING:
        if p.expert_depth != p.depth:
            out.append(("policy.expert_depth", p.expert_depth, f"must equal config.policy.depth ({p.depth}): "
                        "every layer is one joint attention over both experts"))
        if p.num_heads % p.num_kv_heads:
            out.append(("policy.num_heads", p.num_heads,
                        f"must be a multiple of config.policy.num_kv_heads ({p.num_kv_heads})"))
        if p.action_pad_dim < config.action_dim:
            out.append(("policy.action_pad_dim", p.action_pad_dim,
                        f"must be >= config.action_dim ({config.action_dim})"))
        text_len = get(config, "data.max_text_len")
        if text_len is not _MISSING and p.max_text_len != text_len:
            out.append(("policy.max_text_len", p.max_text_len,
                        f"must equal config.data.max_text_len ({text_len})"))
        if config.image_size % p.vit_patch:
            out.append(("image_size", config.image_size,
                        f"must be divisible by config.policy.vit_patch ({p.vit_patch})"))
        stages = tuple(get(config, "stages")) if get(config, "stages") is not _MISSING else ()
        imagining = [s for s in stages if s in ("wm_bc", "report")
                     or (s == "mbpo" and get(config, "rl.world") == "model")]
        weight = get(config, "sft.grounding_weight")
        if p.get("perception_dim", 0) and (weight is _MISSING or weight <= 0):
            out.append(("policy.perception_dim", p.perception_dim, "the perception head learns from the "
                        "grounding loss: needs config.sft.grounding_weight > 0"))
        teacher = get(config, "sft.perception_teacher")
        if teacher is not _MISSING and teacher:
            if p.get("perception_dim", 0) != 4:
                out.append(("sft.perception_teacher", True, "teaches the 4 privileged positions: needs "
                            "config.policy.perception_dim=4"))
            elif not (get(config, "env.privileged_state") is True and get(config, "data.state_dim") == 11):
                out.append(("sft.perception_teacher", True, "reads the true positions from the demos' "
                            "privileged state: needs config.env.privileged_state=True and config.data.state_dim=11"))
        if p.get("prompt_format", "plain") != "plain":
            out += _pi05_prompt_problems(config, p, stages)
        if p.use_state and imagining:
            out.append(("policy.use_state", True, f"cannot run stage {imagining[0]!r}: the world model "
                        "predicts images, not the state this policy reads (use rl.world='sim' or "
                        "'sim_roots', and drop the stages that imagine)"))
    rounds = get(config, "sft.dagger_rounds")
    if rounds is not _MISSING and rounds > 0 and ("env" not in config or not get(config, "sft.in_memory")):
        out.append(("sft.dagger_rounds", rounds, "DAgger runs the scripted expert: needs a simulator "
                    "(config.env) and config.sft.in_memory=True"))
    r = get(config, "rl")
    hybrids = {"sim": "model", "model": "sim_roots"}   # rl.reward_from -> the rl.world it pairs with
    if r is not _MISSING and r.get("reward_from", "") and r.world != hybrids[r.reward_from]:
        out.append(("rl.reward_from", r.reward_from, f"takes the reward from the other world than the views: "
                    f"needs config.rl.world={hybrids[r.reward_from]!r}"))
    if r is not _MISSING and "group_size" in r:
        if r.num_branches % r.group_size:
            out.append(("rl.num_branches", r.num_branches, f"must be a multiple of config.rl.group_size "
                        f"({r.group_size}): every start state is branched group_size times"))
        if r.advantage in ("group", "vine") and r.group_size < 2:
            out.append(("rl.group_size", r.group_size, f"must be >= 2 with config.rl.advantage={r.advantage!r} "
                        "(a group of one has no relative advantage)"))
    w = get(config, "wm")
    if w is not _MISSING and "vae" in w:
        out += _wm_size_problems(config, w)
    d = get(config, "data")
    if d is not _MISSING and "image_keys" in d:
        if len(tuple(d.image_keys)) != len(tuple(config.views)):
            out.append(("data.image_keys", tuple(d.image_keys),
                        f"must name one observation key per view in config.views ({len(tuple(config.views))})"))
        if not 0 <= d.gripper_dim < config.action_dim:
            out.append(("data.gripper_dim", d.gripper_dim, f"must be in [0, action_dim={config.action_dim})"))
        for key, dim in (("norm_skip_action_dims", config.action_dim), ("norm_skip_state_dims", d.state_dim)):
            bad = [x for x in d[key] if not -dim <= x < dim]
            if bad:
                out.append((f"data.{key}", bad, f"dims must be in [-{dim}, {dim})"))
    return out


def validate(config: ml_collections.ConfigDict) -> None:
    """Raises ConfigError naming the first bad key; returns None when the config can run."""
    for old, new in RENAMED.items():
        if get(config, old) is not _MISSING:
            raise ConfigError(old, get(config, old), f"renamed: set config.{new} instead")
    for key, check in RULES:
        value = get(config, key)
        if value is _MISSING:
            continue
        problem = check(value)
        if problem:
            raise ConfigError(key, value, problem)
    for key, value, problem in _cross_problems(config):
        raise ConfigError(key, value, problem)
    if not has_simulator(config):
        stages = get(config, "stages")
        for stage in _SIM_STAGES:
            if stages is not _MISSING and stage in tuple(stages):
                raise ConfigError("stages", tuple(config.stages), f"stage {stage!r} needs a simulator "
                                  "(config.env); without one use 'logged_roots' for branch roots")
        if get(config, "rl.world") in ("sim", "sim_roots"):
            raise ConfigError("rl.world", config.rl.world, "needs a simulator (config.env); without one use 'model'")
        if get(config, "rl.reward_from") not in (_MISSING, ""):
            raise ConfigError("rl.reward_from", config.rl.reward_from, "steps the simulator restored at the "
                              "roots: needs config.env (set it to '' without a simulator)")
        weight = get(config, "sft.grounding_weight")
        if weight is not _MISSING and weight > 0:
            raise ConfigError("sft.grounding_weight", weight, "grounding co-training renders simulator "
                              "scenes: needs config.env (set it to 0 without a simulator)")
    layer, depth = get(config, "sft.grounding_layer"), get(config, "policy.depth")
    if layer is not _MISSING and depth is not _MISSING and layer > depth:
        raise ConfigError("sft.grounding_layer", layer, f"must be -1 or in [0, config.policy.depth={depth}]")
    anchor = get(config, "rl.value_anchor")
    if anchor not in (_MISSING, 0) and get(config, "rl.world") != "model":
        raise ConfigError("rl.value_anchor", anchor, "ties the critic to the learned world model's predicted "
                          "views: needs rl.world='model' (or set it to 0)")
    if get(config, "wm.action_adaln") is True and get(config, "wm.view_decoding") == "interleaved":
        raise ConfigError("wm.action_adaln", True, "conditions every generated view on the action; IVD "
                          "generates the wrist without it: use wm.view_decoding='independent' or 'joint'")
    for guided, drops in (("wm.cfg_text_scale", ("wm.dropout.text",)),
                          ("wm.cfg_image_scale", ("wm.dropout.vit", "wm.dropout.vae"))):
        scale = get(config, guided)
        if scale is _MISSING or scale == 1.0:
            continue
        for drop in drops:
            if get(config, drop) in (0, 0.0):
                raise ConfigError(drop, 0.0, f"classifier-free guidance ({guided}={scale}) needs the "
                                  "unconditional branch trained: set this dropout > 0 (e.g. 0.1)")
    for task, horizon in _horizons(config).items():
        if config.chunk_size > horizon:
            raise ConfigError("chunk_size", config.chunk_size,
                              f"must be <= the episode horizon of every task (task {task!r}: {horizon})")
