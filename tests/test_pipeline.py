"""Stage records (vlambpo_jax/pipeline.py): a copied or moved workdir resumes from its own files."""
import shutil

import pytest

from configs import tabletop
from vlambpo_jax import cli, pipeline
from vlambpo_jax.errors import UserError
from vlambpo_jax.stages import common


def _ctx(workdir):
    return pipeline.StageContext(tabletop.get_config("smoke"), workdir, "mbpo", writer=None, preemption=None)


def test_summary_paths_follow_a_copied_workdir(tmp_path):
    old = tmp_path / "run"
    summary = {"checkpoint_dir": str(old / "sft" / "policy"), "steps": 3, "elsewhere": str(tmp_path / "data"),
               "prefix_only": str(old) + "_other/x"}
    (old / "sft").mkdir(parents=True)
    pipeline.mark_done(old, "sft", summary, 1.0)
    assert _ctx(old).stage_summary("sft") == summary

    new = tmp_path / "copy"
    shutil.copytree(old, new)
    got = _ctx(new).stage_summary("sft")
    assert got["checkpoint_dir"] == str(new / "sft" / "policy")
    # values outside the old workdir, and paths that only share its name as a prefix, are left alone
    assert {k: got[k] for k in ("steps", "elsewhere", "prefix_only")} == {
        k: summary[k] for k in ("steps", "elsewhere", "prefix_only")}


def test_evaluate_names_every_unfinished_policy_before_any_work(tmp_path):
    """`--stages=demos,sft,collect,evaluate` with the default eval.policies ('sft', 'mbpo'): one
    error naming mbpo and the override that evaluates the finished ones, not a failure after SFT's
    episodes."""
    (tmp_path / "sft").mkdir()
    pipeline.mark_done(tmp_path, "sft", {"checkpoint_dir": str(tmp_path / "sft" / "policy")}, 1.0)
    with pytest.raises(UserError, match=r"\['mbpo'\], not finished .*--config.eval.policies=\"\('sft',\)\""):
        common.policy_checkpoints(_ctx(tmp_path), ("sft", "mbpo"))
    assert common.policy_checkpoints(_ctx(tmp_path), ("sft",)) == {"sft": str(tmp_path / "sft" / "policy")}
    # the override the message suggests parses to the tuple it names
    fv = cli.command_flags(["--config=configs/tabletop.py:smoke", "--workdir=W", "--config.eval.policies=('sft',)"])
    assert tuple(fv.config.eval.policies) == ("sft",)
