"""wm_pretrain -> wm_finetune on a tiny synthetic RLDS dataset: train, checkpoint, load, predict."""
import json

import jax
import numpy as np
import pytest

from configs import tabletop
from tests.helpers.fakes import RecordingWriter
from vlambpo_jax import loading, pipeline
from vlambpo_jax.data.rlds_writer import write_rlds
from vlambpo_jax.data.synthetic import synthetic_episode
from vlambpo_jax.data.tokenizer import ByteTokenizer
from vlambpo_jax.models import state_probe, wm_training
from vlambpo_jax.stages import wm_common, wm_finetune, wm_pretrain
from vlambpo_jax.tools import wm_eval
from vlambpo_jax.train.preemption import NoPreemption


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    rng = np.random.default_rng(0)
    eps = [synthetic_episode(rng, 14, image_shape=(32, 32, 3), instruction="pick up the red cube",
                             success=bool(i % 2 == 0)) for i in range(4)]
    return write_rlds(tmp_path_factory.mktemp("demos"), iter(eps), dataset_name="toy",
                      image_shape=(32, 32, 3))


def test_pretrain_finetune_load_predict(dataset, tmp_path, capsys):
    c = tabletop.get_config("smoke")
    c.data.builder_dir = str(dataset)
    c.wm.vae.steps = 3
    c.wm.pretrain_steps = 3
    c.wm.finetune_steps = 2
    c.wm.sample_temperature = 1.0  # two barely trained models differ in their samples, not in their means
    c.wm.batch_size = 4
    c.checkpoint.async_save = False
    c.log.progress = "off"
    c.log.every_steps = 1
    summaries = {}
    for stage, fn in (("wm_pretrain", wm_pretrain.run), ("wm_finetune", wm_finetune.run)):
        writer = RecordingWriter()
        ctx = pipeline.StageContext(c, tmp_path, stage, writer, NoPreemption())
        ctx.stage_dir.mkdir(parents=True, exist_ok=True)
        summaries[stage] = fn(ctx)
        pipeline.mark_done(tmp_path, stage, summaries[stage], 0.0)
        assert np.isfinite(summaries[stage]["final_loss"])
        assert any("eval/psnr_head" in m for _, m in writer.rows)
    assert summaries["wm_finetune"]["steps"] == 2
    assert (tmp_path / "wm_finetune" / "samples.png").exists()
    wm, params, assets = loading.load_world_model(tmp_path / "wm_finetune" / wm_common.CKPT_WM)
    # fine-tuning froze the ViT: identical to the pretrained one
    _, pre, _ = loading.load_world_model(tmp_path / "wm_pretrain" / wm_common.CKPT_WM)
    for a, b in zip(jax.tree.leaves(params["net"]["params"]["vit"]), jax.tree.leaves(pre["net"]["params"]["vit"])):
        np.testing.assert_array_equal(a, b)
    assert not all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(params["net"]["params"]["backbone"]),
                                                        jax.tree.leaves(pre["net"]["params"]["backbone"])))
    assert "norm_stats" in assets
    # multi-view consistency: a probe trained on real frames, numbers in the summary and the metrics
    for stage in ("wm_pretrain", "wm_finetune"):
        cons = summaries[stage]["consistency"]
        assert cons["view_decoding"] == c.wm.view_decoding == "independent"
        for k in wm_training.CONSISTENCY_KEYS:
            assert np.isfinite(cons[k]) and cons[k] >= 0, (stage, k, cons)
        assert (tmp_path / stage / wm_common.PROBE_FILE).exists()
    assert any("eval/consistency_pos" in m and "eval/real_consistency_pos" in m for _, m in writer.rows)
    # the same probe and held-out batches evaluate another model (here: the pretrained weights)
    probe = state_probe.load(tmp_path / "wm_finetune" / wm_common.PROBE_FILE)
    ctx = pipeline.StageContext(c, tmp_path, "wm_finetune", RecordingWriter(), NoPreemption())
    _, heldout, _ = wm_common.open_data(ctx, "", c.wm.batch_size, int(c.seed) + 1)  # the stage's
    assert heldout[0]["next_state"].shape == (c.wm.batch_size, 7)
    ev = wm_training.make_evaluator(wm, heldout, jax.random.key(0), probe=probe)
    a, b = ev(params), ev(pre)
    assert set(wm_training.CONSISTENCY_KEYS) <= set(a) and a["real_consistency_pos"] == b["real_consistency_pos"]
    assert a["consistency_pos"] != b["consistency_pos"]
    # the wm_eval CLI recomputes a stage's held-out metrics from its checkpoint, equal to its summary,
    # and refuses a config whose layout differs from the checkpoint's
    args = [f"--config={tabletop.__file__}:smoke", f"--workdir={tmp_path}",
            f"--config.data.builder_dir={dataset}", "--config.wm.sample_temperature=1.0",
            "--config.wm.batch_size=4", f"--out={tmp_path / 'eval.json'}"]
    assert wm_eval.main(args) == 0
    again = json.loads((tmp_path / "eval.json").read_text())
    for k, v in summaries["wm_finetune"]["eval"].items():
        assert again[k] == pytest.approx(v, rel=1e-5, abs=1e-6), k
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        wm_eval.main(args + ["--config.wm.view_decoding=interleaved"])
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(err) == 1 and "wm.view_decoding='independent'" in err[0], err
    # a held-out batch whose next frames equal the current ones: the copy baseline is capped, not inf
    still = [dict(heldout[0], next_images=heldout[0]["images"])]
    c_still = wm_training.make_evaluator(wm, still, jax.random.key(0))(params)
    assert c_still["copy_psnr_head"] == wm_training.PSNR_CAP_DB and np.isfinite(c_still["psnr_head"])
    # the flow loss under another transition's actions: equal where every transition has the same ones
    for view in ("head", "wrist"):
        assert a[f"flow_mse_{view}_other_action"] != a[f"flow_mse_{view}"]
    same = [dict(heldout[0], actions=np.repeat(heldout[0]["actions"][:1], len(heldout[0]["actions"]), 0))]
    c_same = wm_training.make_evaluator(wm, same, jax.random.key(0))(params)
    assert c_same["flow_mse_head_other_action"] == c_same["flow_mse_head"] > 0


def _push_episodes(tmp_path_factory, name, seed):
    """Six 14-step episodes of another instruction ("push the blue block"), the first successful."""
    rng = np.random.default_rng(seed)
    return write_rlds(tmp_path_factory.mktemp(name), iter([
        synthetic_episode(rng, 14, image_shape=(32, 32, 3), instruction="push the blue block", success=i == 0)
        for i in range(6)]), dataset_name=name, image_shape=(32, 32, 3))


def _check_joins_training_only(base, joined, instruction, max_text_len):
    """Held-out batches identical; `instruction` in the joined training batches only."""
    (base_fn, base_heldout), (joined_fn, joined_heldout) = base, joined
    for a, b in zip(base_heldout, joined_heldout, strict=True):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    row = ByteTokenizer().encode_batch([instruction], max_text_len)[0][0]
    seen = lambda fn: any((r == row).all() for step in range(20) for r in fn(step)["tokens"])  # noqa: E731
    assert seen(joined_fn) and not seen(base_fn)


def test_play_data_joins_the_training_split_only(dataset, tmp_path, tmp_path_factory):
    play = _push_episodes(tmp_path_factory, "play", 1)
    c = tabletop.get_config("smoke")
    c.data.builder_dir = str(dataset)
    c.wm.reward_batch_size = 0
    ctx = pipeline.StageContext(c, tmp_path, "wm_pretrain", RecordingWriter(), NoPreemption())
    base = wm_common.open_data(ctx, "", 4, 0)[:2]
    joined = wm_common.open_data(ctx, "", 4, 0, extra_data=(str(play),))[:2]
    _check_joins_training_only(base, joined, "push the blue block", c.wm.max_text_len)


def test_dynamics_replay_adds_the_pretraining_episodes_to_finetuning_training_split_only(dataset, tmp_path,
                                                                                          tmp_path_factory):
    c = tabletop.get_config("smoke")
    c.data.builder_dir = str(dataset)        # the pretraining data ("pick up the red cube")
    c.wm.finetune_data = str(_push_episodes(tmp_path_factory, "rollouts", 2))
    c.wm.reward_batch_size = 0
    c.wm.batch_size = 4
    ctx = pipeline.StageContext(c, tmp_path, "wm_finetune", RecordingWriter(), NoPreemption())
    base_fn, base_heldout, stats = wm_common.finetune_data(ctx, None)
    c.wm.dynamics_replay = True
    joined = wm_common.finetune_data(ctx, stats)[:2]
    _check_joins_training_only((base_fn, base_heldout), joined, "pick up the red cube", c.wm.max_text_len)
    # no collected rollouts: fine-tuning reads the pretraining data itself, and the replay adds nothing
    c.wm.finetune_data = ""
    assert len(wm_common.finetune_data(ctx, stats)[0].pairs) == len(wm_common.open_data(ctx, "", 4, 0, stats)[0].pairs)


def test_balanced_accuracy_by_hand():
    assert wm_training.balanced_accuracy(tp=0, fp=0, fn=0, tn=10) == 1.0       # only No samples, all right
    assert wm_training.balanced_accuracy(tp=0, fp=0, fn=2, tn=8) == 0.5        # 'No' everywhere: 0.8 accuracy
    assert wm_training.balanced_accuracy(tp=3, fp=1, fn=1, tn=5) == (3 / 4 + 5 / 6) / 2


def _episode(index, length, success, rng):
    return {"images": rng.integers(0, 256, (length, 2, 8, 8, 3), dtype=np.uint8),
            "image_mask": np.ones(2, bool), "state_norm": np.zeros((length, 7), np.float32),
            "action_norm": np.zeros((length, 7), np.float32),
            "instruction": np.array([f"task {index}"] * length, object), "length": length,
            "index": index, "success": success}


def test_outcome_reward_labels_say_yes_only_where_the_episode_succeeded():
    """wm.reward_labels='outcome': one Yes frame per successful episode (its last), every other frame
    No, the paper's dropped window and its near-success Yes frames included."""
    from vlambpo_jax.models.world_model import WorldModel
    success = np.array([True] * 12 + [False] * 3)
    to_end = np.array(list(range(12)) + [0, 4, 11])
    yes, valid = WorldModel.reward_labels(success, to_end, "outcome")
    np.testing.assert_array_equal(yes, (to_end == 0) & success)
    assert valid.all()
    yes_p, valid_p = WorldModel.reward_labels(success, to_end)                 # the paper's, for contrast
    np.testing.assert_array_equal(yes_p, success & (to_end < 5))
    np.testing.assert_array_equal(valid_p, ~success | (to_end < 5) | (to_end >= 10))
    rng = np.random.default_rng(0)
    eps = [_episode(i, 30, i % 3 == 0, rng) for i in range(6)]               # episodes 0 and 3 succeed
    ex = wm_common.RewardExamples(eps, size=16, seed=1, max_text_len=8, labels="outcome")
    assert sorted(t for _, t in ex.pools[True]) == [29, 29] and len(ex.pools[False]) == 6 * 30 - 2


def test_reward_examples_are_balanced_labelled_and_deterministic():
    rng = np.random.default_rng(0)
    eps = [_episode(i, 30, i % 3 == 0, rng) for i in range(6)]     # episodes 0 and 3 succeed
    ex = wm_common.RewardExamples(eps, size=16, seed=1, max_text_len=8)
    assert len(ex.pools[True]) == 2 * 5 and len(ex.pools[False]) == 2 * 20 + 4 * 30
    b = ex(7)
    assert b["reward_images"].shape == (16, 2, 8, 8, 3) and b["reward_tokens"].shape == (16, 8)
    assert b["reward_yes"].sum() == 8 and b["reward_valid"].all()
    for img, yes in zip(b["reward_images"], b["reward_yes"]):        # each image's label from its frame
        (e, t), = [(e, t) for e in eps for t in range(30) if np.array_equal(e["images"][t], img)]
        assert yes == (e["success"] and t >= 25) and (yes or not e["success"] or t < 20)
    np.testing.assert_array_equal(ex(7)["reward_images"], b["reward_images"])
    assert not np.array_equal(ex(8)["reward_images"], b["reward_images"])
    assert wm_common.RewardExamples(eps[1:3], 16, 1, 8)(0)["reward_yes"].sum() == 0  # no success: all No
    held = ex.heldout(n_batches=3, per_class=12)                     # 10 Yes + 12 No -> 3 x 7
    assert [h["reward_yes"].shape for h in held] == [(7,)] * 3
    assert sum(int(h["reward_yes"].sum()) for h in held) >= 9
    # the world model reads these in place of the transitions' head frames
    from vlambpo_jax.models.world_model import WorldModel
    r = WorldModel.reward_examples(dict(b, images=np.zeros((4, 2, 8, 8, 3), np.uint8)))
    np.testing.assert_array_equal(r["images"], b["reward_images"])
