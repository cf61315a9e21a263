"""Grounding co-training (vlambpo_jax/models/grounding.py): its labels say what the instruction text
names, its loss trains the prefix (not the action expert) at the chosen layer. The `sft` stage with it
(the smoke config's default) resumes exactly: tests/test_policy_sft.py."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import tabletop
from tests.test_policy_sft import _config, _run, _StopAfter, dataset  # noqa: F401  (fixture)
from vlambpo_jax import loading, pipeline
from vlambpo_jax.config_checks import ConfigError, validate
from vlambpo_jax.envs import evaluation, scene_pool
from vlambpo_jax.envs import scene as S
from vlambpo_jax.envs import tabletop as tabletop_env
from vlambpo_jax.envs import tasks as tasks_lib
from vlambpo_jax.models import grounding
from vlambpo_jax.models import policy as policy_lib
from vlambpo_jax.models.policy import Policy
from vlambpo_jax.stages import evaluate, sft
from vlambpo_jax.tools import grounding_eval
from vlambpo_jax.train import checkpoints


@pytest.fixture(scope="module")
def config():
    return tabletop.get_config("smoke,tasks=all")


def _mentions(text: str, names) -> list[int]:
    """Indices of `names` in the order the text mentions them."""
    found = [(text.index(n), i) for i, n in enumerate(names) if n in text]
    return [i for _, i in sorted(found)]


def test_targets_are_the_positions_the_instruction_names(config):
    env = tabletop_env.make_env(config)
    reset = jax.jit(lambda k, task: env.reset(k, task))
    targets_fn = jax.jit(env.grounding_targets)
    for task_id, name in enumerate(env.task_names):
        for seed in range(3):
            state = reset(jax.random.key(seed), task_id)
            y = np.asarray(targets_fn(state))
            text = env.instructions[int(state.obs["instruction_id"])]
            qpos, mocap = np.asarray(state.data.qpos), np.asarray(state.data.mocap_pos)
            obj_xy = np.stack([qpos[a:a + 2] for a in env._obj_qadr])
            objects = _mentions(text, [o.name for o in S.OBJECTS])
            np.testing.assert_allclose(y[0:2], obj_xy[objects[0]], atol=1e-6, err_msg=text)
            if name == "stack":
                goal = obj_xy[objects[1]]
            elif name in ("push", "place"):
                zone = _mentions(text, [f"{z} " for z in tasks_lib.ZONES])[0]
                goal = mocap[env._zone_mocap[zone], :2]
            else:
                goal = obj_xy[objects[0]]
            np.testing.assert_allclose(y[2:4], goal, atol=1e-6, err_msg=text)
            np.testing.assert_allclose(y[4:10], obj_xy.reshape(-1), atol=1e-6)
            np.testing.assert_allclose(y[10:13], np.asarray(state.info["ee_pos"]), atol=1e-6)


def test_privileged_state_holds_the_instructed_positions():
    env = tabletop_env.make_env(tabletop.get_config("smoke,tasks=all,truth"))
    plain = tabletop_env.make_env(tabletop.get_config("smoke,tasks=all"))
    reset, plain_reset = jax.jit(env.reset), jax.jit(plain.reset)
    targets_fn, step = jax.jit(env.grounding_targets), jax.jit(env.step)
    for task_id in range(env.num_tasks):
        key = jax.random.key(task_id)
        state = reset(key, task_id)
        # the first four grounding targets (instructed object xy, goal xy) are checked against the
        # instruction text and the raw qpos above
        np.testing.assert_allclose(np.asarray(state.obs["state"][7:]), np.asarray(targets_fn(state))[:4],
                                   atol=1e-6)
        np.testing.assert_array_equal(np.asarray(state.obs["state"][:7]),
                                      np.asarray(plain_reset(key, task_id).obs["state"]))
    moved = step(state, jnp.array([0.01, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0]))
    np.testing.assert_allclose(np.asarray(moved.obs["state"][7:]), np.asarray(targets_fn(moved))[:4], atol=1e-6)


@pytest.fixture(scope="module")
def pool(config):
    tok = loading.make_tokenizer(config.policy.tokenizer)
    return scene_pool.make_scene_pool(config, tok, 16, jax.random.key(0), grounding.POSITION_SCALE)


@pytest.mark.slow
def test_episode_pool_frames_come_from_along_expert_episodes(config, pool):
    tok = loading.make_tokenizer(config.policy.tokenizer)
    frames = scene_pool.make_episode_pool(config, tok, 32, jax.random.key(1), grounding.POSITION_SCALE, noise=0.1)
    assert {k: v.shape[1:] for k, v in frames.items()} == {k: v.shape[1:] for k, v in pool.items()}
    # The observation is the labelled state's own (not the reset one's): its tool position is the target's.
    np.testing.assert_allclose(frames["state"][:, :3] * grounding.POSITION_SCALE, frames["targets"][:, 10:13],
                               atol=1e-5)
    # The experts moved the gripper: many frames have it lower than any freshly reset scene does.
    lowest_reset = pool["targets"][:, 12].min()
    assert np.mean(frames["targets"][:, 12] < lowest_reset - 0.02 * grounding.POSITION_SCALE) > 0.25
    with pytest.raises(ConfigError, match="grounding_frames"):
        bad = config.copy_and_resolve_references()
        bad.sft.grounding_frames = "demos"
        validate(bad)


def test_pool_rows_and_batches(config, pool):
    n, v, s = 16, len(config.views), config.image_size
    assert pool["images"].shape == (n, v, s, s, 3) and pool["images"].dtype == np.uint8
    assert pool["targets"].shape == (n, 13)
    assert np.abs(pool["targets"]).max() < 0.3 * grounding.POSITION_SCALE   # inside the workspace
    assert len({t.tobytes() for t in pool["targets"]}) == n                 # every scene differs
    a = grounding.pool_batch(pool, 4, 0, 7)
    b = grounding.pool_batch(pool, 4, 0, 7)
    c = grounding.pool_batch(pool, 4, 0, 8)
    assert set(a) == {grounding.BATCH_PREFIX + k for k in pool}
    np.testing.assert_array_equal(a["ground_targets"], b["ground_targets"])
    assert not np.array_equal(a["ground_targets"], c["ground_targets"])


def test_loss_trains_the_prefix_and_head_only_and_fits_a_small_pool(config, pool):
    policy = Policy(config, loading.make_tokenizer(config.policy.tokenizer).vocab_size)
    batch = {k: jnp.asarray(v) for k, v in pool.items()}
    params = policy.init(jax.random.key(0), {k: batch[k][:1] for k in ("images", "tokens", "token_mask")})
    head = grounding.GroundingHead((32,), 13)
    head_params = head.init(jax.random.key(1), jnp.zeros((1, policy.dims.width)))["params"]

    loss_fn = lambda tr: grounding.grounding_loss(policy, head, tr[0], tr[1], batch)  # noqa: E731
    (loss0, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)((params, head_params))
    norm = lambda t: float(optax.tree.norm(t))  # noqa: E731
    assert norm(grads[0]["vlm"]) > 0 and norm(grads[1]) > 0
    assert norm(grads[0]["action_expert"]) == 0 and norm(grads[0]["value_head"]) == 0
    # The metric is the mean xy distance (cm) of the instructed object's prediction.
    pooled = np.asarray(policy_lib.pooled_prefix(policy.encode_prefix(params, batch)))
    pooled = pooled / np.sqrt(np.mean(pooled ** 2, axis=-1, keepdims=True) + 1e-6)
    pred = head.apply({"params": head_params}, jnp.asarray(pooled))
    dist = np.linalg.norm(np.asarray(pred[:, :2] - batch["targets"][:, :2]), axis=-1)
    assert float(metrics["grounding_target_err_cm"]) == pytest.approx(
        100 * dist.mean() / grounding.POSITION_SCALE, rel=1e-4)

    tx = optax.adam(3e-3)
    trainable = (params, head_params)
    opt = tx.init(trainable)

    @jax.jit
    def step(trainable, opt):
        loss, g = jax.value_and_grad(lambda tr: loss_fn(tr)[0])(trainable)
        updates, opt = tx.update(g, opt, trainable)
        return optax.apply_updates(trainable, updates), opt, loss

    for _ in range(150):
        trainable, opt, loss = step(trainable, opt)
    assert float(loss) < 0.1 * float(loss0), (float(loss0), float(loss))


def test_grounding_needs_a_simulator(dataset):  # noqa: F811
    config = _config(dataset)
    del config["env"]
    config.stages = ("sft",)
    config.sft.grounding_weight = 1.0
    with pytest.raises(ConfigError, match="grounding_weight.*needs config.env"):
        validate(config)


def test_grounding_layer_reads_the_stream_the_expert_attends_to(config, pool):
    policy = Policy(config, loading.make_tokenizer(config.policy.tokenizer).vocab_size)
    batch = {k: jnp.asarray(v) for k, v in pool.items()}
    params = policy.init(jax.random.key(0), {k: batch[k][:1] for k in ("images", "tokens", "token_mask")})
    cache = policy.encode_prefix(params, batch)
    final, _ = policy.prefix_hidden(params, batch, policy.dims.depth)
    np.testing.assert_allclose(final, cache.out, atol=1e-6)
    # The keys of layer l are a projection of the stream entering block l: layer 0 is the embedding.
    embedded, _ = policy.model.apply({"params": params}, batch, method=lambda m, o: m.vlm.embed_prefix(o))
    first, _ = policy.prefix_hidden(params, batch, 0)
    np.testing.assert_allclose(first, embedded, atol=1e-6)

    head = grounding.GroundingHead((8,), 13)
    head_params = head.init(jax.random.key(1), jnp.zeros((1, policy.dims.width)))["params"]
    grads = jax.grad(lambda p: grounding.grounding_loss(policy, head, p, head_params, batch, layer=0)[0])(params)
    vlm = grads["vlm"]
    assert float(optax.tree.norm(vlm["vit"])) > 0 and float(optax.tree.norm(vlm["embed"])) > 0
    for name in [k for k in vlm if k.startswith("blocks_")] + ["final_norm"]:
        assert float(optax.tree.norm(vlm[name])) == 0, name
    with pytest.raises(ValueError, match="grounding_layer"):
        grounding.grounding_loss(policy, head, params, head_params, batch, layer=policy.dims.depth + 1)


def _perceiving_policy(config, layer: int):
    config = config.copy_and_resolve_references()
    config.policy.perception_dim = 13
    config.sft.grounding_layer = layer
    config.sft.grounding_hidden = (16,)
    return Policy(config, loading.make_tokenizer(config.policy.tokenizer).vocab_size)


@pytest.mark.slow
def test_perception_head_learns_from_grounding_alone_and_steers_the_expert(config, pool):
    layer = 0
    policy = _perceiving_policy(config, layer)
    batch = {k: jnp.asarray(v) for k, v in pool.items()}
    obs = {k: batch[k] for k in ("images", "image_mask", "tokens", "token_mask")}
    params = policy.init(jax.random.key(0), {k: v[:1] for k, v in obs.items()})
    leaves, treedef = jax.tree.flatten(params)   # away from init: zero-init adaRMS would hide the expert's use
    params = treedef.unflatten([x + 0.2 * jax.random.normal(jax.random.key(i), x.shape) for i, x in enumerate(leaves)])
    assert set(params["vlm"]["perception"]) == {"dense_0", "out"}

    # The prediction is the head applied to the pooled, RMS-normalized stream entering block `layer`.
    head = grounding.GroundingHead((16,), 13)
    for read_layer, pol in ((layer, policy), (policy.dims.depth, _perceiving_policy(config, -1))):
        hidden, mask = policy.prefix_hidden(params, obs, read_layer)
        pooled = np.asarray(policy_lib.masked_mean(hidden, mask))
        pooled = pooled / np.sqrt(np.mean(pooled ** 2, axis=-1, keepdims=True) + 1e-6)
        expected = head.apply({"params": params["vlm"]["perception"]}, jnp.asarray(pooled))
        np.testing.assert_allclose(pol.perceive(params, obs), expected, atol=1e-5)

    norm = lambda t: float(optax.tree.norm(t))  # noqa: E731
    g_ground = jax.grad(lambda p: grounding.grounding_loss(policy, None, p, {}, batch)[0])(params)
    assert norm(g_ground["vlm"]["perception"]) > 0 and norm(g_ground["action_expert"]) == 0
    demo = dict(obs, actions=jax.random.normal(jax.random.key(3), (len(batch["targets"]), policy.dims.chunk_size, 7)))
    g_flow = jax.grad(lambda p: policy.flow_matching_loss(p, demo, jax.random.key(4))[0])(params)
    assert norm(g_flow["vlm"]["perception"]) == 0    # the expert reads a stop-gradient prediction
    assert norm(g_flow["action_expert"]["percept_in"]) > 0

    # The expert's velocity follows the prediction: shift the head's output and the actions change.
    x = jax.random.normal(jax.random.key(5), (len(batch["targets"]), policy.dims.chunk_size, 7))
    t = jnp.full((len(batch["targets"]),), 0.5)
    shifted = jax.tree.map(lambda a: a, params)
    shifted["vlm"]["perception"]["out"]["bias"] = params["vlm"]["perception"]["out"]["bias"] + 1.0
    v0 = policy.denoise(params, policy.encode_prefix(params, obs), x, t)
    v1 = policy.denoise(shifted, policy.encode_prefix(shifted, obs), x, t)
    assert float(jnp.max(jnp.abs(v1 - v0))) > 1e-3
    # A diagnostic's replacement of the prediction acts exactly like a head that predicts it.
    np.testing.assert_allclose(policy.sample_actions(params, obs, jax.random.key(7), percept_fn=lambda p: p + 1.0),
                               policy.sample_actions(shifted, obs, jax.random.key(7)), rtol=1e-4, atol=1e-4)
    # Teacher forcing: a batch 'percept' is read exactly as a head that predicts it would be.
    constant = jax.tree.map(lambda a: a, params)
    constant["vlm"]["perception"]["out"] = {"kernel": jnp.zeros_like(params["vlm"]["perception"]["out"]["kernel"]),
                                             "bias": jnp.linspace(-1.0, 1.0, 13)}
    given = dict(demo, percept=jnp.broadcast_to(jnp.linspace(-1.0, 1.0, 13), (len(batch["targets"]), 13)))
    np.testing.assert_allclose(policy.flow_matching_loss(params, given, jax.random.key(4))[0],
                               policy.flow_matching_loss(constant, demo, jax.random.key(4))[0], rtol=1e-5)
    assert abs(float(policy.flow_matching_loss(params, given, jax.random.key(4))[0])
               - float(policy.flow_matching_loss(params, demo, jax.random.key(4))[0])) > 1e-4
    # ... and the uncached reference path (joint attention) agrees with the cached one.
    cached = policy.sample_actions(params, obs, jax.random.key(6))
    joint = policy.sample_actions(params, obs, jax.random.key(6), use_cache=False)
    np.testing.assert_allclose(cached, joint, rtol=1e-4, atol=1e-4)


def test_perception_needs_grounding_and_the_simulator_target_count(dataset, tmp_path):  # noqa: F811
    config = _config(dataset)
    config.policy.perception_dim = 13
    config.sft.grounding_weight = 0.0
    with pytest.raises(ConfigError, match="perception_dim.*grounding_weight > 0"):
        validate(config)
    config.sft.grounding_weight = 1.0
    config.policy.perception_dim = 14
    with pytest.raises(ValueError, match=r"perception_dim=14: must be in \[4, 13\]"):
        _run(config, tmp_path, _StopAfter(10 ** 9))
    config.sft.perception_teacher = True
    with pytest.raises(ConfigError, match="perception_teacher.*perception_dim=4"):
        validate(config)
    config.policy.perception_dim = 4
    with pytest.raises(ConfigError, match="perception_teacher.*privileged_state=True"):
        validate(config)


def test_teacher_percept_is_the_privileged_positions_in_decimetres():
    raw = np.arange(2 * 11, dtype=np.float32).reshape(2, 11) / 100.0
    batch = {"images": np.zeros((2, 2, 4, 4, 3), np.uint8), "state": raw, "raw_state": raw}
    out = sft.model_batch(batch, use_state=False, perception_teacher=True)
    assert "state" not in out
    np.testing.assert_allclose(out["percept"], raw[:, 7:11] * grounding.POSITION_SCALE, rtol=1e-6)
    assert "percept" not in sft.model_batch(batch, use_state=False)


def test_xy_errors_are_distances_in_cm():
    err = np.zeros((2, 13), np.float32)
    err[0, :4] = [0.3, 0.4, 0.0, -0.6]        # decimetres (POSITION_SCALE 10): 5 cm and 6 cm
    err[1, 4:] = 1.0                          # the other targets do not count
    np.testing.assert_allclose(np.asarray(grounding.xy_errors_cm(jnp.asarray(err))), [[5.0, 6.0], [0.0, 0.0]],
                               atol=1e-5)


@pytest.mark.slow
def test_grounding_eval_reads_the_trained_head(dataset, tmp_path):  # noqa: F811
    config = _config(dataset)
    pipeline.mark_done(tmp_path, "sft", _run(config, tmp_path, _StopAfter(10 ** 9)), 0.0)
    args = ["--config=configs/tabletop.py:smoke", f"--workdir={tmp_path}", "--scenes=8",
            f"--out={tmp_path / 'grounding.json'}"]
    assert grounding_eval.main(args + ["--episodes=4"]) == 0
    out = json.loads((tmp_path / "grounding.json").read_text())

    # The same training scenes through the training loss, with the head and parameters SFT saved.
    tok = loading.make_tokenizer(config.policy.tokenizer)
    pool = scene_pool.make_scene_pool(config, tok, config.sft.grounding_scenes, jax.random.key(config.seed + 3),
                                      grounding.POSITION_SCALE)
    pool.pop("state")
    state, _ = checkpoints.load_params(tmp_path / "sft" / sft.CKPT_NAME, item="train_state")
    policy = loading.load_policy(tmp_path / "sft" / sft.CKPT_NAME, config)[0]
    head = grounding.GroundingHead(tuple(config.sft.grounding_hidden), 13)
    _, metrics = grounding.grounding_loss(policy, head, state["params"], state["head_params"],
                                          {k: v[:8] for k, v in pool.items()}, config.sft.grounding_layer)
    np.testing.assert_allclose(out["params"]["training_scenes"]["target"],
                               float(metrics["grounding_target_err_cm"]), rtol=1e-4)
    assert out["ema_params"]["training_scenes"]["target"] != out["params"]["training_scenes"]["target"]
    # the baseline: always answering the pool's mean instructed-object position
    xy = pool["targets"][:, :2] / grounding.POSITION_SCALE
    expected = 100 * np.linalg.norm(xy[:8] - xy.mean(0), axis=1).mean()
    np.testing.assert_allclose(out["mean_position_cm"]["training_scenes"]["target"], expected, rtol=1e-4)
    assert set(out["params"]) == {"training_scenes", "new_scenes"}
    assert out["params"]["new_scenes"]["target"] != out["params"]["training_scenes"]["target"]

    # --episodes: the evaluate stage's episodes (same key, same policy), each with its first-frame error
    env = tabletop_env.make_env(config)
    fn = policy_lib.make_env_policy_fn(policy, tok, env.instructions, config.data.max_text_len)
    res = evaluation.evaluate(env, fn, state["ema_params"], evaluate.evaluation_key(config), 4)
    assert out["outcomes"]["episodes"] == 4
    assert out["outcomes"]["success_rate"] == res["success_rate"]
    # The first-frame errors, read here through the scene-pool path instead of the tool's rollout.
    task_ids = jnp.asarray(evaluation.episode_task_ids(env.num_tasks, 4))
    states, _ = evaluation.reset_episodes(env, evaluate.evaluation_key(config), task_ids)
    first = scene_pool.pool_from_states(config, tok, env, states, grounding.POSITION_SCALE)
    first.pop("state")
    pred = grounding.predict_targets(policy, head, state["ema_params"], state["head_params"], first,
                                     config.sft.grounding_layer)
    first_err = np.asarray(grounding.xy_errors_cm(grounding.prediction_error(pred, first["targets"])))[:, 0]
    success = np.asarray(res["successes"], bool)
    for kind, rows in (("successes", success), ("failures", ~success)):
        expected = float(first_err[rows].mean()) if rows.any() else None
        assert (out["outcomes"][f"error_cm_{kind}"] is None) == (expected is None)
        if expected is not None:
            assert out["outcomes"][f"error_cm_{kind}"] == pytest.approx(expected, rel=1e-4)
    # Along the episodes: chunk 0 is the first frame; episodes that end stop being counted.
    chunks = out["outcomes"]["error_by_chunk"]
    assert len(chunks) == -(-env.max_horizon // config.chunk_size) and chunks[0]["running"] == 4
    for kind in ("successes", "failures"):
        assert chunks[0][f"error_cm_{kind}"] == out["outcomes"][f"error_cm_{kind}"]
    assert all(a["running"] >= b["running"] for a, b in zip(chunks, chunks[1:]))
    assert sum(q["episodes"] for q in out["outcomes"]["by_error_quartile"]) == 4
    by_object = out["outcomes"]["by_object"]
    assert set(by_object) <= {"red cube", "green cylinder", "blue block"}
    assert sum(o["episodes"] for o in by_object.values()) == 4
    assert sum(o["episodes"] * o["success_rate"] for o in by_object.values()) == pytest.approx(4 * res["success_rate"])

    with pytest.raises(SystemExit):
        grounding_eval.main(args + ["--config.sft.grounding_weight=0"])


def test_outcome_table_by_hand():
    errors = np.arange(1.0, 9.0)
    success = np.array([1, 1, 1, 0, 1, 0, 0, 0], bool)
    t = grounding_eval.outcome_table(errors, success)
    assert t["episodes"] == 8 and t["success_rate"] == 0.5
    assert t["error_cm_successes"] == pytest.approx(2.75) and t["error_cm_failures"] == pytest.approx(6.25)
    assert [q["success_rate"] for q in t["by_error_quartile"]] == [1.0, 0.5, 0.5, 0.0]
    assert [q["episodes"] for q in t["by_error_quartile"]] == [2, 2, 2, 2]
    assert t["by_error_quartile"][0]["error_cm"] == [1.0, 2.75]
