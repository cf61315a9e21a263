"""The real-robot data path (configs/bridge.py, vlambpo_jax/rl/offline.py): branch roots from logged
RLDS episodes, offline action errors, and the offline evaluate + report stages without a simulator."""
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import bridge
from tests.helpers.fakes import RecordingWriter
from vlambpo_jax import loading, pipeline
from vlambpo_jax.config_checks import ConfigError, validate
from vlambpo_jax.data import rlds_reader
from vlambpo_jax.data.tokenizer import ByteTokenizer
from vlambpo_jax.rl import offline
from vlambpo_jax.stages import common, logged_roots
from vlambpo_jax.stages import mbpo as mbpo_stage
from vlambpo_jax.train.preemption import NoPreemption


def _config(chunk_size=3):
    config = bridge.get_config("smoke")
    with config.unlocked():
        config.chunk_size = chunk_size  # fixture episodes have 5-8 steps: several roots per episode
        config.log.progress = "off"
        config.log.tensorboard = False
    return config


def _ctx(config, workdir, stage):
    (Path(workdir) / stage).mkdir(parents=True, exist_ok=True)
    return pipeline.StageContext(config, workdir, stage, RecordingWriter(), NoPreemption())


def _episodes(config, split):
    loader = rlds_reader.RLDSLoader(config, split=split, process_index=0, process_count=1)
    return list(loader.episodes(all_hosts=True))


def test_logged_roots_are_the_logged_frames(tmp_path):
    config = _config(chunk_size=3)
    summary = logged_roots.run(_ctx(config, tmp_path, "logged_roots"))
    roots = dict(np.load(summary["roots"]))
    held = dict(np.load(summary["heldout"]))

    train = _episodes(config, "train")
    expected = [(ep, t) for ep in train for t in range(0, ep["length"], 3)]
    assert summary["num_roots"] == len(expected) == len(roots["t"])
    assert [ep["length"] for ep in train] == [8, 7, 8, 6]  # the first zero action of #0 is dropped
    for i, (ep, t) in enumerate(expected):
        np.testing.assert_array_equal(roots["images"][i], ep["images"][t])
        assert roots["t"][i] == t and roots["episode_id"][i] == ep["index"]
        assert roots["episode_success"][i] == ep["success"]
        ids, mask = ByteTokenizer().encode(ep["instruction"][t], config.wm.max_text_len)
        np.testing.assert_array_equal(roots["wm_tokens"][i], ids)
        np.testing.assert_array_equal(roots["wm_token_mask"][i], mask)
    # successes and failures are both roots (fixture train #3 failed)
    assert set(roots["episode_success"].tolist()) == {True, False}
    for key in offline.ROOT_KEYS:  # what mbpo.branch_sampler reads
        assert key in roots
    assert roots["images"].shape[1:] == (2, config.image_size, config.image_size, 3)

    val = _episodes(config, "val")
    assert summary["heldout_episodes"] == len(val) and summary["heldout_steps"] == sum(e["length"] for e in val)
    row = 0
    for ep in val:
        for t in range(ep["length"]):
            np.testing.assert_array_equal(held["images"][row], ep["images"][t])
            n = min(3, ep["length"] - t)
            np.testing.assert_allclose(held["actions"][row, :n], ep["action"][t:t + n])  # dataset units
            assert held["action_mask"][row].tolist() == [True] * n + [False] * (3 - n)
            row += 1
    # the held-out roots are the chunk-aligned held-out steps
    assert offline.roots_of(held, 3)["t"].tolist() == [t for ep in val for t in range(0, ep["length"], 3)]


def test_action_errors_zero_for_logged_actions_and_by_hand():
    rng = np.random.default_rng(0)
    n, k = 11, 4
    samples = {"actions": rng.normal(size=(n, k, 7)).astype(np.float32),
               "action_mask": np.ones((n, k), bool), "t": np.arange(n, dtype=np.int32),
               "images": np.zeros((n, 1), np.uint8)}
    samples["action_mask"][-3:, 2:] = False
    samples["actions"][..., 6] = rng.integers(0, 2, (n, k))
    oracle = offline.action_errors(lambda b, key: samples["actions"][b["index"]], samples,
                                   jax.random.PRNGKey(0), batch_size=4)
    assert oracle["action_mse"] == 0 and oracle["action_l1"] == 0 and oracle["gripper_accuracy"] == 1
    assert oracle["samples"] == n and oracle["action_steps"] == n * k - 6

    const = np.full((7,), 0.25, np.float32)
    out = offline.action_errors(lambda b, key: np.broadcast_to(const, b["actions"].shape), samples,
                                jax.random.PRNGKey(0), batch_size=4)
    err = (samples["actions"] - const)[samples["action_mask"]]          # [valid steps, 7]
    assert out["action_mse"] == pytest.approx(np.mean(err ** 2), rel=1e-6)
    assert out["action_l1"] == pytest.approx(np.mean(np.abs(err)), rel=1e-6)
    np.testing.assert_allclose(out["action_l1_per_dim"], np.abs(err).mean(0), rtol=1e-6)
    assert out["first_action_mse"] == pytest.approx(np.mean((samples["actions"][:, 0] - const) ** 2), rel=1e-6)
    assert out["gripper_accuracy"] == pytest.approx(np.mean(err[:, 6] + 0.25 <= 0.5))
    # stride: only steps with t % 2 == 0
    assert offline.action_errors(lambda b, key: samples["actions"][b["index"]], samples,
                                 jax.random.PRNGKey(0), batch_size=4, stride=2)["samples"] == 6


def test_bridge_config_has_no_simulator_stages():
    config = bridge.get_config("smoke")
    assert "env" not in config and "logged_roots" in config.stages and "collect" not in config.stages
    validate(config)
    with config.unlocked():
        config.stages = ("sft", "collect")
    with pytest.raises(ConfigError, match="needs a simulator"):
        validate(config)


def _save_policy(config, directory):
    """A randomly initialised policy checkpoint in the SFT format (no training: fast)."""
    from vlambpo_jax.data import tokenizer as tok_lib
    from vlambpo_jax.models import policy as policy_lib
    from vlambpo_jax.train.checkpoints import Checkpointer

    loader = rlds_reader.RLDSLoader(config, process_index=0, process_count=1)
    stats = loader.norm_stats(str(Path(directory).parent / "norm_stats"))
    tokenizer = loading.make_tokenizer(config.policy.tokenizer)
    policy = policy_lib.Policy(config, vocab_size=tokenizer.vocab_size,
                               unnormalize=loading.action_unnormalizer(stats, "percentile"))
    s = config.image_size
    obs = {"images": jnp.zeros((1, 2, s, s, 3), jnp.uint8),
           "tokens": jnp.zeros((1, config.data.max_text_len), jnp.int32),
           "token_mask": jnp.ones((1, config.data.max_text_len), bool)}
    params = policy.init(jax.random.key(0), obs)
    ckpt = Checkpointer(directory, async_save=False)
    ckpt.save(0, {"step": jnp.zeros((), jnp.int32)}, params, {
        "config": json.loads(config.to_json_best_effort()), "norm_stats": stats.to_dict(),
        "norm_mode": config.data.norm_mode, "tokenizer": tok_lib.tokenizer_assets(tokenizer),
        "vocab_size": int(tokenizer.vocab_size)}, force=True)
    ckpt.close()
    return stats


def _save_world_model(config, directory, stats):
    from vlambpo_jax.models.world_model import WorldModel
    from vlambpo_jax.train.checkpoints import Checkpointer

    wm = WorldModel(config)
    params = wm.init(jax.random.key(1), stats["action"].min, stats["action"].max)
    ckpt = Checkpointer(directory, async_save=False)
    ckpt.save(0, {"step": jnp.zeros((), jnp.int32)}, params,
              {"config": json.loads(config.to_json_best_effort()), "norm_stats": stats.to_dict()}, force=True)
    ckpt.close()


def test_offline_evaluate_and_report_without_simulator(tmp_path):
    """logged_roots -> evaluate (offline) -> report on the fixture, with untrained sft / mbpo / world
    model checkpoints standing in for the trained ones (the full smoke run trains them)."""
    config = _config(chunk_size=3)
    with config.unlocked():
        config.stages = ("logged_roots", "evaluate", "report")
        config.eval.imagined_branches = 4
        config.eval.batch_size = 4
        config.report.num_videos = 1
        config.report.video_chunks = 2
    stats = _save_policy(config, tmp_path / "sft" / "policy")
    _save_world_model(config, tmp_path / "wm_finetune" / "world_model", stats)
    (tmp_path / "mbpo").mkdir()
    pipeline.mark_done(tmp_path, "sft", {"checkpoint_dir": str(tmp_path / "sft" / "policy")}, 1.0)
    pipeline.mark_done(tmp_path, "mbpo", {"checkpoint_dir": str(tmp_path / "sft" / "policy"), "world": "model"},
                       1.0)
    pipeline.mark_done(tmp_path, "wm_finetune", {"eval": {"psnr_head": 12.0, "reward_acc": 0.5}}, 1.0)

    results = pipeline.run_stages(config, tmp_path, make_writer=lambda stage: RecordingWriter(),
                                  preemption=NoPreemption(), log=lambda s: None)
    assert common.roots_stage(_ctx(config, tmp_path, "mbpo")) == "logged_roots"
    out = json.loads((tmp_path / "evaluate" / "results.json").read_text())
    assert out["mode"] == "offline" and set(out["policies"]) == {"sft", "mbpo"}
    for r in out["policies"].values():
        for key in ("action_mse", "action_l1", "first_action_mse", "gripper_accuracy",
                    "imagined_success_rate", "imagined_ci95", "imagined_branches"):
            assert key in r
        assert r["samples"] == out["heldout"]["steps"] == 12 and r["imagined_branches"] == 4
        assert 0 <= r["imagined_success_rate"] <= 1 and r["action_mse"] > 0
    # the same checkpoint under two names gets the same numbers (same keys, same roots)
    assert out["policies"]["sft"] == out["policies"]["mbpo"]
    assert out["world_model"]["wm_finetune"] == {"psnr_head": 12.0, "reward_acc": 0.5}
    assert "psnr_head" in out["world_model"]["heldout_split"]
    assert "mean_action" in out["baselines"]
    assert results["evaluate"]["sft_action_mse"] == out["policies"]["sft"]["action_mse"]

    report = (tmp_path / "report" / "report.md").read_text()
    assert "Offline evaluation" in report and "| sft |" in report and "| mbpo |" in report
    assert "Real robot steps used: 29 logged steps" in report
    assert (tmp_path / "report" / "imagined_vs_logged_0.gif").exists()


def test_adaptive_branch_length_on_logged_episodes(tmp_path):
    """rl.branch_chunks = -1 without a simulator: the model error is measured on held-out logged
    sequences (fixture episodes of 5-8 steps, chunk 3: at most 2 chunks), and the choice is saved and
    reused when the stage resumes."""
    config = _config(chunk_size=3)
    with config.unlocked():
        config.stages = ("logged_roots",)
        config.rl.branch_chunks = -1
        config.rl.adaptive_sequences = 3
    validate(config)
    stats = _save_policy(config, tmp_path / "sft" / "policy")
    _save_world_model(config, tmp_path / "wm_finetune" / "world_model", stats)
    pipeline.run_stages(config, tmp_path, make_writer=lambda stage: RecordingWriter(),
                        preemption=NoPreemption(), log=lambda s: None)
    policy, params, tokenizer, _ = loading.load_policy(tmp_path / "sft" / "policy", config)
    wm, wm_params, _ = loading.load_world_model(tmp_path / "wm_finetune" / "world_model", config)
    ctx = _ctx(config, tmp_path, "mbpo")
    choice = mbpo_stage.adaptive_branch_chunks(ctx, policy, params, tokenizer, wm, wm_params)
    assert len(choice["tv_by_chunks"]) == 2 and 1 <= choice["branch_chunks"] <= 2
    assert all(0 <= tv <= 1 for tv in choice["tv_by_chunks"]) and choice["env_steps"] == 0
    assert choice["sequences"] >= 1
    saved = json.loads((tmp_path / "mbpo" / "branch_length.json").read_text())
    assert saved == choice and mbpo_stage.adaptive_branch_chunks(ctx, None, None, None, None, None) == choice
