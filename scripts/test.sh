#!/usr/bin/env bash
# Quickstart command 2: set up and run the whole test suite: pytest, ruff, mypy --strict
# (installs the Python packages into .venv and Debian's chromium for the report screenshot test).
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh" dev
source "$(dirname "${BASH_SOURCE[0]}")/_browser.sh"
set -x
.venv/bin/ruff check src tests benchmarks
.venv/bin/mypy
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
