#!/usr/bin/env bash
# One prepared GPU session for the RL engine: online-PPO throughput, then a longer online-PPO run than
# the 2-core CPU allows (demos -> SFT -> PPO in the simulator -> paired evaluation), all on one GPU.
#
# Usage, from the repository root on a machine whose Python already has jax (with its GPU plugin),
# flax, optax, orbax-checkpoint and chex:
#   WHEELS=DIR OUT=DIR [ITERATIONS=40] [SFT_STEPS=8000] [CONFIG=configs/tabletop.py[:ARG]] \
#     [PIPELINE_TIMEOUT=SECONDS] [EXTRA="--config.x=y ..."] \
#     bash benchmarks/gpu_online_ppo.sh
# WHEELS: a folder of wheels for what that Python lacks (mujoco, mujoco-mjx, ml-collections,
# tensorflow-datasets and their small dependencies; `pip download --no-deps --python-version X.Y
# --only-binary=:all: ...`), installed offline first; empty or unset: install nothing.
# OUT receives ppo_throughput.json, the run's log (run.log) and online_ppo.json
# (benchmarks/pipeline_summary.py on the run's workdir: stage times, the PPO curve, the evaluation).
set -uo pipefail
OUT=${OUT:?set OUT to a folder for the results}
ITERATIONS=${ITERATIONS:-40}
SFT_STEPS=${SFT_STEPS:-8000}
EXTRA=${EXTRA:-}
WORKDIR=${WORKDIR:-/tmp/gpu_online_ppo}
PIPELINE_TIMEOUT=${PIPELINE_TIMEOUT:-0}   # seconds; then SIGTERM: the running stage checkpoints and stops
PY=${PY:-python3}
CONFIG=${CONFIG:-configs/tabletop.py}
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"

if [ -n "${WHEELS:-}" ]; then
  "$PY" -m pip install -q --no-index --no-deps --no-build-isolation "$WHEELS"/* || exit 1
fi
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null | tee "$OUT/device.txt"
"$PY" -c "import jax; print('jax', jax.__version__, jax.devices())" | tee -a "$OUT/device.txt"

# Flags B of docs/results.md section 22 at chunks of 5 (section 23), the setting PPO has been run with.
PPO_FLAGS="--config.chunk_size=5 --config.rl.world=sim --config.rl.advantage=group --config.rl.group_size=8
  --config.policy.stochastic_step=all --config.policy.noise_level=0.3 --config.policy.log_prob=sum
  --config.rl.num_branches=512 --config.rl.actor_lr=1e-5 --config.rl.minibatch_size=256
  --config.rl.epochs=4 --config.rl.target_kl=0.05"

timeout 150 "$PY" benchmarks/ppo_throughput.py --config="$CONFIG" $PPO_FLAGS $EXTRA --repeats=3 --out="$OUT/ppo_throughput.json"

# shellcheck disable=SC2086
timeout -s TERM "$PIPELINE_TIMEOUT" "$PY" -m vlambpo_jax.main --config="$CONFIG" --workdir="$WORKDIR" \
  --stages=demos,sft,mbpo,evaluate $PPO_FLAGS --config.sft.steps="$SFT_STEPS" \
  --config.sft.eval_episodes=200 --config.rl.iterations="$ITERATIONS" --config.rl.eval_every=10 \
  --config.rl.eval_episodes=100 --config.log.progress=off $EXTRA 2>&1 | tee "$OUT/run.log"
status=${PIPESTATUS[0]}
"$PY" benchmarks/pipeline_summary.py --workdir="$WORKDIR" --out "$OUT/online_ppo.json" \
  --note "benchmarks/gpu_online_ppo.sh ITERATIONS=$ITERATIONS SFT_STEPS=$SFT_STEPS EXTRA=$EXTRA" >/dev/null
exit "$status"
