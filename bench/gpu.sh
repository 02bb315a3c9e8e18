#!/usr/bin/env bash
# The GPU benchmark in one command (bench/gpu_bench.py has the details), < 8 minutes on
# one H200:
#
#     bash bench/gpu.sh            # writes $OUT (or runs/gpu_bench): gpu_bench.json + .md
#     SMOKE=1 bash bench/gpu.sh    # CPU dry run: 32 px, B = 2, one round; every code path
#
# Time plan (worst case ~7.5 min with the installs and imports): steps part killed at 270 s
# (no new cell after 200 s), torch.compile part at 100 s, input part at 60 s, report seconds.
#
# Packages the GPU machine lacks (it has jax[cuda], flax, optax, orbax-checkpoint, torch,
# tensorboard) travel as Python 3.12 wheels in .whl/ at the repository root (<= 64 MiB
# together; .whl/ is git-ignored, so name it in the run tool's `carry`). Download them
# with the versions of the project's environment:
#
#     for p in grain==0.2.18 tensorflow-datasets==4.9.10 array-record==0.8.6 \
#              ml-collections==1.1.0 tensorboardX==2.6.5; do
#       pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#         --platform manylinux_2_17_x86_64 -d .whl "$p"; done
#
# If the import check below names another missing module (a dependency of those, e.g.
# tensorflow_datasets' own), download its wheel the same way.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-runs/gpu_bench}
mkdir -p "$OUT"
export OUT PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export TF_CPP_MIN_LOG_LEVEL=2

if compgen -G ".whl/*.whl" > /dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PYTHONPATH
fi
"$PY" - <<'PY'
import importlib, sys
missing = [m for m in ("jax", "flax", "optax", "orbax.checkpoint", "torch", "grain",
                       "tensorflow_datasets", "array_record", "ml_collections", "tensorboardX")
           if importlib.util.find_spec(m.split(".")[0]) is None]
try:
  import ssfer_jax.train  # noqa: F401  (every import the bench needs)
except ImportError as e:
  missing.append(f"{e.name} (imported by ssfer_jax)")
if missing:
  sys.exit("gpu.sh: missing Python modules: " + ", ".join(missing)
           + "; put their cp312 wheels in .whl/ (see this script's header)")
import jax, torch
print("jax", jax.__version__, jax.devices(), "| torch", torch.__version__,
      "cuda" if torch.cuda.is_available() else "cpu", flush=True)
PY

if [[ "${SMOKE:-0}" == 1 ]]; then
  ARGS=(--sizes=32 --batches=2 --uratio=1 --steps=1 --rounds=1 --warmup=1 --input_batches=2
        --budget_s=600)
  SCALE=${LIMIT_SCALE:-4}   # a 2-core CPU compiles the bfloat16 step in about a minute
else
  ARGS=()
  SCALE=${LIMIT_SCALE:-1}
fi
t0=$(date +%s)
run_part() {  # run_part PART LIMIT_S: one process per part, so a stuck part cannot eat the rest
  local part=$1 limit=$(( $2 * SCALE ))
  echo "== $part (limit ${limit}s, at $(( $(date +%s) - t0 )) s)"
  timeout --signal=KILL "$limit" "$PY" bench/gpu_bench.py --part="$part" --out="$OUT" \
    "${ARGS[@]}" "${@:3}" || echo "== $part ended with status $? (kept what it wrote)"
}
run_part steps 270
run_part torch_compile 100 --sizes=224 --batches=64 --modes=dta_snl \
  $( [[ "${SMOKE:-0}" == 1 ]] && echo "--sizes=32 --batches=2 --dtypes=float32" )
run_part input 60
run_part report 30
echo "== done in $(( $(date +%s) - t0 )) s: $OUT/gpu_bench.md, $OUT/gpu_bench.json"
