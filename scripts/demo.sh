#!/usr/bin/env bash
# Install everything (idempotent), then start the local demo: broker, Redis, simulator, syncmon.
# Usage: bash scripts/demo.sh [syncmon dev options, e.g. --syncs 100 --port 8000]
set -euo pipefail
SYNCMON_SETUP=demo source "$(dirname "$0")/setup.sh"
exec .venv/bin/syncmon dev "$@"
