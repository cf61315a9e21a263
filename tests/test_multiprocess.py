"""Two local processes joined by jax.distributed (127.0.0.1) run every stage of both smoke pipelines, with
the numbers of one process where the math is the same (the same global batches), and resume together
from a checkpoint they saved together."""
import concurrent.futures
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}
# in_memory SFT: every process builds the same global batch (a streamed one is per-host shards).
BRIDGE = ["--config=configs/bridge.py:smoke", "--config.sft.in_memory=True", "--config.sft.steps=4",
          "--config.log.every_steps=1", "--config.checkpoint.every_steps=2"]
TABLETOP = ["--config=configs/tabletop.py:smoke", "--config.sft.steps=4", "--config.sft.eval_episodes=0",
            "--config.checkpoint.every_steps=2", "--config.eval.num_videos=1", "--config.report.num_videos=1",
            "--config.report.video_chunks=2"]
# Summary numbers that are not the math: timings; the data stage's look at one batch, which is this
# host's share; and the critic's explained variance, a ratio of two near-zero variances on smoke-sized
# batches (1 - 0.7 / 1e-6) that rounding alone moves by 50%.
NOT_COMPARED = ("sec", "time", "explained_variance", "batch.")
# Looser where the layout's rounding is amplified, both measured on this machine (two vs one process):
# - the consistency probe (state_probe.train, 400 Adam steps on a small conv net) turns rounding
#   differences of 1e-7 in its inputs into up to 10% in its training error and 6% in what it reads;
# - the PPO policy loss at ratio 1 is minus the mean of normalized advantages, zero up to rounding
#   (1.0e-7 in one process, 1.6e-6 in two).
LOOSER = (("probe", dict(rtol=0.25, atol=1e-6)), ("consistency", dict(rtol=0.25, atol=1e-6)),
          ("policy_loss", dict(rtol=1e-4, atol=1e-5)))


# A whole smoke pipeline, three processes on two cores beside another test (pytest -n 2).
TIMEOUT_S = 2700


def _one(args, workdir):
    r = subprocess.run([sys.executable, "-m", "vlambpo_jax.main", *args, f"--workdir={workdir}"],
                       cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def _two(args, workdir):
    r = subprocess.run([sys.executable, "launch/local_multiprocess.py", "--processes=2", "--", *args,
                        f"--workdir={workdir}"], cwd=ROOT, env=ENV, capture_output=True, text=True,
                       timeout=TIMEOUT_S)
    log1 = Path(workdir) / "processes" / "process1.log"
    assert r.returncode == 0, (r.stderr[-3000:], log1.read_text()[-3000:] if log1.exists() else "no process1.log")
    return r


def _one_and_two(args, tmp_path):
    """The one-process and the two-process run side by side (each is mostly single-threaded)."""
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        runs = [pool.submit(_one, args, tmp_path / "one"), pool.submit(_two, args, tmp_path / "two")]
        for run in runs:
            run.result()


def _numbers(tree, prefix=""):
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from _numbers(v, f"{prefix}{k}.")
    elif isinstance(tree, (int, float)) and not isinstance(tree, bool):
        if not any(word in prefix for word in NOT_COMPARED):
            yield prefix[:-1], float(tree)


def _assert_same_numbers(one: Path, two: Path, stages) -> None:
    for stage in stages:
        a = dict(_numbers(json.loads((one / stage / "DONE.json").read_text())["summary"]))
        b = dict(_numbers(json.loads((two / stage / "DONE.json").read_text())["summary"]))
        assert a.keys() == b.keys(), stage
        for key in a:
            tol = next((t for word, t in LOOSER if word in key), dict(rtol=1e-4, atol=1e-6))
            np.testing.assert_allclose(b[key], a[key], **tol, err_msg=f"{stage}: {key}")


def _losses(workdir: Path):
    rows = [json.loads(line) for line in (workdir / "sft" / "metrics.jsonl").read_text().splitlines()]
    return np.array([r["loss"] for r in rows if "loss" in r])


@pytest.mark.slow
def test_bridge_pipeline_under_two_processes_matches_one_and_resumes(tmp_path):
    from configs import bridge

    stages = bridge.get_config("smoke").stages
    _one_and_two(BRIDGE, tmp_path)
    _assert_same_numbers(tmp_path / "one", tmp_path / "two", stages)
    a = _losses(tmp_path / "one")
    np.testing.assert_allclose(_losses(tmp_path / "two"), a, rtol=1e-5)

    # As if preempted after step 2: both processes restore the step-2 checkpoint and redo steps 3-4.
    (tmp_path / "two" / "sft" / "DONE.json").unlink()
    shutil.rmtree(tmp_path / "two" / "sft" / "policy" / "4")
    again = _two(BRIDGE + ["--stages=sft"], tmp_path / "two")
    assert "resuming from checkpoint step 2" in again.stdout
    np.testing.assert_allclose(_losses(tmp_path / "two")[4:], a[2:], rtol=1e-5)


@pytest.mark.slow
def test_tabletop_pipeline_under_two_processes_matches_one(tmp_path):
    from configs import tabletop

    stages = ("demos", "sft", "collect", "wm_pretrain", "wm_finetune", "mbpo", "evaluate", "report")
    assert tuple(tabletop.get_config("smoke").stages) == stages  # every stage of the pipeline
    _one_and_two(TABLETOP, tmp_path)
    _assert_same_numbers(tmp_path / "one", tmp_path / "two", stages)
    # every process gathered every episode: the paired comparison covers them all, in both runs alike
    for run in ("one", "two"):
        results = json.loads((tmp_path / run / "evaluate" / "results.json").read_text())
        assert len(results["sft"]["successes"]) == results["sft"]["episodes"]
        assert results["mbpo"]["paired"]["episodes"] == results["sft"]["episodes"]
        report = (tmp_path / run / "report" / "report.md").read_text()
        assert "McNemar" in report and "Open-loop drift" in report
    assert (json.loads((tmp_path / "one" / "evaluate" / "results.json").read_text())["mbpo"]["paired"]
            == json.loads((tmp_path / "two" / "evaluate" / "results.json").read_text())["mbpo"]["paired"])


def test_processes_with_different_configs_stop_with_a_clear_error(tmp_path):
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for i, seed in enumerate((0, 1)):
        env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT),
               "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}", "JAX_NUM_PROCESSES": "2",
               "JAX_PROCESS_ID": str(i)}
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "vlambpo_jax.main", "--config=configs/bridge.py:smoke", "--stages=data",
             f"--config.seed={seed}", f"--workdir={tmp_path / 'wd'}"],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode != 0 for p in procs)
    assert any("disagree with process 0 on the config" in err for _, err in outs), outs[0][1][-2000:]
    assert not (tmp_path / "wd" / "data" / "DONE.json").exists()
