#!/usr/bin/env bash
# The GPU figures of the GPU issue, in one call of the lent device (10 minutes at most):
#   1. JAX: generator, training (model.fit through DataGeneratorUNet2D) and
#      testing.py's prediction loop at 256x256x2 (bench/benchmark.py --size full)
#   2. torch: the same training through the same generator
#   3. a model trained under JAX loads (safe mode) and predicts the same under
#      JAX and torch (bench/backends.py; run it here under TensorFlow afterwards)
#   4. quality at GPU scale: bench/quality.py --scale gpu (the `gpu` preset)
# Usage, from the repository root (the device tool sets OUT; wheels in .whl/ as README "Development" says):
#   bash bench/gpu_session.sh                 # PARTS=speed (default): 1-3, about 5 minutes on an H200
#   PARTS=quality bash bench/gpu_session.sh   # 4 with the issue's 5 minutes of training, about 9 minutes
#   SIZE=small SCALE=tiny PARTS=speed,quality bash bench/gpu_session.sh   # the plumbing, ~3 minutes on a CPU
# A 15-minute lease (machine start included) fits one of the two parts, not both: on
# 2026-12-04 both in one call left the quality run 2 minutes of training (one epoch) and
# no time to score it.
# Results: $OUT/results.json (every figure), $OUT/log.txt (all output), and
# $OUT/backends/ (model.keras, samples.npy, the JAX probabilities).
set -uo pipefail
SIZE=${SIZE:-full}
SCALE=${SCALE:-gpu}
PARTS=${PARTS:-speed}
LIMIT=${LIMIT:-570}                 # seconds for the whole script (the device call allows 600)
case "$PARTS" in quality) TRAIN_MINUTES=${TRAIN_MINUTES:-5} ;; *) TRAIN_MINUTES=${TRAIN_MINUTES:-2} ;; esac
OUT=${OUT:-gpu_out}
mkdir -p "$OUT/backends"
LOG="$OUT/log.txt"
rm -rf /tmp/gpu_*.json /tmp/gpu_quality   # a figure missing from this run must not come from an earlier one
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=/tmp/site
fi
export PYTHONUNBUFFERED=1 NO_ALBUMENTATIONS_UPDATE=1 TQDM_DISABLE=1 MPLBACKEND=Agg TF_CPP_MIN_LOG_LEVEL=3
step() {  # step NAME SECONDS command...: run with a time limit, output into the log, never abort the script
    local name=$1 limit=$2; shift 2
    local left=$((LIMIT - SECONDS))
    [ "$limit" -gt "$left" ] && limit=$left
    echo "=== $name (limit ${limit}s, at ${SECONDS}s)" | tee -a "$LOG"
    if [ "$limit" -le 5 ]; then echo "skipped: no time left" | tee -a "$LOG"; return; fi
    timeout "$limit" "$@" >> "$LOG" 2>&1
    echo "=== $name: exit $? at ${SECONDS}s" | tee -a "$LOG"
}
{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv 2>&1 || true
  python3 -c "import jax, keras, numpy; print('jax', jax.__version__, jax.devices(), 'keras', keras.__version__, 'numpy', numpy.__version__)"
  python3 -c "import torch; print('torch', torch.__version__, torch.cuda.is_available())"; nproc; } >> "$LOG" 2>&1

if [[ ",$PARTS," == *",speed,"* ]]; then
    step "jax throughput" 140 env KERAS_BACKEND=jax python3 -m bench.benchmark --size "$SIZE" \
        --only generator,host_inference,training,inference --save-model "$OUT/backends" --out /tmp/gpu_jax.json
    # 75 s was too short on 2026-12-04 (data building included): torch runs op by op
    step "torch training" 150 env KERAS_BACKEND=torch python3 -m bench.benchmark --size "$SIZE" \
        --only training --out /tmp/gpu_torch.json
    for backend in jax torch; do
        step "backends: $backend" 30 sh -c "KERAS_BACKEND=$backend python3 -m bench.backends '$OUT/backends' > /tmp/gpu_backends_$backend.json"
    done
    rm -f "$OUT"/backends/probs_torch_*.npy   # compared above; the JAX ones travel back for TensorFlow
fi
[[ ",$PARTS," == *",quality,"* ]] && step "quality" 540 env KERAS_BACKEND=jax python3 -m bench.quality --scale "$SCALE" --test-domains standard,first-build \
    --set MAX_TRAINING_MINUTES="$TRAIN_MINUTES" --workdir /tmp/gpu_quality --out /tmp/gpu_quality.json

grep -a "^=== " "$LOG" | tail -n 12
python3 - "$OUT/results.json" <<'EOF' 2>&1 | tee -a "$LOG"
import json, sys
from pathlib import Path
out = {}
for key, path in {"jax": "/tmp/gpu_jax.json", "torch": "/tmp/gpu_torch.json",
                  "backends_jax": "/tmp/gpu_backends_jax.json", "backends_torch": "/tmp/gpu_backends_torch.json",
                  "quality": "/tmp/gpu_quality.json"}.items():
    p = Path(path)
    try:
        out[key] = json.loads(p.read_text())
    except (OSError, ValueError) as exc:
        out[key] = {"missing": str(exc)}
Path(sys.argv[1]).write_text(json.dumps(out, indent=2) + "\n")
print("results:", {k: ("ok" if "missing" not in v else "missing") for k, v in out.items()})
def g(d, *keys):  # nested get, None where a part is missing
    for k in keys:
        d = d.get(k) if isinstance(d, dict) else None
    return d
for b in ("jax", "torch"):
    r = out[b]
    print(b, "precision", g(r, "config", "precision"), "train img/s", g(r, "training", "images_per_s"),
          "generator uint8 samples/s", g(r, "generator", "uint8", "samples_per_s"),
          "inference slices/s", {k: v["slices_per_s"] for k, v in (g(r, "inference", "per_batch_size") or {}).items()},
          "host side slices/s", g(r, "host_inference", "slices_per_s"))
for b in ("backends_jax", "backends_torch"):
    print(b, {k: (v["max_abs_diff"], v["mask_dice"]) for k, v in (out[b].get("against") or {}).items()})
for rep in out["quality"].get("repeats", []):
    print("quality train s", rep.get("training_seconds"), "epochs", rep.get("epochs_done"), "val", rep.get("best_val_dice"))
    for dom, c in rep["cohorts"].items():
        print(" ", dom, "dice", c["dice_mean"], c["dice_ci"], "median", c["dice_median"], "sens", c["case_sensitivity"],
              "fp/case", c["fp_components_per_case"], "spec", c["specificity"])
EOF
