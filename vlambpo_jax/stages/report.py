"""The `report` stage: a markdown summary, learning curves and imagined-vs-real videos in the workdir.

<workdir>/report/report.md   success rates with 95% intervals, real env steps, wall time per stage
<workdir>/report/curves.png  SFT loss, world-model losses, MBPO branch success and losses
<workdir>/report/rl_curves.png  the mbpo stage per iteration: success (vs iterations and real env
                                steps), clip fraction, approx KL, mixed groups, explained variance
<workdir>/report/imagined_vs_real_<i>.gif   the policy's actions played in the simulator (left)
                                           and in the world model from the same start (right)
<workdir>/report/wm_agreement.json  does the imagined reward rank action chunks as the simulator's
                                    outcomes do (vlambpo_jax/rl/wm_agreement.py; report.agreement_*)
Without a simulator (no `env` section; the real-robot path) the report shows the offline evaluation
(held-out action errors, imagined success, world-model metrics) and imagined_vs_logged_<i>.gif: held-out
logged frames (left) and the world model driven by the logged action chunks (right).
"""
from __future__ import annotations

import json
from pathlib import Path

import imageio.v2 as imageio
import jax
import jax.numpy as jnp
import matplotlib
import numpy as np

from vlambpo_jax.envs import has_simulator
from vlambpo_jax.envs.tabletop import make_env
from vlambpo_jax.rl import offline, wm_agreement
from vlambpo_jax.stages import common

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)


def _read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def stage_times(finished: dict[str, dict]) -> dict[str, float]:
    """finished: StageContext.finished() -> {stage: seconds}."""
    return {stage: done["seconds"] for stage, done in finished.items()}


def real_env_steps(finished: dict[str, dict]) -> dict[str, int]:
    """Real simulator steps each method consumed (demos count for every method)."""
    def summary(stage):
        return finished[stage]["summary"] if stage in finished else {}
    demos = int(summary("demos").get("steps", 0))
    collect = int(summary("collect").get("env_steps", 0))
    mbpo = summary("mbpo")
    steps = {"sft": demos}
    if mbpo:
        from_roots = mbpo.get("world") in ("model", "sim_roots")   # branches from the collected roots
        steps["mbpo"] = demos + (collect if from_roots else 0) + int(mbpo.get("env_steps", 0))
    return steps


def results_table(results: dict, env_steps: dict) -> str:
    tasks = sorted({t for r in results.values() for t in r.get("per_task", {})})
    head = ("| policy | success (95% CI) | " + " | ".join(tasks) + " | real env steps | "
            "episodes won / lost against the first row (McNemar p) |")
    rows = [head, "|" + "---|" * (len(tasks) + 4)]
    for name, r in results.items():
        lo, hi = r["ci95"]
        cells = [f"{r['per_task'][t]['success_rate']:.2f}" for t in tasks]
        paired = r.get("paired")
        vs = f"{paired['only_other']} / {paired['only_base']} (p = {paired['p_value']:.2g})" if paired else ""
        rows.append(f"| {name} | {r['success_rate']:.3f} [{lo:.3f}, {hi:.3f}] (n={r['episodes']}) | "
                    + " | ".join(cells) + f" | {env_steps.get(name, '')} | {vs} |")
    return "\n".join(rows)


def plot_curves(workdir: Path, out: Path) -> None:
    panels = [("sft", ["flow_loss", "loss"]), ("wm_finetune", ["image_loss", "text_loss", "loss"]),
              ("mbpo", ["branch_success", "eval/success"]), ("mbpo", ["policy_loss", "value_loss"])]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.2))
    for ax, (stage, keys) in zip(axes, panels):
        rows = _read_jsonl(workdir / stage / "metrics.jsonl")
        for key in keys:
            pts = [(r["step"], r[key]) for r in rows if key in r]
            if pts:
                ax.plot(*zip(*pts), label=key)
        ax.set_title(stage)
        ax.set_xlabel("step")
        if ax.lines:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def plot_rl_curves(workdir: Path, out: Path, mbpo_summary: dict) -> bool:
    """The RL stage's per-iteration curves: success against iterations and against real env steps
    (online PPO only), the size of each update (clip fraction, approx KL), and the learning signal
    (mixed groups, the critic's explained variance). False when the stage logged nothing."""
    rows = _read_jsonl(workdir / "mbpo" / "metrics.jsonl")
    if not rows:
        return False
    iterations = max(int(mbpo_summary.get("iterations", 0)), 1)
    steps_per_iteration = int(mbpo_summary.get("env_steps", 0)) / iterations
    panels = [("success vs iteration", "iteration", 1, ["branch_success", "eval/success"]),
              ("success vs real env steps", "env steps", steps_per_iteration, ["branch_success", "eval/success"]),
              ("update size", "iteration", 1, ["clip_frac", "approx_kl"]),
              ("learning signal", "iteration", 1, ["mixed_groups", "explained_variance"])]
    if not steps_per_iteration:
        panels.pop(1)
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.2))
    for ax, (title, xlabel, scale, keys) in zip(axes, panels):
        for key in keys:
            pts = [(r["step"] * scale, r[key]) for r in rows if key in r]
            if pts:
                ax.plot(*zip(*pts), marker=".", label=key)
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        if ax.lines:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return True


def imagined_vs_real(ctx, models: tuple, num_videos: int, num_chunks: int,
                     upscale: int = 4) -> tuple[list[str], list[str]]:
    """Plays the policy in the simulator, then the same actions in the world model; models =
    common.final_policy_and_world_model(ctx)."""
    config = ctx.config
    policy, params, tokenizer, wm, wm_params, _ = models
    env = make_env(config)
    key = jax.random.PRNGKey(config.seed + 4242)
    states = jax.jit(jax.vmap(env.reset))(jax.random.split(key, num_videos))
    ids = np.asarray(states.obs["instruction_id"])
    texts = [env.instructions[i] for i in ids]
    tok, tmask = map(jnp.asarray, tokenizer.encode_batch(texts, config.data.max_text_len))
    wm_tok, wm_tmask = map(jnp.asarray, wm.tokenizer.encode_batch(texts, config.wm.max_text_len))
    real = [np.asarray(states.obs["images"])]
    imagined = [real[0]]
    step_chunk = jax.jit(jax.vmap(env.step_chunk))
    predict = jax.jit(wm.predict)
    sample = jax.jit(lambda p, o, k: policy.sample(p, o, k, mode="eval"))
    for c in range(num_chunks):
        obs = {"images": states.obs["images"], "tokens": tok, "token_mask": tmask}
        actions = sample(params, obs, jax.random.fold_in(key, c))
        states, _, _ = step_chunk(states, actions)
        real.append(np.asarray(states.obs["images"]))
        imagined.append(np.asarray(predict(wm_params, jnp.asarray(imagined[-1]), wm_tok, wm_tmask, actions,
                                           jax.random.fold_in(key, 1000 + c))))
    paths = []
    for b in range(num_videos):
        frames = []
        for r, m in zip(real, imagined):
            row = np.concatenate([r[b, 0], r[b, 1], np.full_like(r[b, 0][:, :2], 255), m[b, 0], m[b, 1]], 1)
            frames.append(np.kron(row, np.ones((upscale, upscale, 1), np.uint8)))
        path = Path(ctx.stage_dir) / f"imagined_vs_real_{b}.gif"
        imageio.mimsave(path, frames, duration=0.6, loop=0)
        paths.append(str(path))
    return paths, texts


def reward_agreement_lines(ctx, models: tuple, out: Path) -> list[str]:
    """Runs rl/wm_agreement.py's check with models = common.final_policy_and_world_model(ctx), writes
    wm_agreement.json, returns its markdown section."""
    r = ctx.config.report
    m = wm_agreement.run_check(ctx.config, *models,
                               jax.random.PRNGKey(ctx.config.seed + 777), r.agreement_states,
                               r.agreement_samples, r.agreement_chunks, common.load_state_probe(ctx))
    (out / "wm_agreement.json").write_text(wm_agreement.to_json(m))
    fmt = lambda x: f"{x:.3f}" if x == x else "n/a"  # noqa: E731  (NaN: no mixed state)
    return ["## Does the imagined reward rank chunks like the simulator?", "",
            f"{m['samples']} Flow-SDE chunks from {r.agreement_states} states x {r.agreement_chunks} chunk "
            f"positions ({r.agreement_samples} per state); simulator success after the chunk: "
            f"{m['success_rate']:.3f}. AUC of the world-model reward for that success, read from (see "
            "vlambpo_jax/rl/wm_agreement.py):", "",
            "| reward read from | AUC, all chunks | AUC within a state |", "|---|---|---|",
            *[f"| {name} | {fmt(m['auc_' + key])} | {fmt(m['within_auc_' + key])} |"
              for name, key in (("imagined next views (what MBPO sees)", "imagined"),
                                ("real next views", "real_next"), ("current views (no prediction)", "current"))],
            "", f"MBPO's binary reward (p(Yes) > rl.reward_threshold = {ctx.config.rl.reward_threshold}) on "
            f"the imagined views calls {m['positive_rate_imagined']:.3f} of the chunks a success (F1 "
            f"{m['f1_imagined']:.3f}); the threshold of best F1 on them is "
            f"{fmt(m['best_f1_threshold_imagined'])} (F1 {m['best_f1_imagined']:.3f}).",
            "", f"States whose chunks had mixed outcomes: {m['mixed_states']}. Pixel MSE of the prediction "
            "vs copying the current frame: " + ", ".join(
                f"view {v}: {m[f'mse_predicted_view{v}']:.0f} vs {m[f'mse_copy_view{v}']:.0f}"
                for v in range(len(ctx.config.views))) + ".",
            "", "Action sensitivity (pairs of chunks from one state): cosine between the predicted and the "
            "real difference of their next views; median ratio of the two differences' norms (0: the "
            "model ignores the action): " + ", ".join(
                f"view {v}: {fmt(m[f'pair_cosine_view{v}'])} / {fmt(m[f'pair_norm_ratio_view{v}'])}"
                for v in range(len(ctx.config.views))) + ".", *drift_lines(m, tuple(ctx.config.views))]


def drift_lines(m: dict, views: tuple[str, ...]) -> list[str]:
    """The open-loop drift table of wm_agreement.open_loop_drift's metrics (none without a probe)."""
    if "drift_imagined_view0" not in m:
        return []
    chunks = len(m["drift_imagined_view0"])
    sources = [("imagined", "imagined"), ("first frame (copy)", "copy"), ("real (probe floor)", "real"),
               ("exact next latents (VAE ceiling)", "exact"), ("imagined vs real view", "imagined_vs_real"),
               ("copy vs real view", "copy_vs_real"), ("exact latents vs real view", "exact_vs_real")]
    cm = lambda xs: " | ".join(f"{100 * x:.1f}" for x in xs)  # noqa: E731

    def ratios(to: str, v: int) -> str:
        pairs = zip(m[f"drift_imagined{to}_view{v}"], m[f"drift_copy{to}_view{v}"])
        cis = m.get(f"drift_ratio_ci_view{v}") if to else None
        return " / ".join((f"{i / c:.2f}" if c > 0 else "-") + (f" [{cis[k][0]:.2f}, {cis[k][1]:.2f}]" if cis else "")
                          for k, (i, c) in enumerate(pairs))
    return ["", "Open-loop drift: the probe's end-effector xyz error (cm) after each chunk, the world model "
            "driven by the policy's chunks from the first frame, against the simulator and against the probe's "
            "reading of the real view (where the probe's own error cancels):", "",
            "| view, read from | " + " | ".join(f"chunk {c + 1}" for c in range(chunks)) + " |",
            "|---|" + "---|" * chunks,
            *[f"| {view}, {name} | {cm(m[f'drift_{src}_view{v}'])} |" for v, view in enumerate(views)
              for name, src in sources if f"drift_{src}_view{v}" in m],
            "", "Imagined over copying after each chunk (issue 18's bar: at most 0.5 after chunks 1 and 2; "
            "against the real view with its 95% bootstrap interval over the states): "
            + "; ".join(f"{view} {ratios(to, v)} against {against}" for v, view in enumerate(views)
                        for to, against in (("", "the simulator"), ("_vs_real", "the real view"))
                        if f"drift_imagined{to}_view{v}" in m) + ".",
            *(["", "Motion gain after each chunk (how far the imagined reading moved from the first frame's along "
               "the real view's move; 1 = as far, 0 = copying): " + "; ".join(
                   f"{view} " + " / ".join(f"{g:.2f}" for g in m[f"motion_gain_imagined_view{v}"])
                   for v, view in enumerate(views)) + "."] if "motion_gain_imagined_view0" in m else [])]


def imagined_vs_logged(ctx, num_videos: int, num_chunks: int, upscale: int = 4) -> tuple[list[str], list[str]]:
    """GIFs of held-out episodes: the logged frames at 0, k, 2k, ... (left) and the world model driven
    open-loop by the logged action chunks from the same first frame (right)."""
    config, k = ctx.config, int(ctx.config.chunk_size)
    samples = dict(np.load(ctx.stage_summary("logged_roots")["heldout"]))
    wm, wm_params, _ = common.load_world_model(ctx)
    predict = jax.jit(wm.predict)
    firsts = np.flatnonzero(samples["t"] == 0)[:num_videos]
    paths, texts = [], []
    for b, row in enumerate(firsts):
        T = int(samples["episode_length"][row])
        real, imagined = [samples["images"][row]], [samples["images"][row]]
        for c in range(num_chunks):
            t = c * k
            if t >= T - 1:
                break
            s = row + t
            real.append(samples["images"][row + min(t + k, T - 1)])
            imagined.append(np.asarray(predict(
                wm_params, jnp.asarray(imagined[-1][None]), jnp.asarray(samples["wm_tokens"][s:s + 1]),
                jnp.asarray(samples["wm_token_mask"][s:s + 1]), jnp.asarray(samples["actions"][s:s + 1]),
                jax.random.fold_in(jax.random.PRNGKey(config.seed + 4242), b * 1000 + c)))[0])
        frames = []
        for r, m in zip(real, imagined):
            row_img = np.concatenate([r[0], r[1], np.full_like(r[0][:, :2], 255), m[0], m[1]], 1)
            frames.append(np.kron(row_img, np.ones((upscale, upscale, 1), np.uint8)))
        path = Path(ctx.stage_dir) / f"imagined_vs_logged_{b}.gif"
        imageio.mimsave(path, frames, duration=0.6, loop=0)
        paths.append(str(path))
        texts.append(str(samples["instruction"][row]))
    return paths, texts


def run(ctx) -> dict:
    workdir = Path(ctx.workdir)
    out = Path(ctx.stage_dir)
    finished = ctx.finished()
    times = stage_times(finished)
    steps = real_env_steps(finished)
    results_path = workdir / "evaluate" / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    plot_curves(workdir, out / "curves.png")
    lines = ["# VLA-MBPO run report", "",
             f"Workdir `{workdir}`; the config is in config.json there.", ""]
    offline_mode = results.get("mode") == "offline"
    if offline_mode:
        logged = finished.get("logged_roots")
        lines += offline.report_lines(results, logged["summary"].get("logged_steps") if logged else None)
    elif results:
        lines += ["## Success rates (simulator, deterministic sampling)", "",
                  results_table(results, steps), ""]
    lines += ["## Wall time per stage", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {s} | {t:.1f} |" for s, t in times.items()]
    lines += ["", f"Total: {sum(times.values()):.1f} s", "", "![curves](curves.png)", ""]
    if "mbpo" in finished and plot_rl_curves(workdir, out / "rl_curves.png", finished["mbpo"]["summary"]):
        lines += ["## RL, per iteration", "", f"World: {finished['mbpo']['summary'].get('world')}. Branch "
                  "success is under the stochastic training sampler; eval/success (when rl.eval_every > 0) "
                  "under deterministic sampling.", "", "![rl curves](rl_curves.png)", ""]
    videos = []
    has_wm = "wm_finetune" in finished
    if has_wm and not has_simulator(ctx.config) and "logged_roots" in finished:
        videos, instructions = imagined_vs_logged(ctx, ctx.config.report.num_videos,
                                                  ctx.config.report.video_chunks)
        lines += ["## Imagined vs logged", "", "Each GIF: a held-out logged episode (head | wrist at "
                  "steps 0, k, 2k, ...), then the world model (head | wrist) driven open-loop by the "
                  "logged action chunks from the same first frame.", ""]
        lines += [f"- `{Path(v).name}`: {text}" for v, text in zip(videos, instructions)]
    elif has_wm and has_simulator(ctx.config):
        models = common.final_policy_and_world_model(ctx)  # loaded once for the videos and the check
        videos, instructions = imagined_vs_real(ctx, models, ctx.config.report.num_videos,
                                                ctx.config.report.video_chunks)
        lines += ["## Imagined vs real", "", "Each GIF: simulator head | wrist, then world model "
                  "head | wrist, driven by the same action chunks from the same start.", ""]
        lines += [f"- `{Path(v).name}`: {text}" for v, text in zip(videos, instructions)]
        if ctx.config.report.get("agreement_states", 0):
            lines += ["", *reward_agreement_lines(ctx, models, out)]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    print(f"[report] wrote {out / 'report.md'}")
    return {"report": str(out / "report.md"), "videos": len(videos), "total_seconds": sum(times.values())}
