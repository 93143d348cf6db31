"""Funding recomputed from real Binance (and BitMEX) data in ``shared/data`` (see docs/funding-validation.md).

1. **Recomputation through the engine** (2025-10-07 → 10-14, BTCUSDT and ETHUSDT): every 5 minutes an
   ``OracleUpdate`` with the Binance **spot** close (five sources) and a ``BookUpdate`` whose impact
   bid and ask are the **perp** close; the engine's Binance rule (linear average, clamp, cap, 8 h)
   sets a rate at each boundary, compared with the published rate.
2. **Identities on every recorded rate**: within the cap; the in-band value is ``I × N / 8`` for
   the interval length ``N`` found in the timestamps (8 h, and SOL's 2 h intervals of Nov 2022);
   the premium implied by each rate, fed back through the calculator, gives the rate again; BitMEX's
   floor is ``0.75 × (IM − MM) = 0.375 %`` (mechanics §13 item 17) and Black Thursday hit it.

Each test skips with the missing path when a data file is absent.
"""

from __future__ import annotations

import csv
import gzip
from collections import Counter
from decimal import Decimal
from pathlib import Path

import pytest

from perpmargin import calc_funding
from perpmargin.commands import BookUpdate, OracleUpdate
from prices_support import SOURCES, Run, custom_venue

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
INTEREST = Decimal("0.0001")
C = Decimal("0.0005")
H8 = 8 * 3_600_000


def _rows(rel: str) -> list[dict[str, str]]:
    path = DATA / rel
    if not path.exists():
        pytest.skip(f"real data not available: {path} is missing (see shared/data/SOURCES.md)")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:  # type: ignore[operator]
        return list(csv.DictReader(f))


def _published(symbol: str) -> dict[int, Decimal]:
    """Published rates keyed by the funding boundary (the recorded time rounded to the minute)."""
    out = {}
    for r in _rows(f"funding/binance-usdm_{symbol}_funding.csv.gz"):
        ms = int(r["funding_time_ms"])
        out[(ms + 30_000) // 60_000 * 60_000] = Decimal(r["funding_rate"])
    return out


@pytest.mark.parametrize(
    ("symbol", "tick", "max_diff", "min_matches"),
    [
        pytest.param("BTCUSDT", Decimal("0.1"), Decimal("0.00003"), 20, id="BTCUSDT"),
        pytest.param("ETHUSDT", Decimal("0.01"), Decimal("0.0004"), 20, id="ETHUSDT"),
    ],
)
def test_engine_recomputes_the_published_binance_rates_from_spot_and_perp_closes(
    symbol: str, tick: Decimal, max_diff: Decimal, min_matches: int
) -> None:
    perp = {int(r["timestamp"]): r for r in _rows(f"ohlcv/2025-10-10/binance-usdm_{symbol}_5m.csv.gz")}
    spot = {int(r["timestamp"]): r for r in _rows(f"ohlcv/2025-10-10/binance-spot_{symbol}_5m.csv.gz")}
    published = _published(symbol)
    venue = custom_venue(
        "binance-usdm",
        prices={"oracle": {"staleness_ms": 600_000}, "funding": {"sample_ms": 0}},  # 5-minute data
    )
    run = Run.of(venue)
    times = sorted(t for t in perp if t in spot)
    for ts in times:
        index = str(Decimal(spot[ts]["close"]).quantize(Decimal("0.01")))
        last = str(Decimal(perp[ts]["close"]).quantize(tick))
        run.apply(OracleUpdate(ts_ms=ts, symbol=symbol, quotes=tuple((s, index, ts) for s in SOURCES)))
        run.apply(BookUpdate(ts_ms=ts, symbol=symbol, impact_bid=last, impact_ask=last))
    diffs = []
    for e in run.kinds("FundingRateSet"):
        end = e.data["interval_end_ms"]
        if e.data["samples"] < 90 or end not in published:  # a whole 8 h of 5-minute samples only
            continue
        diffs.append((end, Decimal(e.data["rate"]), published[end]))
    assert len(diffs) >= min_matches
    worst = max(abs(ours - theirs) for _, ours, theirs in diffs)
    exact = sum(1 for _, ours, theirs in diffs if ours == theirs)
    assert worst <= max_diff
    mean = sum((abs(o - t) for _, o, t in diffs), Decimal(0)) / len(diffs)
    print(f"FIGURES validation {symbol}: intervals={len(diffs)} exact={exact} max_abs_diff={worst} "
          f"mean_abs_diff={mean.quantize(Decimal('1e-9'))}")  # fmt: skip


@pytest.mark.parametrize(
    ("symbol", "cap", "interest"),
    [
        pytest.param("BTCUSDT", Decimal("0.003"), INTEREST, id="BTCUSDT 0.75 x 0.4 pc"),
        pytest.param("ETHUSDT", Decimal("0.00375"), INTEREST, id="ETHUSDT 0.75 x 0.5 pc"),
        pytest.param("SOLUSDT", Decimal("0.02"), INTEREST, id="SOLUSDT others cap 2 pc"),
        pytest.param("ADAUSDT", Decimal("0.02"), INTEREST, id="ADAUSDT"),
        pytest.param("BNBUSDT", Decimal("0.02"), Decimal(0), id="BNBUSDT interest 0"),
        pytest.param("DOGEUSDT", Decimal("0.02"), INTEREST, id="DOGEUSDT"),
    ],
)
def test_every_recorded_binance_rate_satisfies_cap_normalisation_and_clamp_identities(
    symbol: str, cap: Decimal, interest: Decimal
) -> None:
    rows = _rows(f"funding/binance-usdm_{symbol}_funding.csv.gz")
    if symbol in ("BTCUSDT", "ETHUSDT"):
        assert calc_funding.funding_cap(venue="binance-usdm", symbol=symbol) == cap
    by_interval: dict[int, Counter[Decimal]] = {}
    worst = Decimal(0)
    checked = 0
    for prev, row in zip([None, *rows[:-1]], rows, strict=True):
        rate = Decimal(row["funding_rate"])
        assert abs(rate) <= cap, (row["datetime_utc"], rate)
        hours = 8 if prev is None else round((int(row["funding_time_ms"]) - int(prev["funding_time_ms"])) / 3_600_000)
        if hours not in (1, 2, 4, 8):  # a gap in the download: the interval is unknown, assume 8 h
            hours = 8
        by_interval.setdefault(hours, Counter())[rate] += 1
        # the premium this rate implies (if outside the clamp band), fed back through the calculator
        f8 = rate * 8 / hours
        premium = f8 if f8 == interest else (f8 + C if f8 > interest else f8 - C)
        again = calc_funding.funding_rate(
            venue="binance-usdm", symbol="BTCUSDT", premium_samples=[premium], cap="none", interval_hours=hours,
            interest=interest,
        )  # fmt: skip
        worst = max(worst, abs(again - rate))
        checked += 1
    assert worst == 0, worst
    for hours, counts in by_interval.items():
        in_band = interest * hours / 8
        if sum(counts.values()) >= 50:  # the in-band value is the most frequent one: I × N / 8
            assert counts.most_common(1)[0][0] == in_band, (hours, counts.most_common(3))
    print(f"FIGURES identities {symbol}: rates={checked} roundtrip_max_diff={worst} "
          f"intervals={ {h: sum(c.values()) for h, c in sorted(by_interval.items())} } "
          f"in_band={ {h: c[interest * h / 8] for h, c in sorted(by_interval.items())} }")  # fmt: skip


def test_bitmex_floor_is_0_75_of_im_minus_mm_and_black_thursday_hit_it() -> None:
    rows = _rows("funding/bitmex_XBTUSD_funding.csv.gz")
    cap = calc_funding.funding_cap(rule="bitmex", im="0.01", mm="0.005")
    assert cap == Decimal("0.00375")
    rates = [(r["datetime_utc"], Decimal(r["funding_rate"]).quantize(Decimal("1e-8"))) for r in rows]
    since_2017 = [(when, rate) for when, rate in rates if when >= "2017"]
    assert all(abs(rate) <= cap for _, rate in since_2017)
    hits = [when for when, rate in since_2017 if rate == -cap]
    assert any(when.startswith("2020-03-13") for when in hits)  # Black Thursday
    # 2016: the plateau is 1.125 % = 0.75 × 1.5 % (a wider IM − MM then)
    early_cap = calc_funding.funding_cap(rule="bitmex", im="0.03", mm="0.015")
    early = [rate for when, rate in rates if when < "2017"]
    assert max(abs(r) for r in early) == early_cap == Decimal("0.01125")
    print(
        f"FIGURES identities XBTUSD: rates={len(rates)} since_2017_within_cap={len(since_2017)} "
        f"floor_hits={len(hits)} "
        f"(Black Thursday: {[h for h in hits if h.startswith('2020')]})"
    )
