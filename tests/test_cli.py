"""CLI: --help, one-line errors for bad configs before any compute, config file arguments."""
import importlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from configs import bridge, common, tabletop
from vlambpo_jax.config_checks import ConfigError, validate

ROOT = Path(__file__).resolve().parents[1]


def _main(*args, workdir):
    return subprocess.run([sys.executable, "-m", "vlambpo_jax.main", *args, f"--workdir={workdir}"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})


@pytest.mark.parametrize("override, expected", [
    ("--config.chunk_sizee=3", "config.chunk_sizee: unknown key"),
    ("--config.chunk_size=abc", "invalid literal"),
    ("--config.chunk_size=0", "config.chunk_size=0: must be an integer >= 1"),
    ("--config.log.progress=fancy", "config.log.progress='fancy': must be one of"),
    ("--config.stages=('sft','demos')", "config.stages="),
    ("--config.wm.motion_weight=(1.0,-1.0)", "config.wm.motion_weight=(1.0, -1.0): must be (head, wrist)"),
    ("--config.wm.zero_noise_fraction=1.5", "config.wm.zero_noise_fraction=1.5: must be a number in [0, 1]"),
    ("--config.data.stats_cache_dir=gs://b/stats", "config.data.stats_cache_dir='gs://b/stats': must be a local"),
])
def test_bad_config_one_line_before_compute(tmp_path, override, expected):
    workdir = tmp_path / "wd"
    r = _main("--config=configs/tabletop.py:smoke", override, workdir=workdir)
    assert r.returncode == 2
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, r.stderr
    assert expected in lines[0]
    assert not workdir.exists()


def test_bad_config_argument_and_missing_file(tmp_path):
    r = _main("--config=configs/tabletop.py:huge", workdir=tmp_path)
    assert r.returncode == 2 and "config argument 'huge' is unknown; allowed: smoke" in r.stderr
    r = _main("--config=configs/nothing.py", workdir=tmp_path)
    assert r.returncode == 2 and "no config file" in r.stderr


def test_print_config_needs_no_workdir_and_a_run_needs_one():
    run = lambda *a: subprocess.run([sys.executable, "-m", "vlambpo_jax.main", "--config=configs/tabletop.py:smoke",  # noqa: E731
                                     *a], capture_output=True, text=True, cwd=ROOT, timeout=120)
    r = run("--print_config", "--config.rl.iterations=7")
    assert r.returncode == 0 and "iterations: 7" in r.stdout, r.stderr
    r = run()
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "--workdir" in lines[0], r.stderr



def test_a_bucket_url_as_workdir_is_refused_in_one_line():
    r = _main("--config=configs/tabletop.py:smoke", workdir="gs://bucket/run1")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert "--workdir=gs://bucket/run1" in lines[0] and "mount the bucket" in lines[0]

def test_help_documents_flags(tmp_path):
    r = subprocess.run([sys.executable, "-m", "vlambpo_jax.main", "--help"], capture_output=True,
                       text=True, cwd=ROOT, timeout=120)
    for flag in ("--config", "--workdir", "--stages", "print_config", "jax_cache_dir"):
        assert flag in r.stdout


@pytest.mark.parametrize("tool,flags_listed", [("sweep", ("--lanes", "--variants", "--workdir", "dry_run")),
                                                ("wm_agreement", ("--drift_only", "--states"))])
def test_a_tools_help_gives_its_docstring_and_flags(tool, flags_listed):
    r = subprocess.run([sys.executable, "-m", f"vlambpo_jax.tools.{tool}", "--help"], capture_output=True,
                       text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
    doc = importlib.import_module(f"vlambpo_jax.tools.{tool}").__doc__.strip().splitlines()[0]
    assert r.stdout.startswith(doc) and all(f in r.stdout for f in ("--config",) + flags_listed), r.stdout


@pytest.mark.parametrize("module", [tabletop, bridge])
@pytest.mark.parametrize("arg", [None, "smoke"])
def test_shipped_configs_validate(module, arg):
    validate(module.get_config(arg))


def test_tabletop_variants_validate():
    for arg in ("vine", "vine,online", "dagger,vine", "dagger,vine,vlm", "dagger,vine,online,vlm"):
        validate(tabletop.get_config(arg))
    roots, online = tabletop.get_config("dagger,vine,vlm").rl, tabletop.get_config("dagger,vine,online,vlm").rl
    assert roots.train_vlm and roots.vlm_lr == 1e-5 and roots.iterations == 74 and roots.world == "sim_roots"
    assert online.train_vlm and online.iterations == 60 and online.world == "sim" and online.vine_horizon == 2
    with pytest.raises(ValueError, match="refines `vine`"):
        tabletop.get_config("vlm")


def test_privileged_state_config_runs_only_simulator_stages():
    c = tabletop.get_config("truth")
    validate(c)
    assert c.env.privileged_state and c.policy.use_state and c.policy.state_dim == c.data.state_dim == 11
    for stages, world in ((c.stages + ("report",), "sim"), (("demos", "sft", "mbpo"), "model")):
        c.stages, c.rl.world = stages, world
        with pytest.raises(ConfigError, match="policy.use_state=True: cannot run stage"):
            validate(c)


def test_reward_from_pairs_each_half_with_the_other_world():
    c = tabletop.get_config("smoke")
    for world, reward_from in (("model", "sim"), ("sim_roots", "model")):
        c.rl.world, c.rl.reward_from = world, reward_from
        validate(c)
    for world, reward_from in (("model", "model"), ("sim_roots", "sim"), ("sim", "model")):
        c.rl.world, c.rl.reward_from = world, reward_from
        with pytest.raises(ConfigError, match="rl.reward_from=.*needs config.rl.world="):
            validate(c)
    c = bridge.get_config("smoke")
    c.rl.reward_from = "sim"
    with pytest.raises(ConfigError, match="rl.reward_from='sim': steps the simulator"):
        validate(c)


def test_the_claims_run_is_vla_mbpo_in_the_learned_world_model():
    for arg in ("claims", "claims,smoke"):
        c = tabletop.get_config(arg)
        validate(c)
        assert c.sft.dagger_rounds == 6 and c.rl.world == "model" and c.rl.reward_model == "classifier"
        assert c.stages.index("wm_finetune") < c.stages.index("reward") < c.stages.index("mbpo")
        assert c.rl.branch_chunks == 2 and c.rl.advantage == "vine" and c.wm.action_adaln and c.reward.predicted_views
        assert c.rl.value_anchor > 0 and c.rl.value_anchor_target == "return"
    full = tabletop.get_config("claims")
    assert full.wm.pretrain_steps == 900 and full.rl.value_anchor == 512
    assert tabletop.get_config("claims,smoke").wm.pretrain_steps == tabletop.get_config("smoke").wm.pretrain_steps
    with pytest.raises(ValueError, match="`claims` config argument"):
        tabletop.get_config("claims,online")


def test_collect_samples_as_deployed_while_ppo_explores_with_the_policys_noise():
    from vlambpo_jax.models.policy import Policy
    from vlambpo_jax.stages import collect
    c = tabletop.get_config("claims,smoke")
    assert (c.policy.stochastic_step, c.policy.noise_level) == ("all", 0.6)      # PPO's exploration
    sampled = collect.sampling_config(c)
    assert (sampled.policy.stochastic_step, sampled.policy.noise_level) == ("per_call", 0.5)
    assert c.policy.stochastic_step == "all"                                      # the run's config untouched
    policy = Policy(sampled, vocab_size=300)
    assert policy.noise_level == 0.5 and not policy.all_steps


def test_the_value_anchor_needs_the_learned_world_model():
    c = tabletop.get_config("smoke")
    c.rl.value_anchor = 8
    validate(c)
    c.rl.reward_from = "sim"   # the simulator's success on the predicted views: still the model's views
    validate(c)
    for world, reward_from in (("sim_roots", ""), ("sim", ""), ("sim_roots", "model")):
        c.rl.world, c.rl.reward_from = world, reward_from
        with pytest.raises(ConfigError, match="rl.value_anchor=8: ties the critic"):
            validate(c)


def test_reward_model_classifier_needs_no_world_model_with_real_views():
    c = tabletop.get_config("smoke")
    c.stages = ("mbpo",)
    c.wm.vae.kind = "flux"   # a world model the stages cannot train: refused wherever one is read
    c.rl.world, c.rl.reward_from = "sim_roots", "model"
    with pytest.raises(ConfigError, match="wm.vae.kind='flux': needs config.wm.init_from"):
        validate(c)
    c.rl.reward_model = "classifier"
    validate(c)
    c.rl.world, c.rl.reward_from = "model", ""
    with pytest.raises(ConfigError, match="needs config.wm.init_from"):
        validate(c)
    c.rl.reward_model = "probe"
    with pytest.raises(ConfigError, match="rl.reward_model='probe'"):
        validate(c)


def test_chunk_longer_than_horizon_is_rejected():
    config = tabletop.get_config("smoke")
    with config.unlocked():
        config.env.horizons = {"pick": 8}
    with pytest.raises(ConfigError, match="chunk_size=10: must be <= the episode horizon"):
        validate(config)


def test_parse_arg_types():
    args = common.parse_arg("smoke,res=64", smoke=False, res=32)
    assert args.smoke is True and args.res == 64
    with pytest.raises(ValueError, match="allowed: smoke, res"):
        common.parse_arg("size=3", smoke=False, res=32)


def test_apply_overrides_parses_literals_and_rejects_unknown_fields():
    from vlambpo_jax.config_checks import apply_overrides
    c = tabletop.get_config("smoke")
    apply_overrides(c, ["sft.lr=0.002", "env.tasks=('pick',)", "policy.vit_stem=conv", "sft.in_memory=False"])
    assert c.sft.lr == 0.002 and tuple(c.env.tasks) == ("pick",)
    assert c.policy.vit_stem == "conv" and c.sft.in_memory is False
    with pytest.raises(KeyError, match="sft.not_a_field"):
        apply_overrides(c, ["sft.not_a_field=1"])


def test_grounding_and_stem_rules():
    c = tabletop.get_config("smoke")
    c.sft.grounding_layer = c.policy.depth + 1
    with pytest.raises(ConfigError, match="sft.grounding_layer"):
        validate(c)
    c = tabletop.get_config("smoke")
    c.policy.vit_stem = "resnet"
    with pytest.raises(ConfigError, match="policy.vit_stem"):
        validate(c)
    b = bridge.get_config("smoke")
    b.sft.grounding_weight = 1.0
    with pytest.raises(ConfigError, match="needs config.env"):
        validate(b)
    b = bridge.get_config("smoke")
    b.sft.dagger_rounds = 1
    with pytest.raises(ConfigError, match="sft.dagger_rounds=1: DAgger runs the scripted expert"):
        validate(b)
    c = tabletop.get_config("smoke")
    c.sft.dagger_rounds = 1
    validate(c)
    c.sft.in_memory = False
    with pytest.raises(ConfigError, match="sft.dagger_rounds"):
        validate(c)


def test_guidance_needs_conditioning_dropout():
    c = tabletop.get_config("smoke")
    c.wm.dropout.update(dict(text=0.0, vit=0.0, vae=0.0))
    validate(c)  # guidance off: no dropout needed
    c.wm.cfg_image_scale = 2.0
    with pytest.raises(ConfigError, match="wm.dropout.vit=0.0: classifier-free guidance"):
        validate(c)
    c.wm.dropout.update(dict(vit=0.1, vae=0.1))
    validate(c)
    c.wm.cfg_text_scale = 4.0
    with pytest.raises(ConfigError, match="wm.dropout.text"):
        validate(c)


def test_action_adaln_is_refused_with_interleaved_decoding():
    c = tabletop.get_config("smoke")
    c.wm.action_adaln = True
    validate(c)  # the default independent decoding
    c.wm.view_decoding = "interleaved"
    with pytest.raises(ConfigError, match="wm.action_adaln=True: conditions every generated view"):
        validate(c)


def test_bad_data_ends_in_one_line_with_the_traceback_in_the_log(tmp_path):
    import numpy as np

    from vlambpo_jax.data.rlds_writer import write_rlds
    from vlambpo_jax.data.synthetic import synthetic_episode

    rng = np.random.default_rng(0)
    eps = [synthetic_episode(rng, 4, image_shape=(32, 32, 3), action_dim=7,
                             metadata={"episode_id": i, "file_path": f"traj{i}"}) for i in range(2)]
    eps[1]["steps"]["action"][2, 3] = np.nan
    path = write_rlds(tmp_path / "data", eps, dataset_name="nan_actions", image_shape=(32, 32, 3))
    workdir = tmp_path / "wd"
    r = _main("--config=configs/bridge.py:smoke", "--stages=data", f"--config.data.builder_dir={path}",
              "--config.data.layout=generic", "--config.data.drop_first_zero_action=False", workdir=workdir)
    assert r.returncode == 2, r.stderr[-2000:]
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in r.stdout, r.stderr[-3000:]
    assert lines[0].startswith("error: dataset 'nan_actions', episode #1"), lines[0]
    assert "feature 'steps/action'" in lines[0] and f"traceback: {workdir / 'error.log'}" in lines[0]
    assert "Traceback (most recent call last)" in (workdir / "error.log").read_text()


def test_importing_the_simulator_prints_nothing():
    """mujoco.mjx's probe for its optional Warp backend must not greet every command with 'Failed'."""
    r = subprocess.run([sys.executable, "-c", "import vlambpo_jax.envs.tabletop"], capture_output=True,
                       text=True, cwd=ROOT, timeout=120, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert r.returncode == 0 and "warp" not in r.stdout + r.stderr, r.stdout + r.stderr


_WRITABLE_LOOP = """
import pathlib, sys, time
from vlambpo_jax import main
workdir, go = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
(go.parent / ('ready' + sys.argv[3])).write_text('')
while not go.exists():
    time.sleep(0.01)
end = time.time() + 1.5
while time.time() < end:
    main._check_writable(workdir)
"""


def test_two_local_runs_check_one_workdir_at_once(tmp_path):
    """Stages run in parallel lanes start as two processes of index 0 on one workdir: their write
    checks must not remove each other's probe file."""
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", _WRITABLE_LOOP, str(tmp_path / "wd"), str(go), str(i)],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "JAX_PLATFORMS": "cpu"}) for i in range(2)]
    deadline = time.time() + 120
    while not all((tmp_path / f"ready{i}").exists() for i in range(2)) and time.time() < deadline:
        time.sleep(0.05)
    go.write_text("")
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-500:] for _, err in outs]


def test_config_json_is_replaced_whole(tmp_path):
    """A second run on the workdir (a parallel lane) moves a new config.json into place: a reader of the
    old file keeps reading the whole old text, never a truncated or half-written one."""
    from vlambpo_jax import main
    first, second = tabletop.get_config("smoke"), tabletop.get_config("smoke")
    second.seed = 7
    main._note_config(tmp_path, first)
    with (tmp_path / "config.json").open() as reader:
        main._note_config(tmp_path, second)
        assert reader.read() == first.to_json_best_effort(indent=2, sort_keys=True)
    assert (tmp_path / "config.json").read_text() == second.to_json_best_effort(indent=2, sort_keys=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]
