# Sourced by scripts/run and scripts/test: makes .venv with the project and its pinned local/test
# dependencies (pymongo 4.13.x for the local mongod 4.0), reinstalling only when the requirements change.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
python=${PYTHON:-python3}
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "error: Python 3.11 or newer is needed (found: $("$python" --version 2>&1)); set PYTHON=/path/to/python3.11" >&2
  exit 2
fi
stamp=$(cat pyproject.toml constraints/local.txt | sha256sum | cut -c1-16)
if [ ! -x .venv/bin/python ] || [ "$(cat .venv/.mscc-stamp 2>/dev/null)" != "$stamp" ]; then
  echo "setting up .venv (first run, or requirements changed)..." >&2
  "$python" -m venv .venv
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -c constraints/local.txt -e ".[test]"
  echo "$stamp" > .venv/.mscc-stamp
fi
export PATH="$root/.venv/bin:$PATH"
