"""Cascade sanity on a real crash replay (2020-03-12, Binance BTCUSDT/ETHUSDT 1-minute perp candles).

Liquidity feedback — liquidation flow eats the book and pushes the next oracle price — must make
the crash worse: strictly more liquidation volume and more bad debt than the same run with the
oracle fed the data price only. With a book a thousand times deeper the liquidation flow cannot
move the price by more than a fraction of a tick, so the two runs must converge.

Set-up choices (kept small: 150 accounts, the first 150 minutes of the replay):

* ``depth_scale = 0.075`` = 150 / 2000: the calibrated depth belongs to a venue, and the README's
  main job puts 2000 accounts against it; scaling the depth with the population keeps the
  population-to-book ratio of the main job (the feedback a 150-account book would get from a
  full-size venue book is negligible, which is the *deep book* case below).
* Every account opens at step 0 (the default spec's late entries would open at the observed
  price, which feedback lowers; that changes who holds what and would blur the comparison).

Convergence tolerance: with ``depth_scale = 75`` the per-step displacement is at most
``1 % × flow / depth`` ≈ 1 % × 1.3 M / 3.5 × 10⁸ < 10⁻⁶ of the price on this run — below a BTC
tick (0.1 on ~5,600, 1.8 × 10⁻⁵) on almost every step — so the runs differ only through the odd
price rounded to the neighbouring tick. We allow 10⁻³ relative on liquidation notional and on
bad debt (measured: under 10⁻⁵).
"""

from __future__ import annotations

import re
from dataclasses import replace
from fractions import Fraction
from importlib import resources
from pathlib import Path

import pytest

from perpmargin.stress.runner import StressConfig, run_stress
from perpmargin.stress.specs import StressResult

TOL = Fraction(1, 1000)


def _volume_q(res: StressResult) -> int:
    return int(res.metrics["liquidations"]["notional_q"].get("USDT", 0))


def _bad_debt_q(res: StressResult) -> int:
    return int(res.metrics["bad_debt"]["total_q"].get("USDT", 0))


def _base_units(res: StressResult) -> dict[str, int]:
    out: dict[str, int] = {}
    for e in res.events:
        d = e["data"]
        if e["kind"] == "LiquidationFill" and not str(d["bucket"]).startswith("@"):
            out[d["symbol"]] = out.get(d["symbol"], 0) + int(d["size_sz"])
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, bool], StressResult]:
    text = (resources.files("perpmargin.stress") / "data" / "population-default.toml").read_text(encoding="utf-8")
    text, n = re.subn(r'at_start_share\s*=\s*"[0-9.]+"', 'at_start_share = "1"', text)
    assert n == 1
    spec: Path = tmp_path_factory.mktemp("cascade") / "all-at-start.toml"
    spec.write_text(text, encoding="utf-8")
    base = StressConfig(scenario="2020-03-12", accounts=150, max_steps=150, seed=7, population=str(spec))
    out: dict[tuple[str, bool], StressResult] = {}
    for depth in ("0.075", "75"):
        for feedback in (True, False):
            out[(depth, feedback)] = run_stress(replace(base, depth_scale=depth, feedback=feedback))
    return out


def test_feedback_makes_the_crash_worse(runs: dict[tuple[str, bool], StressResult]) -> None:
    on, off = runs[("0.075", True)], runs[("0.075", False)]
    assert _volume_q(off) > 0
    assert _bad_debt_q(off) > 0
    assert _volume_q(on) > _volume_q(off)
    assert _bad_debt_q(on) > _bad_debt_q(off)
    assert on.metrics["liquidations"]["accounts_liquidated"] > off.metrics["liquidations"]["accounts_liquidated"]
    assert all(_base_units(on)[s] >= _base_units(off)[s] for s in _base_units(off))
    # the mechanism: the oracle saw lower prices than the data with feedback, the data price without it
    for sym in ("BTCUSDT", "ETHUSDT"):
        assert (on.series[f"observed.{sym}"] < on.series[f"price.{sym}"]).any()
        assert (off.series[f"observed.{sym}"] == off.series[f"price.{sym}"]).all()


def test_a_deep_book_makes_feedback_irrelevant(runs: dict[tuple[str, bool], StressResult]) -> None:
    on, off = runs[("75", True)], runs[("75", False)]
    for f in (_volume_q, _bad_debt_q):
        a, b = f(on), f(off)
        assert b > 0
        assert abs(Fraction(a - b, b)) <= TOL, (f.__name__, a, b)
    # and the thin book's extra damage is far outside that tolerance
    thin_on, thin_off = runs[("0.075", True)], runs[("0.075", False)]
    assert Fraction(_bad_debt_q(thin_on) - _bad_debt_q(thin_off), _bad_debt_q(thin_off)) > TOL
