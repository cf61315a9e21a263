"""The wm_bc baseline: only successful imagined branches are cloned, and the stage writes a policy
checkpoint the evaluate stage can load."""
import json

import jax
import jax.numpy as jnp
import numpy as np

from configs import tabletop
from tests.helpers.fakes import RecordingWriter
from tests.helpers.serve_checkpoint import make_checkpoint
from vlambpo_jax import loading, pipeline
from vlambpo_jax.data.tokenizer import ByteTokenizer
from vlambpo_jax.rl import wm_bc
from vlambpo_jax.rl.rollout import ModelWorld
from vlambpo_jax.stages import common
from vlambpo_jax.stages import wm_bc as wm_bc_stage
from vlambpo_jax.stages.sft import CKPT_NAME as SFT_CKPT
from vlambpo_jax.stages.wm_common import CKPT_WM
from vlambpo_jax.train.preemption import NoPreemption


def test_filter_keeps_only_successful_branches_up_to_their_success():
    t, b = 4, 5
    ids = np.arange(t)[:, None] * 10 + np.arange(b)[None, :]          # pair id = 10 * chunk + branch
    terminal = np.zeros((t, b), bool)
    terminal[1, 0] = True    # branch 0: success at chunk 1
    terminal[0, 2] = True    # branch 2: success at chunk 0
    terminal[3, 3] = True    # branch 3: success at chunk 3, beyond its budget of 3 chunks
    terminal[2, 4] = True    # branch 4: success at chunk 2 (its mask is not latched: all True)
    terminal[3, 4] = True    #   ... and a later one, which must not add chunk 3
    mask = np.ones((t, b), bool)
    mask[2:, 0] = False
    mask[1:, 2] = False
    actions = np.broadcast_to(ids[..., None, None].astype(np.float32), (t, b, 2, 7))
    obs = {"images": ids, "tokens": -ids}
    pairs, success = wm_bc.successful_pairs(obs, actions, terminal, mask, np.array([4, 4, 4, 3, 4]))
    np.testing.assert_array_equal(success, [True, False, True, False, True])
    np.testing.assert_array_equal(pairs["images"], [0, 10, 2, 4, 14, 24])
    np.testing.assert_array_equal(pairs["tokens"], -pairs["images"])
    np.testing.assert_array_equal(pairs["actions"][:, 0, 0], pairs["images"])
    # without budgets branch 3's success counts
    pairs, success = wm_bc.successful_pairs(obs, actions, terminal, mask)
    np.testing.assert_array_equal(success, [True, False, True, True, True])
    np.testing.assert_array_equal(pairs["images"], [0, 10, 2, 3, 13, 23, 33, 4, 14, 24])
    # nothing succeeds -> an empty dataset with the right trailing shapes
    pairs, success = wm_bc.successful_pairs(obs, actions, np.zeros((t, b), bool), mask)
    assert not success.any() and pairs["actions"].shape == (0, 2, 7) and pairs["images"].shape == (0,)


def test_chunk_budgets_follow_task_horizons():
    c = tabletop.get_config("smoke,tasks=all")
    roots = {"task_id": np.array([0, 1, 0]), "t": np.array([0, 0, 40])}   # pick 50, push 80
    np.testing.assert_array_equal(wm_bc.chunk_budgets(c, roots, np.array([0, 1, 2, 2]), 8), [5, 8, 1, 1])
    assert common.episode_chunks(c, roots) == 8


class MarkerWorldModel:
    """Stands in for the loaded world model behind ModelWorld. Head-view pixels: [0, 0, R] = 255 marks a
    root that can succeed, predict() counts chunks in [0, 1, R], reward() says P(Yes) = 0.9 from the
    2nd chunk on for marked roots, else 0.1."""

    def predict(self, params, images, tokens, token_mask, actions, key):
        assert set(params) == {"marker"}     # the loaded world-model params reach the world
        return images.at[:, 0, 0, 1, 0].add(1)

    def reward(self, params, images, tokens, token_mask):
        head = images[:, 0]
        return jnp.where((head[:, 0, 0, 0] == 255) & (head[:, 0, 1, 0] >= 2), 0.9, 0.1)


WM_PARAMS = {"marker": np.ones((), np.float32)}
WORLD = ModelWorld(MarkerWorldModel(), threshold=0.5)


def _config(**rl):
    c = tabletop.get_config("smoke,tasks=all")  # the task ids and horizons below are the four tasks'
    # every test runs 2 BC steps on 8 branches of 8 chunks, so they share compiled programs
    c.rl.update({**dict(bc_rounds=1, bc_branches=8, bc_steps=2, bc_batch_size=4, reward_threshold=0.5), **rl})
    c.checkpoint.async_save = False
    c.log.progress = "off"
    c.log.every_steps = 1
    return c


def _roots(c, tokenizer, marked):
    n = len(marked)
    rng = np.random.default_rng(0)
    s = c.image_size
    images = rng.integers(0, 200, (n, 2, s, s, 3)).astype(np.uint8)
    images[:, 0, 0, 0, 0] = np.where(marked, 255, 0)
    images[:, 0, 0, 1, 0] = 0
    texts = ["pick up the red cube"] * n
    tok, mask = tokenizer.encode_batch(texts, c.data.max_text_len)
    wtok, wmask = ByteTokenizer().encode_batch(texts, c.wm.max_text_len)
    return {"images": images, "tokens": tok, "token_mask": mask, "wm_tokens": wtok, "wm_token_mask": wmask,
            "task_id": np.zeros(n, np.int32), "t": np.zeros(n, np.int32)}


def _ctx(c, workdir, writer=None):
    ctx = pipeline.StageContext(c, workdir, "wm_bc", writer or RecordingWriter(), NoPreemption())
    ctx.stage_dir.mkdir(parents=True, exist_ok=True)
    return ctx


def _same(a, b):
    return all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_bc_on_stub_world_clones_only_successes_and_saves_a_loadable_policy(tmp_path):
    c = _config(bc_rounds=2, bc_steps=1)
    sft_dir = make_checkpoint(tmp_path / "sft" / SFT_CKPT)
    policy, params, tokenizer, assets = loading.load_policy(sft_dir, c)
    marked = np.array([True, False, False, True, False, False])
    roots = _roots(c, tokenizer, marked)
    writer = RecordingWriter()
    ctx = _ctx(c, tmp_path, writer)
    summary = wm_bc_stage.train(ctx, policy, params, assets, WORLD, WM_PARAMS, roots)

    assert summary["steps"] == 2 and len(summary["rounds"]) == 2 and summary["branch_chunks"] == 8
    size = 0
    for r, row in enumerate(summary["rounds"]):
        with np.load(tmp_path / "wm_bc" / "data" / f"round_{r:03d}.npz") as f:
            images, actions = f["pair_images"], f["pair_actions"]
        # only marked roots' pairs, each successful branch contributing chunks 0 and 1
        assert len(images) == row["kept_pairs"] == 2 * row["kept_branches"]
        assert np.all(images[:, 0, 0, 0, 0] == 255)
        np.testing.assert_array_equal(images[:, 0, 0, 1, 0], np.tile([0, 1], row["kept_branches"]))
        assert actions.shape[1:] == (c.chunk_size, c.action_dim) and np.isfinite(actions).all()
        assert 0 < row["kept_branches"] < row["branches"]
        assert row["imagined_success"] == row["kept_branches"] / row["branches"]
        size += len(images)
        assert row["dataset_size"] == size and np.isfinite(row["bc_loss"])
    assert any("round/imagined_success" in m for _, m in writer.rows)

    # the checkpoint is the sft format: load_policy reads it, and evaluate finds it by stage name
    pipeline.mark_done(tmp_path, "wm_bc", summary, 0.0)
    assert common.checkpoint_of(ctx, "wm_bc") == summary["checkpoint_dir"]
    _, trained, _, saved_assets = loading.load_policy(summary["checkpoint_dir"], c)
    assert not _same(trained, params)                       # BC steps changed the policy
    assert saved_assets["norm_stats"] == assets["norm_stats"]
    assert json.loads((tmp_path / "wm_bc" / "rounds.json").read_text()) == summary["rounds"]


def test_no_success_means_no_update(tmp_path):
    c = _config()
    sft_dir = make_checkpoint(tmp_path / "sft" / SFT_CKPT)
    policy, params, tokenizer, assets = loading.load_policy(sft_dir, c)
    roots = _roots(c, tokenizer, np.zeros(4, bool))
    summary = wm_bc_stage.train(_ctx(c, tmp_path), policy, params, assets, WORLD, WM_PARAMS, roots)
    assert summary["rounds"][0]["kept_branches"] == 0 and summary["dataset_size"] == 0
    assert summary["rounds"][0]["bc_loss"] is None
    _, saved, _, _ = loading.load_policy(summary["checkpoint_dir"], c)
    assert _same(saved, params)


def test_stage_run_loads_sft_collect_and_world_model(tmp_path, monkeypatch):
    """run(ctx): the sft checkpoint, the collect roots and the wm_finetune world model (a stub with a
    known reward) go in; the threshold on P(Yes) decides success; a loadable policy comes out."""
    c = _config()
    c.env.horizons.pick = 20                               # 2 chunks per branch
    sft_dir = make_checkpoint(tmp_path / "sft" / SFT_CKPT)
    _, params, tokenizer, _ = loading.load_policy(sft_dir, c)
    loaded = []

    def load_world_model(directory, config):
        loaded.append(directory)
        return MarkerWorldModel(), WM_PARAMS, {}

    monkeypatch.setattr(loading, "load_world_model", load_world_model)
    (tmp_path / "collect").mkdir()
    roots_path = tmp_path / "collect" / "roots.npz"
    roots = _roots(c, tokenizer, np.array([True, False] * 4))
    roots["t"][2::4] = 10                     # marked, but not episode starts: never drawn
    roots["images"][2::4, 0, 0, 2, 0] = 7
    np.savez(roots_path, **roots)
    for stage, summary in (("sft", {"checkpoint_dir": str(sft_dir)}), ("collect", {"roots": str(roots_path)}),
                           ("wm_finetune", {})):
        (tmp_path / stage).mkdir(exist_ok=True)
        pipeline.mark_done(tmp_path, stage, summary, 0.0)
    summary = wm_bc_stage.run(_ctx(c, tmp_path))
    assert loaded == [tmp_path / "wm_finetune" / CKPT_WM]
    row = summary["rounds"][0]
    assert summary["branch_chunks"] == 8          # the longest task horizon (80) / k
    with np.load(tmp_path / "wm_bc" / "data" / "round_000.npz") as f:
        images = f["pair_images"]
    # marked roots (pick, horizon 20 = 2 chunks) succeed at their 2nd chunk: 2 pairs each
    assert row["kept_pairs"] == 2 * row["kept_branches"] > 0 and row["kept_branches"] < row["branches"]
    np.testing.assert_array_equal(images[:, 0, 0, 1, 0], np.tile([0, 1], row["kept_branches"]))
    assert np.all(images[:, 0, 0, 0, 0] == 255) and not np.any(images[:, 0, 0, 2, 0] == 7)
    assert np.isfinite(summary["final_loss"])
    _, trained, _, _ = loading.load_policy(summary["checkpoint_dir"], c)
    assert not _same(trained, params)


class _StopAfterFirstStep:
    """A termination signal that arrives once the first BC step has run (round 0's data is saved)."""

    def __init__(self, stage_dir):
        self.stage_dir = stage_dir

    @property
    def requested(self):
        return (self.stage_dir / "data" / "round_000.npz").exists()


def test_resume_between_rounds_is_identical(tmp_path):
    c = _config(bc_rounds=2, bc_steps=1)
    sft_dir = make_checkpoint(tmp_path / "sft" / SFT_CKPT)
    policy, params, tokenizer, assets = loading.load_policy(sft_dir, c)
    roots = _roots(c, tokenizer, np.array([True, False, True, False]))
    full = wm_bc_stage.train(_ctx(c, tmp_path / "full"), policy, params, assets, WORLD, WM_PARAMS, roots)
    ctx = pipeline.StageContext(c, tmp_path / "resumed", "wm_bc", RecordingWriter(),
                                _StopAfterFirstStep(tmp_path / "resumed" / "wm_bc"))
    ctx.stage_dir.mkdir(parents=True)
    part = wm_bc_stage.train(ctx, policy, params, assets, WORLD, WM_PARAMS, roots)
    assert part["interrupted"] and part["steps"] == 1 and len(part["rounds"]) == 1
    resumed = wm_bc_stage.train(_ctx(c, tmp_path / "resumed"), policy, params, assets, WORLD, WM_PARAMS, roots)
    assert resumed["steps"] == 2
    assert [r["kept_pairs"] for r in resumed["rounds"]] == [r["kept_pairs"] for r in full["rounds"]]
    _, a, _, _ = loading.load_policy(full["checkpoint_dir"], c)
    _, b, _, _ = loading.load_policy(resumed["checkpoint_dir"], c)
    assert _same(a, b)
