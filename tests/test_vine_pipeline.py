"""The `vine` config variant end to end at smoke size: demos, SFT, collect, then PPO with vine
advantages on 2-chunk branches from the collected roots in the restored simulator (MBPO with a
perfect world model), then the paired evaluation; then `vine,online` (online PPO from fresh
episodes, each group exploring one chunk anywhere along them) from the same SFT policy."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from configs import tabletop

pytestmark = pytest.mark.slow  # two smoke pipelines in subprocesses
ROOT = Path(__file__).resolve().parents[1]


def _run(arg: str, workdir: Path):
    r = subprocess.run([sys.executable, "-m", "vlambpo_jax.main", f"--config=configs/tabletop.py:{arg}",
                        f"--workdir={workdir}", "--config.sft.steps=4", "--config.sft.eval_episodes=0"],
                       capture_output=True, text=True, cwd=ROOT, timeout=1500,
                       env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert r.returncode == 0, r.stderr[-3000:]


def test_vine_variants_run_from_restored_roots_and_online(tmp_path):
    arg = "smoke,truth,vine"
    _run(arg, tmp_path)
    config = tabletop.get_config(arg)
    done = lambda stage: json.loads((tmp_path / stage / "DONE.json").read_text())["summary"]  # noqa: E731
    assert [s for s in config.stages if (tmp_path / s / "DONE.json").exists()] == list(config.stages)
    mbpo = done("mbpo")
    chunks = config.env.horizons.pick // config.chunk_size
    n = config.rl.branch_chunks
    assert (mbpo["world"], mbpo["branch_chunks"], mbpo["env_steps"]) == ("sim_roots", n, 0)
    assert mbpo["imagined_transitions"] == config.rl.num_branches * n * config.rl.iterations
    rows = [json.loads(x) for x in (tmp_path / "mbpo" / "metrics.jsonl").read_text().splitlines()]
    iterations = [row for row in rows if "mixed_groups" in row]
    assert [row["step"] for row in iterations] == list(range(1, config.rl.iterations + 1))
    results = json.loads((tmp_path / "evaluate" / "results.json").read_text())
    assert results["mbpo"]["paired"]["episodes"] == results["sft"]["episodes"] > 0

    online = tmp_path / "online"
    for stage in ("demos", "sft", "norm_stats"):
        if (tmp_path / stage).exists():
            shutil.copytree(tmp_path / stage, online / stage)
    _run(arg + ",online", online)
    config = tabletop.get_config(arg + ",online")
    mbpo = json.loads((online / "mbpo" / "DONE.json").read_text())["summary"]
    steps = config.rl.num_branches * chunks * config.chunk_size * config.rl.iterations
    assert (mbpo["world"], mbpo["env_steps"], mbpo["imagined_transitions"]) == ("sim", steps, 0)
    assert not (online / "collect").exists()
    assert json.loads((online / "evaluate" / "results.json").read_text())["mbpo"]["paired"]["episodes"] > 0
