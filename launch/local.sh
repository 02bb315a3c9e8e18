#!/usr/bin/env bash
# N JAX processes on this machine (CPU), to test multi-host code paths without a cluster.
#
#   launch/local.sh NUM_PROCESSES [DEVICES_PER_PROCESS] -- [ssfer_jax.main flags]
#
# e.g. two processes of two fake CPU devices each (4 global devices), a short run:
#   launch/local.sh 2 2 -- --config=configs/default.py --workdir=/tmp/ssfer_local \
#       --config.train.num_steps=20 --config.data.batch_size=8
#
# Each process gets JAX_COORDINATOR_ADDRESS=localhost:PORT, JAX_NUM_PROCESSES=N and
# JAX_PROCESS_ID=i; config.distributed.mode='auto' (the default) picks them up and calls
# jax.distributed.initialize (CPU collectives: gloo). Process 0 prints to this terminal;
# process i>0 writes $LOG_DIR/process_i.log (LOG_DIR defaults to WORKDIR/../<name>_logs
# or /tmp). If any process fails, the others are killed and its exit code is returned.
# Environment: PYTHON (default: python), JAX_COORDINATOR_PORT (default: a free port).
set -euo pipefail

usage() { sed -n '4,9p' "$0" >&2; exit 2; }
[[ $# -ge 1 && "$1" =~ ^[0-9]+$ ]] || usage
N=$1; shift
DPP=1
if [[ $# -ge 1 && "$1" =~ ^[0-9]+$ ]]; then DPP=$1; shift; fi
[[ $# -ge 1 && "$1" == "--" ]] && shift
PYTHON=${PYTHON:-python}
PORT=${JAX_COORDINATOR_PORT:-$("$PYTHON" -c 'import portpicker; print(portpicker.pick_unused_port())' 2>/dev/null \
  || "$PYTHON" -c 'import socket; s=socket.socket(); s.bind(("", 0)); print(s.getsockname()[1])')}
LOG_DIR=${LOG_DIR:-$(mktemp -d /tmp/ssfer_local_XXXX)}
mkdir -p "$LOG_DIR"
cd "$(dirname "$0")/.."

pids=()
cleanup() { for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done; }
trap cleanup EXIT INT TERM

start() {  # start PROCESS_ID: one ssfer_jax.main process in the background
  env JAX_COORDINATOR_ADDRESS="localhost:$PORT" JAX_NUM_PROCESSES="$N" JAX_PROCESS_ID="$1" \
      JAX_PLATFORMS=cpu XLA_FLAGS="--xla_force_host_platform_device_count=$DPP" \
      "$PYTHON" -m ssfer_jax.main "${ARGS[@]}"
}
ARGS=("$@")
for ((i = 0; i < N; i++)); do
  if ((i == 0)); then start 0 & else start "$i" > "$LOG_DIR/process_$i.log" 2>&1 & fi
  pids+=($!)
done
echo "launch/local.sh: $N processes x $DPP devices, coordinator localhost:$PORT, logs of processes 1.. in $LOG_DIR" >&2

status=0
for ((k = 0; k < N; k++)); do
  wait -n "${pids[@]}" || { status=$?; break; }
done
if [[ $status -ne 0 ]]; then echo "launch/local.sh: a process failed (exit $status); stopping the others" >&2; fi
exit $status
