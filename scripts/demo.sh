#!/usr/bin/env bash
# Quickstart command 1: set up and run the main job — the stress lab replays Black Thursday
# (2020-03-12, 1-minute perp candles) through the engine, journaled on the embedded SQLite default.
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
exec .venv/bin/perpmargin stress --scenario 2020-03-12 --preset binance-usdm --accounts 1000 --seed 7 --out out/stress "$@"
