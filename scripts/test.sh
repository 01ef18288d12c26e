#!/usr/bin/env bash
# Install everything the tests need (idempotent), then run the whole suite.
# Usage: bash scripts/test.sh [pytest args...]
set -euo pipefail
source "$(dirname "$0")/setup.sh"
# Two workers (pytest-xdist), each with its own redis-server and broker: the suite waits on
# subprocesses and services about half the time, so this halves it even on 2 vCPUs.
# SYNCMON_TEST_WORKERS=0 runs it in one process (as does `-n 0` among the arguments).
exec .venv/bin/pytest -n "${SYNCMON_TEST_WORKERS:-2}" "$@"
