"""Stage records (vlambpo_jax/pipeline.py): a copied or moved workdir resumes from its own files."""
import shutil

from configs import tabletop
from vlambpo_jax import pipeline


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
