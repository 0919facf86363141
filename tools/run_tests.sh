#!/usr/bin/env bash
# README command 2: create .venv with pinned dependencies, then run the test
# suite (8 simulated CPU devices; see tests/conftest.py). Extra arguments go
# to pytest, e.g. `bash tools/run_tests.sh -m slow`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup_env.sh
export ROSETTA_DATA_DIR=${ROSETTA_DATA_DIR:-$(cd .. && pwd)/shared/data}
# Two pytest-xdist workers (ROSETTA_TEST_WORKERS; 0 runs in this process):
# on 2 cores the default suite takes ~9 instead of ~19 minutes, compiling
# in one worker while the other runs. Each test file stays in one worker
# (--dist loadfile), so module fixtures are built once.
# A retaining allocator (rosetta/allocator.py; ROSETTA_ALLOCATOR=system
# opts out): XLA:CPU's per-step buffers stay mapped instead of being
# page-faulted in again at every execution.
eval "$(.venv/bin/python -m rosetta.allocator --shell)"
exec .venv/bin/python -m pytest -q -p no:cacheprovider \
    -n "${ROSETTA_TEST_WORKERS:-2}" --dist loadfile "$@"
