# Shared by scripts/demo.sh and scripts/test.sh: make .venv with Python >= 3.11 and install
# the project into it (again only when pyproject.toml changed).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# Cache compiled bytecode: without it every process (CLI run, test server, Dask worker)
# recompiles pandas, matplotlib and friends from source, seconds each.
unset PYTHONDONTWRITEBYTECODE
PY=""
for cand in python3.11 python3.12 python3.13 python3; do
  if command -v "$cand" >/dev/null 2>&1 && "$cand" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    PY="$cand"; break
  fi
done
if [ -z "$PY" ]; then echo "perpmargin needs Python >= 3.11 on PATH" >&2; exit 1; fi
if [ ! -x .venv/bin/python ]; then "$PY" -m venv .venv; fi
extras="${1:-}"
stamp=".venv/.installed${extras:+-$extras}"
want="$(cat pyproject.toml | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  # uv (from PyPI) resolves and installs the wheels in parallel: a cold install takes seconds, not minutes.
  .venv/bin/python -m pip install --quiet --disable-pip-version-check "uv>=0.4"
  target="."; if [ -n "$extras" ]; then target=".[$extras]"; fi
  .venv/bin/uv pip install --quiet --python .venv/bin/python -e "$target"
  echo "$want" > "$stamp"
fi
