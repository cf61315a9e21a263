"""The memory plan (vlambpo_jax/tools/plan.py) of the policy and the world model: state bytes per
device by hand, and the activation estimate extrapolated from cut models against a direct compile of a
deeper one."""
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AbstractMesh

from configs import tabletop
from vlambpo_jax.models.policy import Policy
from vlambpo_jax.models.world_model import WorldModel
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


def _no_compiles(monkeypatch):
    """fit_temps -> zero bytes for every phase, without compiling anything."""
    monkeypatch.setattr(plan, "fit_temps", lambda measure, depths, names, *a: {n: 0.0 for n in names})


def test_world_model_state_bytes_by_hand(monkeypatch):
    """Fine-tuning and imagination state of the world model: on (data 2, fsdp 1) nothing is split:
    bfloat16 parameters and gradients, float32 EMA and two moments, the frozen VAE and statistics in
    float32; on fsdp 2 with every array split that can be, an array with an even axis halves, and FSDP
    gathers the larger of one backbone layer and the largest array."""
    _no_compiles(monkeypatch)
    config = tabletop.get_config("smoke")
    params = jax.eval_shape(WorldModel(config).init, jax.random.PRNGKey(0))
    size = lambda tree: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))  # noqa: E731
    net, frozen = size(params["net"]), size(params["vae"]) + size(params["stats"])
    out = plan.plan_world_model(config, devices=2, fsdp=1, hbm_gb=80.0, wm_batch=4, imagine_batch=6,
                                param_dtype="bfloat16")
    assert out["params"]["net"]["total"] == net and out["params"]["total"] == net + frozen
    assert out["finetune"]["bytes"] == {"params": 2 * net, "ema_params": 4 * net, "grads": 2 * net,
                                        "adam_moments": 8 * net, "frozen": 4 * frozen, "gathered_layer": 0.0,
                                        "update_temps": 0.0, "activations": 0.0}
    assert out["imagine"]["bytes"] == {"params": 2 * net, "frozen": 4 * frozen, "gathered_layer": 0.0,
                                       "predict_temps": 0.0}
    assert out["finetune"]["per_device_batch"] == 2 and out["finetune"]["per_device_reward_examples"] == 16
    assert out["imagine"]["per_device_branches"] == 3 and out["finetune"]["fits"] and out["imagine"]["fits"]

    config.mesh.fsdp_min_size = 1
    out = plan.plan_world_model(config, devices=2, fsdp=2, hbm_gb=1e-6, wm_batch=4, imagine_batch=6,
                                param_dtype="float32")
    halved = lambda tree: sum(int(np.prod(x.shape)) / (2 if any(d % 2 == 0 for d in x.shape) else 1)  # noqa: E731
                              for x in jax.tree.leaves(tree))
    layer = size(params["net"]["params"]["backbone"]["layers_0"])
    largest = max(int(np.prod(x.shape)) for x in jax.tree.leaves(params["net"]))
    tune = out["finetune"]["bytes"]
    assert tune["params"] == tune["grads"] == tune["ema_params"] == 4 * halved(params["net"]) < 4 * net
    assert tune["frozen"] == 4 * halved({k: params[k] for k in ("vae", "stats")})
    assert tune["gathered_layer"] == 4 * max(layer, largest)
    assert not out["finetune"]["fits"] and not out["imagine"]["fits"]


@pytest.mark.slow
@pytest.mark.parametrize("phase", ["finetune", "imagine"])
def test_world_model_temporaries_extrapolate_to_a_direct_compile(phase):
    """The world model's temporaries fitted on cut models (plan.WM_FIT_DEPTHS) against a direct compile
    of a deeper one: the loss and gradient on 2 transitions + 2 reward examples, the update, and a
    predict call on 2 branches with CFG (3 rows each)."""
    config = tabletop.get_config("smoke")
    config.wm.update(dict(cfg_text_scale=2.0))
    config.wm.vit.depth, config.wm.umm.depth = 3, 10
    wm = plan.world_model(config)
    if phase == "finetune":
        estimate = plan.wm_temp_bytes(plan._wm_finetune_phases, config, ("activations", "update"), batch=2,
                                      reward_batch=2)
        direct = dict(zip(("activations", "update"), plan._wm_finetune_phases(wm, config, 2, 2)))
    else:
        estimate = plan.wm_temp_bytes(plan._wm_imagine_phase, config, ("predict",), batch=2)
        direct = {"predict": plan._wm_imagine_phase(wm, config, 2)[0]}
    for name, value in direct.items():
        assert abs(estimate[name] - value) <= 0.1 * max(value, 1e6), (name, estimate, value)
    main = "activations" if phase == "finetune" else "predict"
    assert direct[main] > max(m[main] for m in estimate["measured"].values())   # deeper needs more


def test_world_model_remat_keeps_fewer_activations():
    """The backbone rematerialised per layer (plan.world_model(remat=True)) keeps less for the backward
    pass, and the more so the deeper it is: XLA:CPU keeps the recomputation (plan.COMPILE_OPTIONS)."""
    config = tabletop.get_config("smoke")
    config.wm.update(dict(batch_size=2, reward_batch_size=0))
    saved = {}
    for depth in (2, 4):
        config.wm.umm.depth = depth
        saved[depth] = [plan._wm_finetune_phases(plan.world_model(config, remat), config, 2, 0)[0]
                        for remat in (False, True)]
    assert saved[2][1] < saved[2][0] and saved[4][1] < saved[4][0]
    assert saved[4][1] - saved[2][1] < 0.5 * (saved[4][0] - saved[2][0])    # per layer


def test_plan_command_adds_the_world_model_and_leaves_the_policy_as_it_was(monkeypatch, capsys):
    _no_compiles(monkeypatch)
    args = [f"--config={Path(tabletop.__file__)}:smoke", "--devices=2", "--vocab_size=300"]
    assert plan.main(args + ["--noworld_model"]) == 0
    alone = json.loads(capsys.readouterr().out)
    assert plan.main(args + ["--wm_batch=4", "--imagine_batch=2", "--wm_remat"]) == 0
    captured = capsys.readouterr()
    both = json.loads(captured.out)
    assert {k: v for k, v in both.items() if k != "world_model"} == alone
    wm = both["world_model"]
    assert wm["remat"] and wm["param_dtype"] == "float32"            # the tabletop config's wm.dtype
    assert wm["finetune"]["global_batch"] == 4 and wm["imagine"]["per_device_branches"] == 1
    assert "WM fine-tune (net)" in captured.err and "predict_temps" in captured.err
    for bad in ("--wm_param_dtype=bogus", "--imagine_batch=3"):
        with pytest.raises(SystemExit):
            plan.main(args + [bad])
        assert bad.split("=")[0] in capsys.readouterr().err
