"""Hypothesis property, engine level: over random books and rates, funding is zero-sum to the booked
residue, and cumulative-index settlement agrees with timestamp settlement on the same inputs
(exactly when every tick is settled, within one quantum per tick when settlement is lazy)."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from hypothesis import event, given, settings
from hypothesis import strategies as st

from perpmargin.commands import BookUpdate, Fill, FundingTick, OracleUpdate, SettleFunding
from perpmargin.ledger import EXTERNAL, ROUNDING
from perpmargin.prices import funding_pool
from prices_support import HOUR, SOURCES, Run, custom_venue

_COMMON = {
    "funding": {"interval_hours": 1, "sample_ms": 0, "averaging": "simple", "payment_price": "index", "cap": "none"},
    "bands": {"enabled": False},
    "oracle": {"staleness_ms": 10 * HOUR, "max_jump": "none"},
}
TIMESTAMP = custom_venue(
    "binance-usdm", prices={**_COMMON, "funding": {**_COMMON["funding"], "settlement": "timestamp"}}
)
INDEX = custom_venue("binance-usdm", prices={**_COMMON, "funding": {**_COMMON["funding"], "settlement": "index"}})
ACCOUNTS = ("a0", "a1", "a2", "a3")


@dataclass(frozen=True)
class FillSpec:
    buyer: str | None
    seller: str | None
    size: str
    price: str


party = st.sampled_from((*ACCOUNTS, None))
fills = st.builds(
    FillSpec,
    buyer=party,
    seller=party,
    size=st.integers(1, 1_500).map(lambda n: str(Decimal(n) / 1000)),
    price=st.integers(400_000, 600_000).map(lambda n: str(Decimal(n) / 10)),
).filter(lambda f: f.buyer != f.seller)
ticks = st.tuples(
    st.integers(4_000_000, 6_000_000).map(lambda n: str(Decimal(n) / 100)),  # index at the tick
    st.integers(-300, 300).map(lambda bp: Decimal(bp) / 10_000),  # premium sample, ±3 %
)


def _apply_tick(run: Run, k: int, index: str, premium: Decimal) -> None:
    ts = k * HOUR + 1_000
    run.apply(OracleUpdate(ts_ms=ts, symbol="BTCUSDT", quotes=tuple((s, index, ts) for s in SOURCES)))
    impact = str(Decimal(index) * (1 + premium))
    run.apply(BookUpdate(ts_ms=ts, symbol="BTCUSDT", impact_bid=impact, impact_ask=impact))


def _book(runs: list[Run], specs: list[FillSpec], ts: int) -> None:
    for run in runs:
        for f in specs:
            run.apply(Fill(ts_ms=ts, symbol="BTCUSDT", price=f.price, size=f.size, buyer=f.buyer, seller=f.seller))


def _start(runs: list[Run], index: str) -> None:
    for run in runs:
        run.accounts(0, dict.fromkeys(ACCOUNTS, ("USDT", "10000000")))
        run.apply(OracleUpdate(ts_ms=1, symbol="BTCUSDT", quotes=tuple((s, index, 1) for s in SOURCES)))


def _balances(run: Run) -> dict[str, int]:
    return {h: v for (h, a), v in run.st.ledger.balances.items() if a == "USDT"}


@settings(max_examples=75)
@given(opening=st.lists(fills, min_size=1, max_size=6), path=st.lists(ticks, min_size=1, max_size=4))
def test_funding_is_zero_sum_and_index_equals_timestamp_settlement_tick_by_tick(
    opening: list[FillSpec], path: list[tuple[str, Decimal]]
) -> None:
    ts_run, ix_run = Run.of(TIMESTAMP), Run.of(INDEX)
    _start([ts_run, ix_run], path[0][0])
    _book([ts_run, ix_run], opening, 2)
    for k, (index, premium) in enumerate(path):
        for run in (ts_run, ix_run):
            _apply_tick(run, k, index, premium)
        rounding_before = ts_run.st.ledger.balance(ROUNDING, "USDT")
        events = ts_run.apply(FundingTick(ts_ms=(k + 1) * HOUR))
        ix_run.apply(FundingTick(ts_ms=(k + 1) * HOUR))
        ix_events = ix_run.apply(SettleFunding(ts_ms=(k + 1) * HOUR, symbol="BTCUSDT"))
        settled = [e.data for e in events if e.kind == "FundingSettled"]
        if not settled:
            continue
        s = settled[0]
        event(f"settled with {len(s['payments'])} positions")
        owed = [o for _h, _leg, o in s["payments"]]
        assert sum(owed) == s["residue_q"] == ts_run.st.ledger.balance(ROUNDING, "USDT") - rounding_before
        assert 0 <= s["residue_q"] < max(1, len(owed))
        assert any(h == EXTERNAL for h, _leg, _o in s["payments"]) or not ts_run.st.accounts[EXTERNAL].positions
        ix_residue = sum(e.data["residue_q"] for e in ix_events if e.kind == "FundingResidue")
        assert ix_residue == s["residue_q"]
        assert _balances(ix_run) == _balances(ts_run)
        for run in (ts_run, ix_run):
            run.st.ledger.check_conservation()
            assert run.st.ledger.balance(funding_pool("BTCUSDT"), "USDT") == 0


@settings(max_examples=75)
@given(
    opening=st.lists(fills, min_size=1, max_size=5),
    later=st.lists(st.lists(fills, max_size=2), min_size=4, max_size=4),
    path=st.lists(ticks, min_size=2, max_size=4),
)
def test_lazy_index_settlement_owes_at_most_the_timestamp_amounts_and_less_than_one_quantum_per_tick_more(
    opening: list[FillSpec], later: list[list[FillSpec]], path: list[tuple[str, Decimal]]
) -> None:
    ts_run, ix_run = Run.of(TIMESTAMP), Run.of(INDEX)
    _start([ts_run, ix_run], path[0][0])
    _book([ts_run, ix_run], opening, 2)
    for k, (index, premium) in enumerate(path):
        for run in (ts_run, ix_run):
            _apply_tick(run, k, index, premium)
            run.apply(FundingTick(ts_ms=(k + 1) * HOUR))
        _book([ts_run, ix_run], later[k], (k + 1) * HOUR + 2)  # fills settle the touched positions lazily
    ix_run.apply(SettleFunding(ts_ms=len(path) * HOUR + 3, symbol="BTCUSDT"))
    a, b = _balances(ts_run), _balances(ix_run)
    for holder in sorted(set(a) | set(b)):
        if holder in (ROUNDING, funding_pool("BTCUSDT")):
            continue
        diff = b.get(holder, 0) - a.get(holder, 0)
        assert 0 <= diff <= len(path), holder  # rounding once owes no more, and < 1 quantum per tick less
    for run in (ts_run, ix_run):
        run.st.ledger.check_conservation()
        assert run.st.ledger.balance(funding_pool("BTCUSDT"), "USDT") == 0
        assert run.st.ledger.balance(ROUNDING, "USDT") >= 0
