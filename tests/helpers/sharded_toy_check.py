"""Run with 4 emulated CPU devices: a sharded train step equals the single-device one.

Prints one JSON line: max abs difference of params after 3 steps, and which params were sharded.
"""
import json
import os
import sys

os.environ["JAX_PLATFORMS"] = "cpu"
os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402

from vlambpo_jax.train import sharding  # noqa: E402


def main():
    data, fsdp = int(sys.argv[1]), int(sys.argv[2])
    key = jax.random.PRNGKey(0)
    params = {"big": jax.random.normal(key, (64, 48)) * 0.1, "small": jnp.zeros((48,))}
    opt = optax.adamw(1e-2)
    x = jax.random.normal(jax.random.PRNGKey(1), (16, 64))
    y = jax.random.normal(jax.random.PRNGKey(2), (16, 48))

    def step(p, o, batch):
        bx, by = batch
        loss, g = jax.value_and_grad(lambda q: jnp.mean((jnp.tanh(bx @ q["big"]) + q["small"] - by) ** 2))(p)
        u, o = opt.update(g, o, p)
        return optax.apply_updates(p, u), o, loss

    p1, o1 = params, opt.init(params)
    for _ in range(3):
        p1, o1, _ = jax.jit(step)(p1, o1, (x, y))

    mesh = sharding.make_mesh(data, fsdp)
    ps = sharding.param_shardings(params, mesh, min_size=1024)
    os_ = sharding.param_shardings(opt.init(params), mesh, min_size=1024)
    bs = sharding.batch_sharding(mesh)
    jstep = jax.jit(step, in_shardings=(ps, os_, (bs, bs)), out_shardings=(ps, os_, None),
                    donate_argnums=(0, 1))
    p2 = jax.device_put(params, ps)
    o2 = jax.device_put(opt.init(params), os_)
    batch = jax.device_put((x, y), (bs, bs))
    for _ in range(3):
        p2, o2, _ = jstep(p2, o2, batch)
    diff = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p2)))
    sharded = {k: not v.sharding.is_fully_replicated for k, v in p2.items()}
    print(json.dumps({"max_abs_diff": diff, "sharded": sharded, "devices": jax.device_count()}))


if __name__ == "__main__":
    main()
