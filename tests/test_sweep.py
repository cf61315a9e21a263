"""tools/sweep: which stages each variant shares and reruns, its flags, and the scheduler that runs the
base run and the variants in lanes (stand-in processes that finish one stage per poll)."""
import json
from pathlib import Path

import pytest

from configs import bridge, tabletop
from vlambpo_jax import cli, pipeline
from vlambpo_jax.config_checks import validate
from vlambpo_jax.envs import horizon_chunks
from vlambpo_jax.tools import sweep

ROW = {"success_rate": 0.5, "ci95": [0.3, 0.7], "episodes": 10}
SUMMARIES = {"demos": {"steps": 100}, "collect": {"env_steps": 50}}


def _flag(cmd, key):
    """The last value a command gives --KEY (the one main keeps)."""
    return [a.split("=", 1)[1] for a in cmd if a.startswith(f"--{key}=")][-1]


class FakeStageProcess:
    """Stands in for `python -m vlambpo_jax.main --stages=...`: finishes one of its stages per poll, writing
    DONE.json and the evaluated policies' results (the base run's: sft and mbpo). Named like the sweep's
    jobs: the run (the variant's workdir, or base) where it evaluates, else <run>:<first stage>."""
    log = []          # (job, base stages finished when it started)
    running = set()
    peak = 0
    fail = ()         # job names whose process exits 1 at its first poll
    interrupt = ()    # workdir names whose start stops the sweep (as Ctrl-C would)

    def __init__(self, cmd, stdout=None, stderr=None):
        self.workdir = Path(_flag(cmd, "workdir"))
        if self.workdir.name in self.interrupt:
            raise KeyboardInterrupt
        variant = self.workdir.parent.name == "variants"
        self.base = self.workdir.parent.parent if variant else self.workdir
        order = tabletop.get_config("claims,smoke").stages
        self.todo = _flag(cmd, "stages").split(",")
        self.policies = [_flag(cmd, "config.eval.policies").strip("(',)")] if variant else ["sft", "mbpo"]
        self.returncode = None
        run = self.workdir.name if variant else "base"
        self.name = run if "evaluate" in self.todo else f"{run}:{self.todo[0]}"
        FakeStageProcess.log.append((self.name, {s for s in order if pipeline.is_done(self.base, s)}))
        FakeStageProcess.running.add(self.name)
        FakeStageProcess.peak = max(FakeStageProcess.peak, len(FakeStageProcess.running))

    def poll(self):
        if self.returncode is None and self.name in self.fail:
            self.returncode = 1
        elif self.returncode is None:
            stage = self.todo.pop(0)
            (self.workdir / stage).mkdir(parents=True, exist_ok=True)
            pipeline.mark_done(self.workdir, stage, SUMMARIES.get(stage, {"env_steps": 0}), 0.0)
            if stage == "evaluate":
                (self.workdir / stage / "results.json").write_text(json.dumps({p: ROW for p in self.policies}))
            self.returncode = None if self.todo else 0
        if self.returncode is not None:
            FakeStageProcess.running.discard(self.name)
        return self.returncode

    def terminate(self):
        pass


@pytest.fixture
def fake_processes(monkeypatch):
    FakeStageProcess.log, FakeStageProcess.running, FakeStageProcess.peak = [], set(), 0
    FakeStageProcess.fail, FakeStageProcess.interrupt = (), ()
    monkeypatch.setattr(sweep.subprocess, "Popen", FakeStageProcess)
    monkeypatch.setattr(sweep.time, "sleep", lambda s: None)
    return FakeStageProcess


def _sweep(base, *flags):
    return sweep.main([f"--workdir={base}", "--config=configs/tabletop.py:claims,smoke", *flags])


def test_two_lanes_run_the_variants_that_need_no_world_model_beside_the_base_run(tmp_path, fake_processes):
    base = tmp_path / "base"
    assert _sweep(base, "--variants=branch_4,ivd,perfect,online_ppo", "--lanes=2") == 0
    started = dict(fake_processes.log)
    assert set(started) == {"base:demos", "base:wm_pretrain", "base", "ivd:wm_pretrain", "ivd", "branch_4",
                            "perfect", "online_ppo"}
    order = list(started)
    assert order[:3] == ["base:demos", "base:wm_pretrain", "ivd:wm_pretrain"]
    # pretraining reads only the demos: the base run's starts beside SFT, the ivd variant's in the lane
    # it leaves, before collect is done
    assert started["base:wm_pretrain"] == {"demos"} and "collect" not in started["ivd:wm_pretrain"]
    assert started["base"] == {"demos", "sft", "collect", "wm_pretrain"}
    # ivd's world model trains beside the base run's
    assert order.index("ivd") < order.index("branch_4") and "wm_finetune" not in started["ivd"]
    assert "reward" in started["branch_4"]          # branch_4 imagines in the base run's world model
    assert fake_processes.peak == 2
    for name in ("perfect", "online_ppo"):   # the simulator's variants link no world-model stage
        linked = {p.name for p in (base / "variants" / name).iterdir() if p.is_symlink()}
        assert linked == {"demos", "sft", "collect"}, (name, linked)
    rows = json.loads((base / "sweep" / "results.json").read_text())
    assert set(rows) == {"sft", "vla_mbpo", "branch_4", "ivd", "perfect", "online_ppo"}
    assert rows["branch_4"]["real_env_steps"] == 150 and rows["online_ppo"]["real_env_steps"] == 100
    timing = json.loads((base / "sweep" / "timing.json").read_text())
    assert timing["lanes"] == 2 and set(timing["jobs"]) == set(started)
    assert rows["ivd"]["wall_seconds"] == timing["jobs"]["ivd"] + timing["jobs"]["ivd:wm_pretrain"]
    assert (base / "sweep" / "logs" / "ivd.log").exists() and (base / "sweep" / "logs" / "ivd:wm_pretrain.log").exists()


def test_one_lane_runs_the_jobs_one_after_another_and_later_calls_keep_the_rows(tmp_path, fake_processes):
    base = tmp_path / "base"
    assert _sweep(base, "--variants=branch_1") == 0
    assert _sweep(base, "--variants=wm_bc") == 0     # the base run is finished now: not run again
    assert [name for name, _ in fake_processes.log] == ["base:demos", "base:wm_pretrain", "base", "branch_1", "wm_bc"]
    assert fake_processes.peak == 1
    rows = json.loads((base / "sweep" / "results.json").read_text())
    assert list(rows) == ["sft", "vla_mbpo", "branch_1", "wm_bc"]
    assert "| wm_bc |" in (base / "sweep" / "results.md").read_text()


def test_a_failed_base_run_leaves_the_variants_that_need_it_unrun(tmp_path, fake_processes):
    fake_processes.fail = ("base:demos",)
    with pytest.raises(SystemExit) as e:
        _sweep(tmp_path / "base", "--variants=branch_4", "--lanes=2")
    assert e.value.code == 2 and [name for name, _ in fake_processes.log] == ["base:demos"]


def test_a_sweep_stopped_midway_keeps_the_times_of_the_jobs_it_finished(tmp_path, fake_processes):
    fake_processes.interrupt = ("wm_bc",)
    with pytest.raises(KeyboardInterrupt):
        _sweep(tmp_path / "base", "--variants=branch_4,wm_bc", "--lanes=1")
    timing = json.loads((tmp_path / "base" / "sweep" / "timing.json").read_text())
    assert set(timing["jobs"]) == {"base:demos", "base:wm_pretrain", "base", "branch_4"}
    assert timing["lanes"] == 1


def test_every_default_variant_of_the_claims_run_passes_the_config_checks(tmp_path):
    config = tabletop.get_config("claims")
    names = sweep.default_variants(config)
    assert "ivd" in names and "perfect" in names and "wm_bc" in names
    assert {"branch_auto", "no_ivd", "no_anchor", "value_anchor"}.isdisjoint(names)
    base = tmp_path / "base"
    (base / "collect").mkdir(parents=True)
    pipeline.mark_done(base, "collect", {"env_steps": 8149}, 0.0)
    for name in names:
        flags = sweep.variant_overrides(name, config, base)
        fv = cli.command_flags(["--config=configs/tabletop.py:claims", *flags], workdir=False)
        validate(fv.config)   # raises ConfigError on a refused combination
    # a simulator-world base run is the perfect model itself and has no critic anchor to vary
    vine = sweep.default_variants(tabletop.get_config("dagger,vine"))
    assert {"perfect", "value_anchor", "no_anchor"}.isdisjoint(vine)


def test_branch_variants_keep_the_base_runs_branch_chunks_and_the_variants_flags_win(tmp_path):
    config = tabletop.get_config("claims")    # n = 2, 37 iterations
    horizon = horizon_chunks(config)
    iterations = {n: _flag(sweep.branch_overrides(n, config.rl, horizon), "config.rl.iterations")
                  for n in (1, 4, 0)}
    assert iterations == {1: "74", 4: "19", 0: str(-(-74 // horizon))}
    assert sweep.branch_overrides(-1, config.rl, horizon) == ["--config.rl.branch_chunks=-1"]
    base = tmp_path / "base"
    for stage in sweep.shared_stages(sweep.run_order(config)):
        (base / stage).mkdir(parents=True)
    cmd = sweep.variant_command("branch_4", "configs/tabletop.py:claims", config, base,
                                ["--config.rl.branch_chunks=1", "--config.rl.iterations=3"],
                                sweep.variant_overrides("branch_4", config, base))
    assert _flag(cmd, "config.rl.branch_chunks") == "4" and _flag(cmd, "stages") == "mbpo,evaluate"
    for stage in sweep.shared_stages(sweep.run_order(config)):   # world model, reward, roots and SFT reused
        assert (base / "variants" / "branch_4" / stage).resolve() == (base / stage).resolve()
    assert sweep.variant_stages("no_pretrain", sweep.run_order(config))[1] == (
        "wm_pretrain", "wm_finetune", "reward", "mbpo", "evaluate")
    assert sweep.variant_stages("wm_bc", sweep.run_order(config))[1:] == (("wm_bc", "evaluate"), "wm_bc")


def test_online_ppo_spends_at_most_the_collect_stages_real_steps(tmp_path):
    """8,149 collected steps, 50-step episodes, groups of 8: one iteration of 160 fresh episodes (8,000
    steps), not one of 512 (25,600); a larger budget keeps the branches and runs more iterations."""
    rl = tabletop.get_config("dagger,vine").rl
    for collected, expected in ((8149, ["--config.rl.num_branches=160", "--config.rl.iterations=1"]),
                                (60000, ["--config.rl.num_branches=512", "--config.rl.iterations=2"])):
        base = tmp_path / str(collected)
        (base / "collect").mkdir(parents=True)
        pipeline.mark_done(base, "collect", {"env_steps": collected}, 0.0)
        flags = sweep.online_overrides(base, rl, horizon=10, chunk=5)
        assert flags[:2] == expected and "--config.rl.vine_window=0" in flags, flags
        assert "--config.rl.critic_warmup_iterations=0" in flags


def test_the_table_pairs_each_row_with_sft_and_the_base_run_on_the_same_episodes():
    def row(successes):
        return dict(ROW, successes=successes)
    # against sft: 3 episodes only the variant solves, 1 only sft -> two-sided exact p = 2 * 5/16
    rows = {"sft": row([1, 0, 0, 0, 1, 1]), "vla_mbpo": row([1, 1, 1, 1, 0, 1]), "perfect": row([0, 1, 1, 1, 0, 1]),
            "old": dict(ROW)}
    lines = sweep.markdown(rows).splitlines()
    assert lines[0].split(" | ")[4:6] == ["vs sft", "vs vla_mbpo"]
    cells = {ln.split(" | ")[0][2:]: ln.split(" | ")[4:6] for ln in lines[2:]}
    assert cells["sft"] == ["", "1 / 3, p = 0.62"]
    assert cells["vla_mbpo"] == ["3 / 1, p = 0.62", ""]
    assert cells["perfect"] == ["3 / 2, p = 1", "0 / 1, p = 1"]
    assert cells["old"] == ["", ""]            # a row without per-episode outcomes is not paired


def test_a_runs_stages_become_jobs_with_pretraining_apart():
    Job = sweep.Job
    stages = tabletop.get_config("claims").stages
    assert sweep.stage_jobs("base", stages, stages) == {
        "base:demos": Job("base", ("demos", "sft", "collect"), ()),
        "base:wm_pretrain": Job("base", ("wm_pretrain",), ("demos",)),
        "base": Job("base", ("wm_finetune", "reward", "mbpo", "evaluate", "report"),
                    ("demos", "sft", "collect", "wm_pretrain"))}
    todo = ("collect", "reward", "mbpo", "evaluate", "report")     # a base run stopped during collect
    assert sweep.stage_jobs("base", stages, todo) == {
        "base:collect": Job("base", ("collect",), ("demos", "sft")),
        "base": Job("base", ("reward", "mbpo", "evaluate", "report"), stages[:stages.index("reward")])}
    linked, rerun, _ = sweep.variant_stages("ivd", sweep.run_order(tabletop.get_config("claims")))
    assert sweep.stage_jobs("ivd", linked + rerun, rerun) == {
        "ivd:wm_pretrain": Job("ivd", ("wm_pretrain",), ("demos",)),
        "ivd": Job("ivd", ("wm_finetune", "reward", "mbpo", "evaluate"), ("demos", "sft", "collect", "wm_pretrain"))}
    bridge_stages = bridge.get_config().stages   # the Bridge pipeline has no demos: pretraining needs its data
    assert sweep.stage_jobs("base", bridge_stages, bridge_stages)["base:wm_pretrain"].needs == ("data",)


def test_a_dry_run_prints_the_jobs_and_runs_nothing(tmp_path, fake_processes, capsys):
    base = tmp_path / "base"
    assert _sweep(base, "--variants=ivd,perfect", "--dry_run") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == ["base:demos: demos,sft,collect", "base:wm_pretrain: wm_pretrain (after demos)",
                     "base: wm_finetune,reward,mbpo,evaluate,report (after demos,sft,collect,wm_pretrain)",
                     "ivd:wm_pretrain: wm_pretrain (after demos)",
                     "ivd: wm_finetune,reward,mbpo,evaluate (after demos,sft,collect,wm_pretrain)",
                     "perfect: mbpo,evaluate (after demos,sft,collect)"]
    assert fake_processes.log == [] and not base.exists()


def test_a_base_run_stopped_before_its_report_gets_the_report_and_nothing_else(tmp_path, fake_processes, capsys):
    base = tmp_path / "base"
    for stage in tabletop.get_config("claims,smoke").stages:
        if stage != "report":
            (base / stage).mkdir(parents=True)
            pipeline.mark_done(base, stage, SUMMARIES.get(stage, {}), 0.0)
    assert _sweep(base, "--variants=perfect", "--dry_run") == 0
    assert capsys.readouterr().out.splitlines() == [
        "base:report: report (after demos,sft,collect,wm_pretrain,wm_finetune,reward,mbpo,evaluate)",
        "perfect: mbpo,evaluate (after demos,sft,collect)"]
