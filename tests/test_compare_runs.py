"""tools/compare_runs: two runs' numbers compared leaf by leaf, wall-clock times left out."""
import importlib.metadata
import json

from vlambpo_jax import pipeline
from vlambpo_jax.tools import compare_runs


def _run(workdir, loss, seconds, success):
    for stage, summary in (("sft", {"final_loss": loss, "sec_per_step": seconds, "steps": 6,
                                    "checkpoint_dir": str(workdir)}),
                           ("evaluate", {"sft_success": success})):
        (workdir / stage).mkdir(parents=True)
        pipeline.mark_done(workdir, stage, summary, seconds)
    (workdir / "evaluate" / "results.json").write_text(json.dumps(
        {"sft": {"success_rate": success, "ci95": [0.1, 0.5], "per_task": {"pick": {"success_rate": success}}}}))
    return compare_runs.run_numbers(workdir)


def test_same_numbers_pass_and_any_difference_is_named(tmp_path):
    a = _run(tmp_path / "a", 0.5, 1.0, 0.25)
    b = _run(tmp_path / "b", 0.5, 9.0, 0.25)                  # only wall-clock time differs
    assert "sft/summary/final_loss" in a and not any("sec" in k for k in a)
    assert compare_runs.compare(a, b, 1e-6, 0.0) == ([], [])
    c = _run(tmp_path / "c", 0.5 + 1e-3, 1.0, 0.30)
    differ, missing = compare_runs.compare(a, c, 1e-6, 0.0)
    assert differ == ["evaluate/results.json/sft/per_task/pick/success_rate", "evaluate/results.json/sft/success_rate",
                      "evaluate/summary/sft_success", "sft/summary/final_loss"] and missing == []
    assert compare_runs.compare(a, c, 0.0, 0.1) == ([], [])   # within tolerance
    del c["sft/summary/steps"]
    assert compare_runs.compare(a, c, 0.0, 0.1) == ([], ["sft/summary/steps"])


def test_finished_stages_record_their_package_versions_and_differences_are_noted(tmp_path, monkeypatch):
    _run(tmp_path / "a", 0.5, 1.0, 0.25)
    done = json.loads((tmp_path / "a" / "sft" / "DONE.json").read_text())
    assert done["packages"]["jax"] == importlib.metadata.version("jax")
    assert set(done["packages"]) == {"python", *pipeline.NUMERIC_PACKAGES}
    real = pipeline.installed_versions()
    monkeypatch.setattr(pipeline, "installed_versions", lambda: dict(real, jax="0.0.1"))
    _run(tmp_path / "b", 0.5, 1.0, 0.25)
    a, b = compare_runs.run_packages(tmp_path / "a"), compare_runs.run_packages(tmp_path / "b")
    jax_version = importlib.metadata.version("jax")
    assert compare_runs.package_differences(a, b) == [f"evaluate/jax: {jax_version} vs 0.0.1",
                                                      f"sft/jax: {jax_version} vs 0.0.1"]
    assert compare_runs.package_differences(a, a) == []
