# Sourced by scripts/demo and scripts/test: make ./.venv exist and hold the project, once.
# Idempotent and fast on a second run: re-installs only when pyproject.toml or setup.py change.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "tracelet: creating virtual environment in .venv" >&2
  "$PY" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
want="${TRACELET_EXTRAS:-all,test}"
stamp=".venv/.tracelet-installed"
files="$(cat pyproject.toml setup.py syncer/tracelet/reader/_fastscan.c 2>/dev/null | cksum)"
sig="$want $files"
# Up to date when the last install was of these files and covered every extra wanted (the
# demo wants `all`; a .venv set up by ./scripts/test has `all,test`: no reinstall).
installed_ok() {
  [ -f "$stamp" ] || return 1
  local have_extras have_files
  have_extras="$(cut -d' ' -f1 "$stamp")"; have_files="$(cut -d' ' -f2- "$stamp")"
  [ "$have_files" = "$files" ] || return 1
  local e
  for e in ${want//,/ }; do [[ ",$have_extras," == *",$e,"* ]] || return 1; done
}
if ! installed_ok; then
  echo "tracelet: installing .[$want] into .venv (first run takes about a minute)" >&2
  python -m pip install -q --disable-pip-version-check --upgrade pip >/dev/null 2>&1 || true
  if [[ "$want" == *test* ]]; then
    # The CPU build of PyTorch that lies on this machine's disk; tests use it as a real writer.
    # Pinned and installed FIRST: lightning (a test extra) would otherwise pull a multi-GB CUDA
    # build of torch.
    python -m pip install -q --disable-pip-version-check "torch==2.13.0"
  fi
  python -m pip install -q --disable-pip-version-check -e ".[$want]"
  echo "$sig" > "$stamp"
fi
# Azurite (Microsoft's Azure Storage emulator, from the npm registry) for tests/cloud: installed
# once into .venv/azurite; without npm the Azure tests are skipped with the reason printed.
AZURITE_VERSION=3.37.0  # keep in step with tests/cloud/conftest.py
if [[ "$want" == *test* ]] && [ ! -x .venv/azurite/node_modules/.bin/azurite-blob ]; then
  if command -v npm >/dev/null 2>&1; then
    echo "tracelet: installing azurite@$AZURITE_VERSION into .venv/azurite" >&2
    npm install --prefix .venv/azurite --no-audit --no-fund --loglevel=error \
      "azurite@$AZURITE_VERSION" >/dev/null || echo "tracelet: azurite install failed; Azure tests will be skipped" >&2
  else
    echo "tracelet: npm not found; Azure (Azurite) tests will be skipped" >&2
  fi
fi
