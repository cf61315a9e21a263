"""Mesh and parameter sharding rules; a sharded train step equals the single-device one."""
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest
from jax.sharding import PartitionSpec as P

from vlambpo_jax.train import sharding

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("data, fsdp", [(2, 2), (1, 4)])
def test_sharded_step_matches_single_device(data, fsdp):
    out = subprocess.run([sys.executable, str(ROOT / "tests/helpers/sharded_toy_check.py"),
                          str(data), str(fsdp)], capture_output=True, text=True, timeout=300,
                         cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["devices"] == 4
    assert result["max_abs_diff"] < 1e-5
    assert result["sharded"] == {"big": True, "small": False}


def test_specs_threshold_and_rules():
    mesh = sharding.make_mesh(1, 1)
    params = {"a": jnp.zeros((8, 6)), "emb": jnp.zeros((12, 4))}
    assert sharding.param_specs(params, mesh, min_size=1) == {"a": P(), "emb": P()}  # fsdp = 1
    assert sharding._fsdp_spec((6, 8), 4, 1) == P(None, "fsdp")
    assert sharding._fsdp_spec((6, 8), 4, 100) == P()          # below the size threshold
    assert sharding._fsdp_spec((6, 10), 4, 1) == P()            # nothing divisible
    specs = sharding.param_specs(params, mesh, rules=[("emb", (None, "fsdp"))])
    assert specs["emb"] == P(None, "fsdp") and specs["a"] == P()


def test_mesh_sizes_checked():
    n = jax.device_count()
    assert sharding.make_mesh(-1, 1).shape == {"data": n, "fsdp": 1}
    with pytest.raises(ValueError, match="must multiply"):
        sharding.make_mesh(n + 1, 1)
    with pytest.raises(ValueError, match="at most one"):
        sharding.make_mesh(-1, -1)


def test_policy_wm_steps_and_rollout_match_on_a_mesh():
    out = subprocess.run([sys.executable, str(ROOT / "tests/helpers/sharded_models_check.py")],
                         capture_output=True, text=True, timeout=900, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr[-3000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["policy_diff"] < 1e-5 and r["policy_sharded"] > 0
    # Adam divides by sqrt(v): tiny gradient differences from the other reduction order grow a bit.
    assert r["wm_diff"] < 1e-3 and r["wm_sharded"] > 0
    assert r["rollout_log_prob_diff"] < 1e-4 and r["rollout_images_diff"] == 0 and r["rollout_sharded"]


def _sharding_check(script: str) -> dict:
    """Runs tests/helpers/<script> (8 emulated devices) and returns the JSON line it prints."""
    out = subprocess.run([sys.executable, str(ROOT / "tests" / "helpers" / script)],
                         capture_output=True, text=True, timeout=900, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_pi05_size_policy_is_split_over_8_devices():
    """The pi0.5-size Policy, cut to 2 layers, initialised abstractly into its FSDP shardings on 8
    emulated devices: every large array is split, none replicated by accident."""
    r = _sharding_check("pi05_sharding_check.py")
    assert r["devices"] == 8 and r["large"] > 20
    assert r["replicated_large"] == []
    # the largest shard is an eighth of the 257,152 x 2,048 float32 text embedding
    assert r["largest_shard_bytes"] == 257152 * 2048 * 4 // 8


def test_bagel_size_world_model_is_split_over_8_devices():
    """The BAGEL-size world model (configs/bridge.py:bagel at full widths, cut to 2 backbone and 2 ViT
    layers: net, FLUX VAE, statistics), initialised abstractly into its FSDP shardings on 8 emulated
    devices: every large array is split, none replicated by accident."""
    r = _sharding_check("bagel_sharding_check.py")
    assert r["devices"] == 8 and r["large"] > 50
    assert r["replicated_large"] == []
    # the largest shard is an eighth of the 152,064 x 3,584 float32 text embedding (or the lm_head)
    assert r["largest_shard_bytes"] == 152064 * 3584 * 4 // 8
