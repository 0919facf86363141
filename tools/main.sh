#!/usr/bin/env bash
# README command 1: create .venv with pinned dependencies, then run Rosetta's
# main job. Extra arguments go to the job (try --help).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup_env.sh
export ROSETTA_DATA_DIR=${ROSETTA_DATA_DIR:-$(cd .. && pwd)/shared/data}
exec .venv/bin/python -m translation.main_job "$@"
