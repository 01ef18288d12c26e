#!/usr/bin/env bash
# Install everything the tests need (idempotent), then run the whole suite.
# Usage: bash scripts/test.sh [pytest args...]
set -euo pipefail
source "$(dirname "$0")/setup.sh"
exec .venv/bin/pytest "$@"
