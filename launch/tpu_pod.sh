#!/usr/bin/env bash
# Train on a Cloud TPU VM pod slice (every worker runs the same command; JAX finds the
# others through the TPU metadata server: config.distributed.mode='auto' -> 'tpu').
#
#   launch/tpu_pod.sh create                 # make the TPU VM slice
#   launch/tpu_pod.sh setup                  # copy this checkout to every worker, install
#   launch/tpu_pod.sh run -- --config=configs/rafdb_dta_snl.py:size=112 \
#       --config.dataset.data_dir=gs://BUCKET/tfds --workdir=gs://BUCKET/runs/rafdb_r18
#   launch/tpu_pod.sh logs                   # fetch every worker's log into ./tpu_logs/
#   launch/tpu_pod.sh delete
#
# Settings (environment): TPU_NAME (ssfer), ZONE (us-west4-a), ACCELERATOR (v5litepod-16:
# 4 hosts x 4 chips), VERSION (v2-alpha-tpuv5-lite), PROJECT (gcloud's default).
# The workdir and data_dir must be gs:// paths that every worker can read and write
# (orbax writes each host's shards there; only process 0 writes metrics and summaries).
# data.batch_size and batch_size * uratio must be multiples of the number of chips.
set -euo pipefail
TPU_NAME=${TPU_NAME:-ssfer}
ZONE=${ZONE:-us-west4-a}
ACCELERATOR=${ACCELERATOR:-v5litepod-16}
VERSION=${VERSION:-v2-alpha-tpuv5-lite}
PROJECT_FLAG=${PROJECT:+--project=$PROJECT}
REPO_DIR='~/ssfer_jax'
ssh_all() { gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" $PROJECT_FLAG --worker=all --command="$1"; }

cmd=${1:-}; shift || true
[[ ${1:-} == "--" ]] && shift
case "$cmd" in
  create)
    gcloud compute tpus tpu-vm create "$TPU_NAME" --zone="$ZONE" $PROJECT_FLAG \
      --accelerator-type="$ACCELERATOR" --version="$VERSION" ;;
  setup)
    tar czf /tmp/ssfer_src.tgz --exclude=.git --exclude='*.pyc' -C "$(dirname "$0")/.." .
    gcloud compute tpus tpu-vm scp /tmp/ssfer_src.tgz "$TPU_NAME":/tmp/ --zone="$ZONE" $PROJECT_FLAG --worker=all
    ssh_all "mkdir -p $REPO_DIR && tar xzf /tmp/ssfer_src.tgz -C $REPO_DIR && cd $REPO_DIR && \
      python3 -m venv ~/venv && ~/venv/bin/pip install -q -U pip && \
      ~/venv/bin/pip install -q 'jax[tpu]==0.10.2' flax==0.12.8 optax==0.2.8 orbax-checkpoint==0.12.8 \
        grain==0.2.18 tensorflow-datasets==4.9.10 ml-collections==1.1.0 importlib_resources pillow \
        tensorboardX gcsfs portpicker && \
      ~/venv/bin/python -c 'import jax; print(jax.process_index(), jax.local_device_count(), jax.device_count())'" ;;
  run)
    # nohup: the run survives a dropped ssh; each worker logs to ~/ssfer_run.log.
    args=$(printf '%q ' "$@")
    ssh_all "cd $REPO_DIR && nohup env TF_CPP_MIN_LOG_LEVEL=2 ~/venv/bin/python -m ssfer_jax.main \
      --config.distributed.mode=tpu $args > ~/ssfer_run.log 2>&1 < /dev/null & echo started on \$(hostname)" ;;
  logs)
    mkdir -p tpu_logs
    n=$(gcloud compute tpus tpu-vm describe "$TPU_NAME" --zone="$ZONE" $PROJECT_FLAG \
        --format='value(networkEndpoints.len())' 2>/dev/null || echo 1)
    for ((w = 0; w < ${n:-1}; w++)); do
      gcloud compute tpus tpu-vm scp "$TPU_NAME":~/ssfer_run.log "tpu_logs/worker_$w.log" \
        --zone="$ZONE" $PROJECT_FLAG --worker="$w" || true
    done
    tail -n 3 tpu_logs/worker_0.log ;;
  stop)
    ssh_all "pkill -f 'ssfer_jax.main' || true" ;;
  delete)
    gcloud compute tpus tpu-vm delete "$TPU_NAME" --zone="$ZONE" $PROJECT_FLAG --quiet ;;
  *)
    sed -n '2,18p' "$0"; exit 2 ;;
esac
