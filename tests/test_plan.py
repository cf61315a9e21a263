"""The memory plan (vlambpo_jax/tools/plan.py): state bytes per device by hand, and the activation
estimate extrapolated from cut models against a direct compile of a deeper one."""
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AbstractMesh

from configs import tabletop
from vlambpo_jax.models.policy import Policy
from vlambpo_jax.tools import plan


def test_state_bytes_per_device_follow_the_fsdp_split():
    tree = {"big": jax.ShapeDtypeStruct((1024, 128), jnp.float32),      # 131,072 elements: split over fsdp
            "odd": jax.ShapeDtypeStruct((257, 255), jnp.float32),       # 65,535 < min size: replicated
            "small": jax.ShapeDtypeStruct((10,), jnp.bfloat16)}
    mesh = AbstractMesh((2, 4), ("data", "fsdp"))
    expected = 1024 * 128 * 4 / 4 + 257 * 255 * 4 + 10 * 2
    assert plan.per_device_bytes(tree, mesh, min_size=2 ** 16) == expected
    # a rule that replicates the big array too
    assert plan.per_device_bytes(tree, mesh, 2 ** 16, rules=(("big", ()),)) == 1024 * 128 * 4 + 257 * 255 * 4 + 20


def test_temporaries_extrapolate_to_a_direct_compile():
    config = tabletop.get_config("smoke")
    config.policy.update(dict(vit_depth=3, depth=4, expert_depth=4, dtype="float32"))
    vocab = 300
    estimate = plan.temp_bytes(plan._sft_phases, config, vocab, batch=4)
    activations, update = plan._sft_phases(Policy(config, vocab), config, 4)
    assert estimate["activations"] > 0
    assert abs(estimate["activations"] - activations) / activations < 0.1, (estimate, activations)
    assert abs(estimate["update"] - update) <= 0.1 * max(update, 1e6), (estimate, update)


def test_ppo_phases_compile_and_a_frozen_vlm_keeps_no_activations():
    config = tabletop.get_config("smoke")
    policy = Policy(config, 300)
    activations, update = plan._ppo_phases(policy, config, 4)
    config.rl.train_vlm = True
    activations_vlm, update_vlm = plan._ppo_phases(policy, config, 4)
    assert 0 < activations < activations_vlm     # backward through the VLM only when it trains
    assert update >= 0 and update_vlm >= 0


def test_plan_counts_the_whole_model_and_its_trained_part(monkeypatch):
    config = tabletop.get_config("smoke")
    monkeypatch.setattr(plan, "temp_bytes", lambda *a, **k: {"activations": 0.0, "update": 0.0})   # no compiles
    out = plan.plan(config, devices=2, fsdp=2, hbm_gb=0.001, sft_batch=4, ppo_batch=4, vocab_size=300)
    params = Policy(config, 300).init(jax.random.PRNGKey(0), {
        "images": jnp.zeros((1, len(config.views), config.image_size, config.image_size, 3), jnp.uint8),
        "tokens": jnp.zeros((1, config.data.max_text_len), jnp.int32),
        "token_mask": jnp.ones((1, config.data.max_text_len), bool)})
    assert out["params"]["total"] == sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
    sft, ppo = out["sft"]["bytes"], out["ppo"]["bytes"]
    assert sft["adam_moments"] == 2 * sft["grads"] and ppo["adam_moments"] == 2 * ppo["grads"]
    assert ppo["grads"] < sft["grads"]                       # PPO trains the expert and value head only
    assert not out["sft"]["fits"] and out["sft"]["per_device_batch"] == 2
