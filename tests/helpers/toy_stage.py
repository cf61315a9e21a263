"""A tiny resumable training stage for testing the runner, checkpoints and SIGTERM handling.

Run as a script: python tests/helpers/toy_stage.py WORKDIR NUM_STEPS STEP_SLEEP_S
Prints "step" after each step and writes the final weights to WORKDIR/toy/final.npy.
"""
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from configs import common  # noqa: E402
from vlambpo_jax import pipeline  # noqa: E402
from vlambpo_jax.train.loop import train_loop  # noqa: E402
from vlambpo_jax.train.metrics import MetricWriter  # noqa: E402
from vlambpo_jax.train.preemption import PreemptionGuard  # noqa: E402

OPT = optax.adam(0.05)


def batch_fn(step):
    rng = np.random.default_rng(step)
    x = rng.normal(size=(16, 3)).astype(np.float32)
    return x, x @ np.array([1.0, -2.0, 0.5], np.float32)


@jax.jit
def _update(state, batch):
    x, y = batch
    loss, grad = jax.value_and_grad(lambda w: jnp.mean((x @ w - y) ** 2))(state["params"])
    updates, opt_state = OPT.update(grad, state["opt_state"], state["params"])
    return {"params": optax.apply_updates(state["params"], updates), "opt_state": opt_state}, {"loss": loss}


def run(ctx):
    params = jnp.zeros(3)
    state = {"params": params, "opt_state": OPT.init(params)}
    sleep = float(ctx.config.step_sleep)

    def step_fn(s, b):
        out = _update(s, b)
        print("step", flush=True)
        time.sleep(sleep)
        return out

    result = train_loop(ctx, name="ckpt", state=state, step_fn=step_fn, batch_fn=batch_fn,
                        num_steps=ctx.config.num_steps, params_fn=lambda s: s["params"],
                        assets={"note": "toy"})
    if not result.interrupted:
        np.save(ctx.stage_dir / "final.npy", np.asarray(result.state["params"]))
    return {"steps": result.step}


def main():
    workdir, num_steps, sleep = Path(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    pipeline.STAGES["toy"] = "tests.helpers.toy_stage"
    config = ml_collections.ConfigDict(dict(
        stages=("toy",), num_steps=num_steps, step_sleep=sleep,
        checkpoint=common.checkpoint_config(), log=common.log_config()))
    config.checkpoint.every_steps = 5
    config.log.progress = "off"
    guard = PreemptionGuard()
    pipeline.run_stages(config, workdir, lambda s: MetricWriter(workdir / s, s, config.log),
                        guard, log=lambda m: print(m, flush=True))
    print("exit", "interrupted" if guard.requested else "complete", flush=True)


if __name__ == "__main__":
    main()
