#!/usr/bin/env bash
# README command 2: create .venv with pinned dependencies, then run the test
# suite (8 simulated CPU devices; see tests/conftest.py). Extra arguments go
# to pytest, e.g. `bash tools/run_tests.sh -m slow`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup_env.sh
export ROSETTA_DATA_DIR=${ROSETTA_DATA_DIR:-$(cd .. && pwd)/shared/data}
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
