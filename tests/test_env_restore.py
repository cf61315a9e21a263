"""Restoring recorded simulator states (MBPO with a perfect world model, rl.world='sim_roots'): a
restored state renders the recorded images and continues exactly as the original episode; the collect
stage's branch roots carry the states of their own frames."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import tabletop
from vlambpo_jax import loading
from vlambpo_jax.data.tokenizer import ByteTokenizer
from vlambpo_jax.envs.tabletop import make_env
from vlambpo_jax.models.policy import Policy
from vlambpo_jax.rl import collect


@pytest.fixture(scope="module")
def env_and_config():
    config = tabletop.get_config("smoke")
    return make_env(config), config


def _actions(seed, b, k):
    rng = np.random.default_rng(seed)
    a = rng.uniform(-0.015, 0.015, (b, k, 7)).astype(np.float32)
    a[..., 6] = rng.uniform(0, 1, (b, k))
    return jnp.asarray(a)


def test_restored_state_renders_and_continues_exactly(env_and_config, tmp_path):
    env, config = env_and_config
    b, k = 3, config.chunk_size
    step_chunk = jax.jit(jax.vmap(env.step_chunk))
    state = jax.vmap(env.reset)(jax.random.split(jax.random.PRNGKey(0), b))
    qpos0 = np.asarray(state.data.qpos)
    state, _, _ = step_chunk(state, _actions(1, b, k))
    # Through an .npz file, as the collect stage stores the roots.
    np.savez(tmp_path / "states.npz", **jax.device_get(env.state_arrays(state)))
    restored = env.restore(dict(np.load(tmp_path / "states.npz")))
    np.testing.assert_array_equal(restored.obs["images"], state.obs["images"])
    rerendered = jax.jit(jax.vmap(lambda s: env._observe(s.data, s.info)["images"]))(restored)
    np.testing.assert_array_equal(rerendered, state.obs["images"])
    for c in range(2):
        actions = _actions(10 + c, b, k)
        state, rewards, success = step_chunk(state, actions)
        restored, rewards_r, success_r = step_chunk(restored, actions)
        np.testing.assert_array_equal(restored.obs["images"], state.obs["images"])
        np.testing.assert_array_equal(restored.data.qpos, state.data.qpos)
        np.testing.assert_array_equal(rewards_r, rewards)
        np.testing.assert_array_equal(success_r, success)
    assert np.abs(np.asarray(state.data.qpos) - qpos0).max() > 1e-4   # the scene moved: not frozen states
    with pytest.raises(KeyError, match="data.qpos"):
        env.restore({key: v for key, v in env.state_arrays(state).items() if key != ".data.qpos"})


def test_collected_roots_restore_to_their_own_frames(env_and_config):
    env, config = env_and_config
    tokenizer = loading.make_tokenizer(config.policy.tokenizer)
    policy = Policy(config, vocab_size=tokenizer.vocab_size, unnormalize=lambda a: a * 0.01)
    example = {"images": jnp.zeros((1, 2, config.image_size, config.image_size, 3), jnp.uint8),
               "tokens": jnp.ones((1, config.data.max_text_len), jnp.int32),
               "token_mask": jnp.ones((1, config.data.max_text_len), bool)}
    params = policy.init(jax.random.PRNGKey(0), example)
    episodes, sim_states = collect.collect(env, policy, params, tokenizer, jax.random.PRNGKey(3), 1, "train", 4,
                                           config.data.max_text_len, progress_mode="off")
    roots = collect.branch_roots(episodes, config.chunk_size, tokenizer, config.data.max_text_len, env.task_names,
                                 ByteTokenizer(), config.wm.max_text_len, sim_states)
    sim = {key[len(collect.SIM_PREFIX):]: v for key, v in roots.items() if key.startswith(collect.SIM_PREFIX)}
    restored = env.restore(sim)
    assert len(roots["t"]) > len(episodes)     # several chunk positions per episode
    np.testing.assert_array_equal(restored.obs["images"], roots["images"])
    np.testing.assert_array_equal(restored.info["step"], roots["t"])
    np.testing.assert_array_equal(restored.info["task_id"], roots["task_id"])
