"""Does PPO learn? The policy of a config trained by its PPO settings in the toy world
(vlambpo_jax/rl/toy_world.py: a chunk succeeds when its mean x action is positive):

  python -m vlambpo_jax.tools.ppo_toy [--config=configs/tabletop.py:smoke] [--iterations=30]
      [--config.rl.num_branches=64 --config.rl.minibatch_size=32 --config.rl.epochs=4
       --config.rl.actor_lr=1e-3 --config.policy.log_prob=mean ...] [--out=FILE]

Prints one JSON object: the settings, success per iteration and the PPO statistics of the last one.
Success should climb from about 50% towards 100% within a few dozen iterations (tests/test_ppo_toy.py).
"""
from __future__ import annotations

import json
import sys
import time

from absl import flags

from vlambpo_jax import cli, loading
from vlambpo_jax.models.policy import Policy
from vlambpo_jax.rl import toy_world


def _define(fv: flags.FlagValues) -> None:
    flags.DEFINE_integer("iterations", 30, "PPO iterations (buffer refills)", flag_values=fv)
    flags.DEFINE_string("out", "", "also write the JSON here", flag_values=fv)


def main(argv: list[str]) -> int:
    fv = cli.command_flags(argv, _define, workdir=False, default_config="configs/tabletop.py:smoke")
    config = cli.checked(fv.config)
    policy = Policy(config, loading.make_tokenizer(config.policy.tokenizer).vocab_size)
    start = time.time()
    history = toy_world.run_ppo(policy, config.rl, fv.iterations, seed=int(config.seed))
    out = {"config": cli.config_spec(["", *argv]) or "configs/tabletop.py:smoke",
           "overrides": [a for a in argv if a.startswith("--config.")], "seconds": time.time() - start,
           "success": [round(h["branch_success"], 4) for h in history], "last": history[-1]}
    text = json.dumps(out, indent=1)
    cli.emit_json(text, fv.out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
