"""Oracle ingestion through ``Engine.apply``: weighted median, quorum, staleness, jump, deviation,
out-of-domain values (C5), per-source counters, collateral feeds, legacy trusted prices, replay."""

from __future__ import annotations

from decimal import Decimal

import pytest

from perpmargin.commands import (
    CreateAccount,
    Deposit,
    Fill,
    OracleUpdate,
    SetIndexPrice,
    SetMarkPrice,
    command_from_dict,
    command_to_dict,
)
from perpmargin.engine import Engine
from perpmargin.errors import InvalidInputError, InvalidNumberError, MarketPausedError, UnknownSymbolError
from perpmargin.prices import PriceValidity
from perpmargin.state import state_from_canonical
from prices_support import HOUR, Run, custom_venue, five

T0 = 10 * HOUR + 1_000


def test_index_is_the_weighted_median_of_fresh_sources_and_drives_the_mark() -> None:
    run = Run.of("hyperliquid")  # weights binance 3, okx 2, bybit 2, ...
    quotes = (
        ("binance", "100010", T0),
        ("okx", "100000", T0),
        ("bybit", "100020", T0),
        ("kraken", "99990", T0),
        ("gate", "100040", T0),
    )
    events = run.apply(OracleUpdate(ts_ms=T0, symbol="BTC", quotes=quotes))
    index = next(e for e in events if e.kind == "IndexUpdated")
    # sorted: 99990(1) 100000(2) 100010(3) 100020(2) 100040(1); total 9 → cumulative 1, 3, 6 ≥ 4.5 → 100010
    assert index.data["price_px"] == 10_001_000
    assert index.data["used"] == ["binance", "bybit", "gate", "kraken", "okx"]
    mark = next(e for e in events if e.kind == "MarkUpdated")
    assert mark.data["price_px"] == 10_001_000  # no book yet: the oracle (+ no EMA) is the mark
    assert run.st.mark_prices["BTC"] == 10_001_000
    assert run.engine.prices.price_validity("BTC") is PriceValidity.VALID


@pytest.mark.parametrize(
    ("case", "quotes", "expected_status", "rejected"),
    [
        pytest.param("three of five agree", five("50000", T0, s4="51000", s5="49000"), "valid", [], id="in band"),
        pytest.param(
            "one source 40 % high", five("50000", T0, s5="70000"), "valid", [("s5", "deviation")], id="deviation"
        ),
        pytest.param(
            "two stale sources of five",
            (("s1", "50000", T0), ("s2", "50000", T0), ("s3", "50000", T0), ("s4", "50000", T0 - 60_001),
             ("s5", "50000", T0 - 120_000)),
            "valid",
            [("s4", "stale"), ("s5", "stale")],
            id="stale",
        ),
        pytest.param(
            "three stale sources of five (below quorum)",
            (("s1", "50000", T0), ("s2", "50000", T0), ("s3", "50000", T0 - 60_001), ("s4", "50000", T0 - 60_001),
             ("s5", "50000", T0 - 60_001)),
            "degraded",
            [("s3", "stale"), ("s4", "stale"), ("s5", "stale")],
            id="quorum",
        ),
        pytest.param(
            "quote from the future",
            (*five("50000", T0, s5="50000")[:4], ("s5", "50000", T0 + 1)),
            "valid",
            [("s5", "future")],
            id="future",
        ),
        pytest.param(
            "wide confidence interval (2.5 % > 2 %)",
            (*five("50000", T0)[:4], ("s5", "50000", T0, "1250")),
            "valid",
            [("s5", "low_confidence")],
            id="confidence",
        ),
    ],
)  # fmt: skip
def test_guards_table(
    case: str, quotes: tuple[tuple[object, ...], ...], expected_status: str, rejected: list[tuple[str, str]]
) -> None:
    run = Run.of()
    events = run.apply(OracleUpdate(ts_ms=T0, symbol="BTCUSDT", quotes=quotes))
    got = [(e.data["source"], e.data["reason"]) for e in events if e.kind == "SourceRejected"]
    assert got == rejected, case
    feed = run.st.prices.markets["BTCUSDT"].feed
    assert feed.status.value == expected_status
    if expected_status == "valid":
        assert feed.index_px == 5_000_000
    else:
        assert feed.index_px is None
        assert "BTCUSDT" not in run.st.mark_prices
        assert [e.kind for e in events if e.kind == "OracleDegraded"] == ["OracleDegraded"]
    for source, reason in rejected:
        assert feed.rejects[f"{source}/{reason}"] == 1


# --------------------------------------------------------------------------------------------
# C5: out-of-domain values are rejected, counted and journaled, never raised
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        pytest.param("0", "out_of_domain", id="zero"),
        pytest.param("-50000", "out_of_domain", id="negative"),
        pytest.param("NaN", "out_of_domain", id="nan"),
        pytest.param("sNaN", "out_of_domain", id="signalling nan"),
        pytest.param("Infinity", "out_of_domain", id="inf"),
        pytest.param("-Infinity", "out_of_domain", id="minus inf"),
        pytest.param("1e400", "out_of_domain", id="huge exponent"),
        pytest.param("5e-400", "out_of_domain", id="tiny exponent rounds to zero"),
        pytest.param("2000000000", "out_of_domain", id="above max_price"),
        pytest.param("50000000", "jump", id="decimal shift up x1000"),
        pytest.param("50", "jump", id="decimal shift down x1000"),
        pytest.param("five hundred", "out_of_domain", id="not a number"),
        pytest.param("", "out_of_domain", id="empty"),
    ],
)
def test_c5_out_of_domain_quotes_are_rejected_counted_and_journaled(bad: str, reason: str) -> None:
    run = Run.of()
    run.oracle("BTCUSDT", "50000", T0)
    ts = T0 + 5_000
    events = run.apply(OracleUpdate(ts_ms=ts, symbol="BTCUSDT", quotes=five("50000", ts, s2=bad)))
    rejected = [e.data for e in events if e.kind == "SourceRejected"]
    assert rejected == [{"kind": "market", "target": "BTCUSDT", "source": "s2", "reason": reason, "value": bad}]
    feed = run.st.prices.markets["BTCUSDT"].feed
    assert feed.rejects == {f"s2/{reason}": 1}
    assert feed.index_px == 5_000_000  # the index did not move
    # the command is journaled as given and replays to the same state
    replay = Run.of()
    for e_cmd in (
        OracleUpdate(ts_ms=T0, symbol="BTCUSDT", quotes=five("50000", T0)),
        OracleUpdate(ts_ms=ts, symbol="BTCUSDT", quotes=five("50000", ts, s2=bad)),
    ):
        replay.apply(command_from_dict(command_to_dict(e_cmd)))
    assert replay.engine.state_hash() == run.engine.state_hash()


@pytest.mark.parametrize(
    "quotes",
    [
        pytest.param(((("s1", 50000.0, T0),)), id="float price"),
        pytest.param((("s1", "50000", 1.5),), id="float timestamp"),
        pytest.param((("s1", "50000", True),), id="bool timestamp"),
        pytest.param((("s1", "50000"),), id="too short"),
        pytest.param((("", "50000", T0),), id="empty source"),
        pytest.param((("s1", "50000", T0), ("s1", "50001", T0)), id="duplicate source"),
        pytest.param((), id="no quote"),
    ],
)
def test_malformed_oracle_commands_are_refused_and_change_nothing(quotes: tuple[tuple[object, ...], ...]) -> None:
    run = Run.of()
    run.oracle("BTCUSDT", "50000", T0)
    before = run.engine.state_hash()
    with pytest.raises((InvalidInputError, InvalidNumberError)):
        run.apply(OracleUpdate(ts_ms=T0 + 1, symbol="BTCUSDT", quotes=quotes))
    assert run.engine.state_hash() == before


def test_oracle_update_needs_exactly_one_target() -> None:
    run = Run.of()
    with pytest.raises(InvalidInputError):
        run.apply(OracleUpdate(ts_ms=T0, quotes=five("1", T0)))
    with pytest.raises(InvalidInputError):
        run.apply(OracleUpdate(ts_ms=T0, symbol="BTCUSDT", asset="BTC", quotes=five("1", T0)))
    with pytest.raises(UnknownSymbolError):
        run.apply(OracleUpdate(ts_ms=T0, symbol="NOPE", quotes=five("1", T0)))


def test_counters_accumulate_per_source_and_reason() -> None:
    run = Run.of()
    run.oracle("BTCUSDT", "50000", T0)
    for k in range(1, 4):
        ts = T0 + 5_000 * k
        run.oracle("BTCUSDT", "50000", ts, s1="NaN", s5="60000")
    assert run.st.prices.markets["BTCUSDT"].feed.rejects == {"s1/out_of_domain": 3, "s5/deviation": 3}


def test_degraded_then_recovered_events_on_transitions_only() -> None:
    run = Run.of()
    run.oracle("BTCUSDT", "50000", T0)
    two = lambda ts: (("s1", "50000", ts), ("s2", "50000", ts))  # noqa: E731
    first = run.apply(OracleUpdate(ts_ms=T0 + 5_000, symbol="BTCUSDT", quotes=two(T0 + 5_000)))
    second = run.apply(OracleUpdate(ts_ms=T0 + 10_000, symbol="BTCUSDT", quotes=two(T0 + 10_000)))
    assert [e.kind for e in first] == ["OracleDegraded"]
    assert second == []
    back = run.oracle("BTCUSDT", "50010", T0 + 15_000)
    assert [e.kind for e in back][:2] == ["IndexUpdated", "OracleRecovered"]


def test_a_stale_anchor_re_anchors_on_a_fresh_quorum_but_a_fresh_one_rejects_a_5x_jump() -> None:
    run = Run.of()
    run.oracle("BTCUSDT", "10000", T0)
    jump = run.oracle("BTCUSDT", "60000", T0 + 5_000)  # ×6 against a fresh anchor: every source is a jump
    assert {e.data["reason"] for e in jump if e.kind == "SourceRejected"} == {"jump"}
    assert run.st.prices.markets["BTCUSDT"].feed.status.value == "degraded"
    later = T0 + 61_000  # the anchor (fresh until T0 + 60 s) is stale now
    again = run.oracle("BTCUSDT", "60000", later)
    assert any(e.kind == "OracleRecovered" for e in again)
    assert run.st.prices.markets["BTCUSDT"].feed.index_px == 6_000_000


def test_asset_oracle_sets_the_collateral_price_and_applies_the_redemption_floor() -> None:
    venue = custom_venue(
        "binance-usdm",
        assets={"USDE": {"decimals": 8, "price": "1", "haircut": "0.9", "oracle": {"floor": "0.98"}}},
    )
    run = Run.of(venue)
    events = run.apply(OracleUpdate(ts_ms=T0, asset="USDE", quotes=five("0.97", T0)))
    assert next(e for e in events if e.kind == "IndexUpdated").data == {
        "kind": "asset", "target": "USDE", "price_px": 98_000_000, "used": ["s1", "s2", "s3", "s4", "s5"],
        "rejected": 0,
    }  # fmt: skip
    assert run.st.asset_prices["USDE"] == 98_000_000  # max(0.97, floor 0.98)
    run.apply(OracleUpdate(ts_ms=T0 + 1, asset="USDE", quotes=five("0.9995", T0 + 1)))
    assert run.st.asset_prices["USDE"] == 99_950_000


def test_legacy_set_mark_and_index_price_are_trusted_operator_prices_with_unchanged_events() -> None:
    run = Run.of()
    events = run.apply(SetMarkPrice(ts_ms=1, symbol="BTCUSDT", price="49000"))
    assert [(e.kind, e.data) for e in events] == [("MarkPriceSet", {"symbol": "BTCUSDT", "price_px": 4_900_000})]
    events = run.apply(SetIndexPrice(ts_ms=1, asset="BTC", price="65000"))
    assert [(e.kind, e.data) for e in events] == [("IndexPriceSet", {"asset": "BTC", "price_px": 6_500_000})]
    assert run.engine.prices.price_validity("BTCUSDT") is PriceValidity.UNSET
    assert run.engine.price_valid_for("BTCUSDT", "open")
    assert run.st.prices.is_empty()  # nothing new in the state: old hashes are unchanged


def test_prices_state_round_trips_through_the_canonical_encoding() -> None:
    run = Run.of("hyperliquid")
    run.accounts(T0, {"a": ("USDC", "100000")})
    run.oracle("BTC", "100000", T0, s5="NaN")
    run.apply(Fill(ts_ms=T0, symbol="BTC", price="100000", size="0.1", buyer="a"))
    from perpmargin.commands import BookUpdate

    for k in range(1, 5):
        ts = T0 + 5_000 * k
        run.apply(BookUpdate(ts_ms=ts, symbol="BTC", best_bid="100010", best_ask="100030", last="100020",
                             impact_bid="100005", impact_ask="100040"))  # fmt: skip
    clone = Engine(state_from_canonical(run.st.to_canonical(), run.st))
    assert clone.state_hash() == run.engine.state_hash()
    assert clone.state.prices.to_canonical() == run.st.prices.to_canonical()


def test_delisted_market_refuses_oracle_and_book_updates() -> None:
    from perpmargin.commands import BookUpdate, DelistMarket

    run = Run.of()
    run.oracle("BTCUSDT", "50000", T0)
    run.apply(DelistMarket(ts_ms=T0, symbol="BTCUSDT", actor="ops", reason="test", price="50000"))
    with pytest.raises(MarketPausedError):
        run.oracle("BTCUSDT", "50000", T0 + 1)
    with pytest.raises(MarketPausedError):
        run.apply(BookUpdate(ts_ms=T0 + 1, symbol="BTCUSDT", best_bid="1", best_ask="2"))


def test_create_and_deposit_are_unaffected_by_an_idle_price_subsystem() -> None:
    run = Run.of()
    run.apply(CreateAccount(ts_ms=5 * HOUR, account_id="x"))
    run.apply(Deposit(ts_ms=50 * HOUR, account_id="x", asset="USDT", amount=str(Decimal("1.5"))))
    assert run.st.prices.is_empty()
