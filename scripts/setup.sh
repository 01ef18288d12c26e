#!/usr/bin/env bash
# Installs what syncmon needs on a fresh Debian machine with Python 3.11+ (idempotent).
# Sourced by scripts/demo.sh and scripts/test.sh; run alone it just installs everything.
# SYNCMON_SETUP=demo (set by demo.sh) skips what only the tests need: Prometheus, Alertmanager
# and the test packages, which are most of a first install's time.
set -euo pipefail
for_tests=$([[ "${SYNCMON_SETUP:-all}" == demo ]] && echo 0 || echo 1)
cd "$(dirname "${BASH_SOURCE[0]}")/.."

apt_updated=0
apt_install() {  # apt_install PACKAGE...: one `apt-get update` per run, quiet install
  export DEBIAN_FRONTEND=noninteractive
  echo "apt-get install: $*" >&2
  if ((!apt_updated)); then apt-get update -qq; apt_updated=1; fi
  apt-get install -y -qq "$@" >/dev/null
}

# --- system packages ------------------------------------------------------------------
# "COMMAND:PACKAGE" entries: PACKAGE is installed only when COMMAND is not on PATH.
# Add later needs here (e.g. "prometheus:prometheus", "promtool:prometheus").
APT_NEEDS=("redis-server:redis-server")
if ((for_tests)); then APT_NEEDS+=("promtool:prometheus" "amtool:prometheus-alertmanager"); fi
missing=()
for need in "${APT_NEEDS[@]}"; do
  command -v "${need%%:*}" >/dev/null 2>&1 || missing+=("${need#*:}")
done
if ((${#missing[@]})); then apt_install "${missing[@]}"; fi

# --- Python environment ---------------------------------------------------------------
if [[ ! -x .venv/bin/python ]]; then
  py=$(command -v python3.11 || command -v python3)
  if ! "$py" -m venv .venv; then  # Debian's system python needs python3-venv for ensurepip
    rm -rf .venv
    apt_install python3-venv
    "$py" -m venv .venv
  fi
fi
# Re-run pip only when pyproject.toml changed since the last successful install, or when the
# tests need their packages and the last install was the demo's.
stamp=.venv/.syncmon-installed
sha=$(sha256sum pyproject.toml | cut -d' ' -f1)
target=$( ((for_tests)) && echo '.[test]' || echo '.')
want="$sha $target"
have=$(cat "$stamp" 2>/dev/null || true)
if [[ "$have" != "$want" && "$have" != "$sha .[test]" ]]; then
  log=$(mktemp)
  if ! .venv/bin/python -m pip install -q --disable-pip-version-check -e "$target" >"$log" 2>&1; then
    cat "$log" >&2
    rm -f "$log"
    exit 1
  fi
  rm -f "$log"
  echo "$want" >"$stamp"
fi

