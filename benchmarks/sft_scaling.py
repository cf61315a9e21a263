"""SFT success rate of config variants (demo count, model size, steps...; one JSON line per run), with no
RLDS files.

For each run: scripted-expert demos collected in memory (the `demos` stage's
collector), standardized and normalized as the reader does, behaviour cloning exactly as the `sft` stage
trains (its train step, in-memory batches, EMA, grounding co-training when the config asks for it), then
the simulator evaluation of the EMA policy. Meant for an accelerator, where thousands of demos and tens of
thousands of steps take minutes; on a laptop CPU keep the numbers small.

    python benchmarks/sft_scaling.py --config.sft.eval_episodes=50 \\
        --run "default:" --run "4x_demos:demos.episodes_per_task=204" \\
        --run "deep:policy.depth=4;policy.expert_depth=4;sft.steps=10000"

Each --run is NAME:PATH=VALUE;PATH=VALUE... with config paths of the config (default
configs/tabletop.py; values parsed as Python literals where they parse); --config.PATH=VALUE overrides
apply to every run. Runs with the same demo settings share
one demo collection. Prints one JSON line per run (training time, final losses, evaluation).
"""
from __future__ import annotations

import copy
import json
import sys
import time
import types
from pathlib import Path

import jax
from absl import flags

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vlambpo_jax import cli, loading  # noqa: E402
from vlambpo_jax.config_checks import apply_overrides  # noqa: E402
from vlambpo_jax.data import normalization, rlds_reader  # noqa: E402
from vlambpo_jax.data.standardize import StandardizeConfig, standardize  # noqa: E402
from vlambpo_jax.envs import demos as demos_lib  # noqa: E402
from vlambpo_jax.envs.tabletop import make_env  # noqa: E402
from vlambpo_jax.models import policy as policy_lib  # noqa: E402
from vlambpo_jax.stages import sft as sft_lib  # noqa: E402


def demo_episodes(config, episodes_per_task: int) -> tuple[list[dict], dict, float, dict]:
    """Standardized, normalized demo episodes in memory -> (episodes, norm stats, seconds, expert
    successes per task)."""
    start = time.time()
    d = config.demos
    env = make_env(config)
    key = jax.random.fold_in(jax.random.PRNGKey(config.seed), 0xDE30)
    raw, counts = demos_lib.collect(env, key, episodes_per_task, float(d.noise), int(d.batch_size),
                                    targets_per_scene=int(d.targets_per_scene), log=lambda _: None)
    std = StandardizeConfig.from_config(config)
    for ep in raw:   # the RLDS writer stores the instruction at every step
        steps = ep["steps"]
        steps["language_instruction"] = [steps["language_instruction"]] * len(steps["action"])
    eps = [standardize(ep, std, dataset="demos", index=i) for i, ep in enumerate(raw)]
    masks = {"action": normalization.dims_mask(std.action_dim, config.data.norm_skip_action_dims),
             "state": normalization.dims_mask(std.state_dim, config.data.norm_skip_state_dims)}
    stats = normalization.compute_stats(eps, masks=masks)
    eps = [rlds_reader.add_normalized(ep, stats, config.data.norm_mode) for ep in eps]
    return eps, stats, time.time() - start, {k: f"{s}/{n}" for k, (s, n) in counts.items()}


def train_and_evaluate(config, episodes, stats) -> dict:
    """The `sft` stage's training on in-memory episodes, then one evaluation; -> timing and results."""
    sft = config.sft
    ctx = types.SimpleNamespace(config=config, stage="sft")
    tokenizer = loading.make_tokenizer(config.policy.tokenizer)
    policy = policy_lib.Policy(config, vocab_size=tokenizer.vocab_size,
                               unnormalize=loading.action_unnormalizer(stats, config.data.norm_mode))
    batch_size = int(sft.batch_size)
    make = lambda samples: sft_lib.model_batch(rlds_reader.make_batch(  # noqa: E731
        samples, chunk_size=int(config.chunk_size), tokenizer=tokenizer,
        max_text_len=int(config.data.max_text_len), action_pad=config.data.action_pad), policy.dims.use_state)
    batch_fn = sft_lib.InMemoryBatches(episodes, batch_size, int(config.seed), make)
    example = batch_fn(0)
    params = policy.init(jax.random.key(int(config.seed)),
                         {k: v[:1] for k, v in example.items() if k not in ("actions", "action_mask")})
    state, step_fn, batch_fn = sft_lib.make_trainer(ctx, policy, tokenizer, params, batch_fn)
    start = time.time()
    metrics = {}
    for s in range(int(sft.steps)):
        state, metrics = step_fn(state, batch_fn(s))
        if s % 1000 == 0:
            print(f"  step {s}: loss {float(metrics['loss']):.3f}", file=sys.stderr, flush=True)
    jax.block_until_ready(state)
    train_s = time.time() - start
    eval_fn = sft_lib._evaluator(ctx, policy, tokenizer, stats, jax.random.key(int(config.seed) + 2))
    start = time.time()
    result = eval_fn(state, int(sft.steps))
    return {"train_seconds": train_s, "final_metrics": {k: float(v) for k, v in metrics.items()},
            "eval_seconds": time.time() - start, "eval": result}


def parse_run(spec: str) -> tuple[str, list[str]]:
    """'NAME:PATH=VALUE;PATH=VALUE' -> (NAME, ['PATH=VALUE', ...])."""
    name, _, rest = spec.partition(":")
    return name, [x for x in rest.split(";") if x]


def _define(fv: flags.FlagValues) -> None:
    flags.DEFINE_multi_string("run", [], "NAME:PATH=VALUE;... one run per flag: a name and config "
                              "overrides (default: one run 'default')", flag_values=fv)
    flags.DEFINE_string("out", "", "also append each run's JSON line to this file", flag_values=fv)


def main(argv: list[str]) -> list[dict]:
    args = cli.command_flags(argv, _define, workdir=False, default_config="configs/tabletop.py")
    shared = [a[len("--config."):] for a in argv if a.startswith("--config.")]
    runs, demo_cache = [], {}
    for name, overrides in [parse_run(r) for r in args.run] or [("default", [])]:
        with args.config.unlocked():
            config = cli.checked(apply_overrides(copy.deepcopy(args.config), overrides))
        d = config.demos
        demo_key = (int(d.episodes_per_task), float(d.noise), int(d.targets_per_scene), int(config.seed))
        if demo_key not in demo_cache:
            demo_cache[demo_key] = demo_episodes(config, int(d.episodes_per_task))
        episodes, stats, demo_s, counts = demo_cache[demo_key]
        run = {"name": name, "overrides": shared + overrides, "device": str(jax.devices()[0].device_kind),
               "demo_episodes": len(episodes), "demo_steps": sum(e["length"] for e in episodes),
               "expert_success": counts, "demo_seconds": demo_s}
        run.update(train_and_evaluate(config, episodes, stats))
        line = json.dumps(run)
        print(line, flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write(line + "\n")
        runs.append(run)
    return runs


if __name__ == "__main__":
    main(sys.argv[1:])
