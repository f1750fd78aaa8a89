#!/usr/bin/env bash
# One pass of the checks that need an accelerator, for a short lease of a GPU/TPU machine:
#   1. execution_parity.py: cuDNN attention, fused generators, bfloat16 and the device's
#      float32 give the model the float32 reference computes (fails the script if not);
#   2. mfu.py: the trainer's step at batch 128 in bfloat16 (model-FLOPs utilisation),
#      rematerialised if the plain step fails;
#   3. model_speed.py: fused against separate generators and cuDNN against XLA attention,
#      interleaved, forward pass at batch 128 in bfloat16;
#   4. the main job end to end on the embedded phantoms (configs/all.py from scratch,
#      bfloat16, a few steps, evaluation at the end): the user's command on this device;
#   5. input_speed.py: whether this machine's CPUs feed the device's step rate.
# Each step has its own time limit so that one slow step leaves the others' results;
# everything lands in OUT (default ./accelerator_check): each step's log, and the JSON
# reports of parity, mfu, speed and input. STEPS names the steps to run, of
# "parity mfu speed main input" (all by default); another name is refused before any work
# (a misspelt one ran nothing and passed).
#     bash benchmarks/accelerator_check.sh [OUT]
#     PYTHON=python3 STEPS="parity mfu" bash benchmarks/accelerator_check.sh /tmp/out
set -u
OUT=${1:-accelerator_check}
PY=${PYTHON:-python}
KNOWN_STEPS="parity mfu speed main input"
STEPS=${STEPS-$KNOWN_STEPS}
read -ra names <<<"$STEPS"  # split on blanks, no file-name expansion
for name in ${names[@]+"${names[@]}"}; do
  [[ " $KNOWN_STEPS " == *" $name "* ]] || {
    echo "error: STEPS: unknown step '$name' (known: $KNOWN_STEPS)" >&2; exit 2; }
done
mkdir -p "$OUT" 2>/dev/null || { echo "error: cannot make output folder $OUT" >&2; exit 2; }
OUT=$(cd "$OUT" && pwd)  # the steps run in the repository root
cd "$(dirname "$0")/.." || exit 2
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
status=0

step() {  # step NAME SECONDS COMMAND...: runs it with a time limit, logs to OUT/NAME.log
  local name=$1 limit=$2; shift 2
  echo "=== $name (limit ${limit}s): $*"
  local t0=$SECONDS
  timeout --signal=INT --kill-after=20 "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  tail -n 12 "$OUT/$name.log"
  echo "=== $name: status $rc after $((SECONDS - t0)) s"
  [ "$rc" = 0 ] || status=1
  return "$rc"
}

wants() { [[ " $STEPS " == *" $1 "* ]]; }

{ nvidia-smi -L 2>/dev/null; "$PY" -c 'import jax, flax, optax, orbax.checkpoint as o
print("jax", jax.__version__, "flax", flax.__version__, "optax", optax.__version__,
      "orbax", o.__version__, "devices", jax.devices())'; } 2>&1 | tee "$OUT/env.log"

wants parity && step parity 150 "$PY" benchmarks/execution_parity.py --depth 4 \
  --json "$OUT/parity.json"
if wants mfu; then
  step mfu 150 "$PY" benchmarks/mfu.py --batch 128 --dtype bfloat16 --steps 10 \
    --json "$OUT/mfu.json" ||  # out of memory, say: rematerialised blocks keep less
    step mfu_remat 150 "$PY" benchmarks/mfu.py --batch 128 --dtype bfloat16 --steps 10 \
      --remat --remat-policy dots_with_no_batch_dims_saveable --json "$OUT/mfu_remat.json"
fi
wants speed && step speed 150 "$PY" benchmarks/model_speed.py --dtype bfloat16 --batch 128 \
  --rounds 15 --variants mami,mami_separate,mami_xla_attention,plain_vit \
  --json "$OUT/model_speed.json"
if wants main; then
  run=$(mktemp -d)
  step main 180 "$PY" -m mami_jax.main --config=configs/all.py --workdir="$run" \
    --config.init.require_pretrained=False --config.model.dtype=bfloat16 \
    --config.train.total_steps=40 --config.train.log_every=10 \
    --config.train.eval_at_start=False
  rm -rf "$run"
fi
wants input && step input 100 "$PY" benchmarks/input_speed.py --repeats 2 --batches 4 \
  --workers 0,4,12 --read-threads 2 --json "$OUT/input_speed.json"
exit $status
