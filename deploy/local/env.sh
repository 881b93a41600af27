# Sourced by deploy/local/demo and deploy/local/test: a virtualenv with the project in it,
# and the local stack up. Re-running is cheap: pip runs only when pyproject.toml changed.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$repo"
PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "badge-worker needs Python 3.11+ (set PYTHON=...)" >&2
  exit 1
fi
if [[ ! -x .venv/bin/python ]]; then
  "$PYTHON" -m venv .venv 2>/dev/null || {
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null && "$PYTHON" -m venv .venv; }
fi
stamp=.venv/.installed-$(sha1sum pyproject.toml | cut -c1-12)
if [[ ! -f $stamp ]]; then
  echo "[env] installing badge-worker and its test tools into .venv" >&2
  .venv/bin/python -m pip install -q --upgrade pip >&2
  .venv/bin/python -m pip install -q -e '.[dev]' >&2
  rm -f .venv/.installed-*
  touch "$stamp"
fi
export PATH="$repo/.venv/bin:$PATH"
# The dev install has the otel extra but no collector runs here: spans off unless asked for.
export OTEL_SDK_DISABLED=${OTEL_SDK_DISABLED:-true}
deploy/local/stack up
