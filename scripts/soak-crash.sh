#!/usr/bin/env bash
# Crash soak (C20): kill -9 a journal writer and the HTTP server N times each (default 1000),
# on SQLite and on PostgreSQL, checking after every kill that no acknowledged command was lost,
# none was applied twice, and the recovered state hash equals the replay of the journal's prefix.
#
#   scripts/soak-crash.sh [N] [extra pytest args]
#   scripts/soak-crash.sh 1000                      # everything: 4 x 1000 kills
#   scripts/soak-crash.sh 1000 -k "server and sqlite"
#
# The seed is random unless PERPMARGIN_CRASH_SEED is set; it is printed first, so a failing
# run can be repeated exactly. PostgreSQL is PERPMARGIN_TEST_PG (default
# postgresql://postgres@127.0.0.1:5432/test); its tests skip, saying why, when it is unreachable.
# See docs/durability.md.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
N="${1:-1000}"
if [ "$#" -gt 0 ]; then shift; fi
case "$N" in ''|*[!0-9]*) echo "usage: scripts/soak-crash.sh [N] [pytest args]" >&2; exit 2 ;; esac
if [ "$N" -lt 1000 ]; then echo "note: N=$N is below the 1000 repetitions of the documented soak" >&2; fi
export PERPMARGIN_CRASH_SOAK="$N"
export PERPMARGIN_CRASH_SEED="${PERPMARGIN_CRASH_SEED:-$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')}"
echo "crash soak: $N repetitions per test, seed PERPMARGIN_CRASH_SEED=$PERPMARGIN_CRASH_SEED"
exec .venv/bin/python -m pytest tests/service/test_crash.py -m slow -q -s -p no:cacheprovider "$@"
