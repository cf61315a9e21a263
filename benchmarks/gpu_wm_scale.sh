#!/usr/bin/env bash
# One prepared GPU session for issue 18's world-model lever that the 2-core CPU cannot afford: the
# world model's depth and fine-tuning steps against the open-loop drift (docs/results.md section 57:
# at 600 fine-tuning steps, 6 layers drift as little as 3 layers after 3,600).
#
# Usage, from the repository root on a machine whose Python already has jax (with its GPU plugin),
# flax, optax, orbax-checkpoint and chex:
#   WHEELS=DIR OUT=DIR [MODELS="3:3600 6:3600 12:3600"] [CONFIG=configs/tabletop.py:claims] \
#     [STEP_TIMEOUT=SECONDS] [EXTRA="--config.x=y ..."] bash benchmarks/gpu_wm_scale.sh
# WHEELS: as in benchmarks/gpu_online_ppo.sh (offline wheels for what that Python lacks; unset: none).
# MODELS: DEPTH:FINETUNE_STEPS pairs; each trains its own world model (pretraining and fine-tuning) on
# the base run's demos and collected rollouts, then reads the drift from the same 192 states.
# OUT receives device.txt, base.log, one <depth>_<steps>.log and drift_<depth>_<steps>.json per model,
# and summary.jsonl: per model, the head and wrist views' imagined-over-copying ratio after 1 and 2
# chunks (issue 18's bar: at most 0.5) with the bootstrap interval, and the stage seconds.
# The finer VAE of docs/results.md section 58 (floor 0.14 of copying, against 0.44):
#   EXTRA="--config.wm.vae.widths=(32,) --config.wm.vae.downsample=2 --config.wm.latent_patch=2 --config.wm.vae.steps=2000"
# The one-step deterministic prediction, trained directly (section 59: the best one-chunk drift on CPU,
# where only fine-tuning used it; here pretraining does too):
#   EXTRA="--config.wm.zero_noise_fraction=1.0 --config.wm.num_sample_steps=1"
set -uo pipefail
OUT=${OUT:?set OUT to a folder for the results}
MODELS=${MODELS:-"3:3600 6:3600 12:3600"}
CONFIG=${CONFIG:-configs/tabletop.py:claims}
EXTRA=${EXTRA:-}
WORKDIR=${WORKDIR:-/tmp/gpu_wm_scale}
STEP_TIMEOUT=${STEP_TIMEOUT:-0}   # seconds per command; then SIGTERM (0: no limit)
PY=${PY:-python3}
export PYTHONUNBUFFERED=1
mkdir -p "$OUT" "$WORKDIR"

if [ -n "${WHEELS:-}" ]; then
  "$PY" -m pip install -q --no-index --no-deps --no-build-isolation "$WHEELS"/* || exit 1
fi
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null | tee "$OUT/device.txt"
"$PY" -c "import jax; print('jax', jax.__version__, jax.devices())" | tee -a "$OUT/device.txt"

main() {  # main WORKDIR FLAGS...: one vlambpo_jax.main command under the step timeout
  local wd=$1; shift
  # shellcheck disable=SC2086
  timeout -s TERM "$STEP_TIMEOUT" "$PY" -m vlambpo_jax.main --config="$CONFIG" --workdir="$wd" \
    --config.log.progress=off "$@" $EXTRA
}

base=$WORKDIR/base
main "$base" --stages=demos,sft,collect > "$OUT/base.log" 2>&1 || { tail -5 "$OUT/base.log"; exit 1; }
status=0
: > "$OUT/summary.jsonl"
for model in $MODELS; do
  depth=${model%%:*}; steps=${model##*:}; name=${depth}_${steps}
  wd=$WORKDIR/$name
  mkdir -p "$wd"
  for stage in demos norm_stats sft collect; do [ -e "$wd/$stage" ] || ln -s "$base/$stage" "$wd/$stage"; done
  flags=(--config.wm.umm.depth="$depth" --config.wm.finetune_steps="$steps")
  start=$(date +%s)
  if main "$wd" --stages=wm_pretrain,wm_finetune "${flags[@]}" > "$OUT/$name.log" 2>&1; then
    train_s=$(( $(date +%s) - start ))
    # shellcheck disable=SC2086
    timeout -s TERM "$STEP_TIMEOUT" "$PY" -m vlambpo_jax.tools.wm_agreement --config="$CONFIG" --workdir="$wd" \
      --drift_only --states=192 --chunks=2 --policy=sft "${flags[@]}" $EXTRA --out="$OUT/drift_$name.json" \
      >> "$OUT/$name.log" 2>&1 || status=1
    "$PY" - "$OUT/drift_$name.json" "$depth" "$steps" "$train_s" >> "$OUT/summary.jsonl" <<'EOF'
import json, sys
m = json.load(open(sys.argv[1]))
row = {"depth": int(sys.argv[2]), "finetune_steps": int(sys.argv[3]), "train_seconds": int(sys.argv[4])}
for v, view in enumerate(("head", "wrist")):
    row[view] = {"ratio": [a / b for a, b in zip(m[f"drift_imagined_vs_real_view{v}"], m[f"drift_copy_vs_real_view{v}"])],
                 "ci": m[f"drift_ratio_ci_view{v}"]}
print(json.dumps(row))
EOF
  else
    status=1; tail -5 "$OUT/$name.log"
  fi
done
cat "$OUT/summary.jsonl" 2>/dev/null
exit "$status"
