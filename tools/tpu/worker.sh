#!/usr/bin/env bash
# Runs ON each TPU worker; tools/tpu/tpu.py starts it on all of them at once
# (`gcloud compute tpus tpu-vm ssh --worker=all --command=...`).
#
#   bash tools/tpu/worker.sh setup                      # .venv + jax[tpu]
#   bash tools/tpu/worker.sh train MODEL_DIR ARGS...    # rosetta.cli train, in the background
#   bash tools/tpu/worker.sh stop                       # SIGTERM: checkpoint, then exit
#
# Logs and the pid go to $ROSETTA_LOG_DIR (default ~/rosetta-logs).
# `train` sets train.model_dir and distributed.coordinator_address
# ($COORDINATOR_ADDRESS, default 'auto': jax.distributed.initialize() finds
# the TPU slice's coordinator, process count and id by itself).
set -euo pipefail
cd "$(dirname "$0")/../.."
LOG_DIR=${ROSETTA_LOG_DIR:-$HOME/rosetta-logs}
PID_FILE=$LOG_DIR/train.pid

setup() {
  # Not tools/setup_env.sh: that one adds the test and peer extras (torch,
  # transformers), which a TPU worker does not need.
  local py=${PYTHON:-python3.11}
  if ! command -v "$py" >/dev/null; then
    # TPU VM images ship Ubuntu 22.04 with Python 3.10; Rosetta pins 3.11.
    echo "worker.sh: installing python3.11 from apt" >&2
    sudo apt-get update -qq
    sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3.11 python3.11-venv
    py=python3.11
  fi
  if ! "$py" -c 'import sys; assert sys.version_info[:2] == (3, 11)'; then
    echo "worker.sh: Rosetta needs Python 3.11 ($py is $("$py" --version 2>&1)); set PYTHON=/path/to/python3.11" >&2
    exit 1
  fi
  local jax
  jax=$(sed -n "s/.*'jax==\([0-9.]*\)'.*/\1/p" setup.py)
  [[ -n $jax ]] || { echo "worker.sh: no 'jax==X' pin in setup.py" >&2; exit 1; }
  [[ -x .venv/bin/python ]] || "$py" -m venv .venv
  .venv/bin/python -m pip install --quiet --upgrade 'pip==26.3'
  # The pinned versions (constraints.txt) plus libtpu at the pinned JAX.
  .venv/bin/python -m pip install --quiet -c constraints.txt -e . "jax[tpu]==$jax"
  # Import only: touching the TPU here would block on a pod slice until
  # every worker does the same.
  .venv/bin/python -c 'import jax, rosetta.cli; print(f"worker ready: jax {jax.__version__}")'
}

running() { [[ -f $PID_FILE ]] && kill -0 "$(cat "$PID_FILE")" 2>/dev/null; }

train() {
  [[ $# -ge 1 ]] || { echo "usage: worker.sh train MODEL_DIR [rosetta train args...]" >&2; exit 2; }
  local model_dir=$1; shift
  if running; then
    echo "worker.sh: training already running (pid $(cat "$PID_FILE")); stop it first" >&2
    exit 1
  fi
  mkdir -p "$LOG_DIR"
  # nohup + redirects: the job outlives the ssh session that started it.
  nohup .venv/bin/python -m rosetta train "$@" \
    --gin.train.model_dir="'$model_dir'" \
    --gin.distributed.coordinator_address="'${COORDINATOR_ADDRESS:-auto}'" \
    > "$LOG_DIR/train.log" 2>&1 < /dev/null &
  echo $! > "$PID_FILE"
  echo "$(hostname): training started (pid $!), log $LOG_DIR/train.log"
}

stop() {
  if ! running; then
    echo "$(hostname): no training running"
    rm -f "$PID_FILE"
    return 0
  fi
  local pid
  pid=$(cat "$PID_FILE")
  # SIGTERM: the trainer saves a checkpoint and exits (PreemptionGuard in
  # rosetta/checkpoint/manager.py); the same train command resumes from it.
  kill -TERM "$pid"
  for _ in $(seq 600); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 1
  done
  if kill -0 "$pid" 2>/dev/null; then
    echo "$(hostname): pid $pid still running after 10 minutes" >&2
    exit 1
  fi
  rm -f "$PID_FILE"
  echo "$(hostname): training stopped"
}

case ${1:-} in
  setup) setup ;;
  train) shift; train "$@" ;;
  stop) stop ;;
  *) echo "usage: worker.sh {setup | train MODEL_DIR [ARGS...] | stop}" >&2; exit 2 ;;
esac
