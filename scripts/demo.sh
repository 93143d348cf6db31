#!/usr/bin/env bash
# Quickstart command 1: set up and run the main job (a journaled scenario on the embedded SQLite default).
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
exec .venv/bin/perpmargin demo "$@"
