#!/usr/bin/env bash
# Trains dpiqa_jax on a Cloud TPU VM pod slice: one training process per TPU host, all started
# with `gcloud compute tpus tpu-vm ssh --worker=all`. jax.distributed finds the other hosts by
# itself on TPU VMs (launch.train --multihost=auto), so no coordinator flags are needed.
#
#   TPU_NAME=dpiqa-v5e-32 ZONE=us-west4-a ACCELERATOR=v5litepod-32 launch/tpu_pod.sh create
#   TPU_NAME=... ZONE=... launch/tpu_pod.sh setup        # copy this checkout, install requirements
#   TPU_NAME=... ZONE=... launch/tpu_pod.sh train --config=configs/teacher.py:koniq10k \
#       --config.mesh=data=-1,fsdp=4 --config.sd_dir=/data/sd15 \
#       --config.prompt_embeddings=/data/prompts.npy --config.data.data_dir=/data/tfds \
#       --workdir=gs://BUCKET/runs/teacher_koniq
#   TPU_NAME=... ZONE=... launch/tpu_pod.sh logs          # last lines of every host's log
#   TPU_NAME=... ZONE=... launch/tpu_pod.sh stop          # kill the training processes
#   TPU_NAME=... ZONE=... launch/tpu_pod.sh delete
#
# Every host must see the same data, weights and workdir: put them on a bucket (gs://, read by
# TFDS/Orbax through etils) or copy them to the same path on each host. A restarted `train` with
# the same workdir resumes from the latest checkpoint.
set -euo pipefail

: "${TPU_NAME:?set TPU_NAME}"
: "${ZONE:?set ZONE}"
ACCELERATOR="${ACCELERATOR:-v5litepod-32}"
RUNTIME="${RUNTIME:-v2-alpha-tpuv5-lite}"
PROJECT_FLAG=${PROJECT:+--project=${PROJECT}}
REMOTE_DIR="${REMOTE_DIR:-dpiqa_jax}"
LOG="${LOG:-train.log}"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

on_all_workers() {
  gcloud compute tpus tpu-vm ssh "${TPU_NAME}" --zone="${ZONE}" ${PROJECT_FLAG} --worker=all \
    --command="$1"
}

command="${1:?usage: tpu_pod.sh create|setup|train ARGS...|logs|stop|delete}"
shift
case "${command}" in
  create)
    gcloud compute tpus tpu-vm create "${TPU_NAME}" --zone="${ZONE}" ${PROJECT_FLAG} \
      --accelerator-type="${ACCELERATOR}" --version="${RUNTIME}"
    ;;
  setup)
    archive="$(mktemp -d)/dpiqa_jax.tar.gz"
    git -C "${REPO}" archive --format=tar.gz -o "${archive}" HEAD
    gcloud compute tpus tpu-vm scp "${archive}" "${TPU_NAME}:~/dpiqa_jax.tar.gz" \
      --zone="${ZONE}" ${PROJECT_FLAG} --worker=all
    on_all_workers "mkdir -p ~/${REMOTE_DIR} && tar -xzf ~/dpiqa_jax.tar.gz -C ~/${REMOTE_DIR} \
      && cd ~/${REMOTE_DIR} && pip install -q 'jax[tpu]' -r requirements.txt"
    ;;
  train)
    args="$(printf ' %q' "$@")"
    on_all_workers "cd ~/${REMOTE_DIR} && nohup python3 -m launch.train${args} > ~/${LOG} 2>&1 & \
      echo \$! > ~/train.pid"
    ;;
  logs)
    on_all_workers "tail -n 20 ~/${LOG}"
    ;;
  stop)
    on_all_workers "kill \$(cat ~/train.pid) 2>/dev/null || true"
    ;;
  delete)
    gcloud compute tpus tpu-vm delete "${TPU_NAME}" --zone="${ZONE}" ${PROJECT_FLAG} --quiet
    ;;
  *)
    echo "unknown command ${command}; expected create, setup, train, logs, stop or delete" >&2
    exit 2
    ;;
esac
