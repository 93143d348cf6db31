"""End-to-end liquidation scenarios through ``Engine.apply`` (dYdX ``e2e`` style tables).

Every scenario builds accounts and positions with real fills on a shipped preset, switches the
liquidation desk on with the journaled ``ConfigureLiquidation``, moves the mark, and checks what
the waterfall did (channels, sizes, fund flows, ADL counterparties) and the invariants after it:
exact conservation, Σ sizes = 0, vault ≥ withdrawable claims (C18), no negative equity left
unallocated, and that replaying the journal of accepted commands reproduces the state hash.

Tables: the waterfall (isolated vs cross, one-way vs hedge, partial vs full, fund sufficient vs
exhausted, ADL with and without overlapping bankruptcy prices, socialised loss, inverse
contracts, per-market funds); then auctions, backstop takeover, Hyperliquid slices, margin calls
and their grace, the gates (C16, C17), price validity (C2), the safety sweep, rollback and bad input.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import pytest

from liq_support import Scenario, adl_overshoot, assert_adl_within_shortfall, assert_invariants, events_of, replay_hash
from perpmargin.commands import (
    AuctionBid,
    ConfigureLiquidation,
    FundInsurance,
    HaltMarket,
    RegisterLiquidator,
    ResumeMarket,
    SetBookDepth,
    SetLeverage,
    SweepLiquidations,
    TransferMargin,
    Withdraw,
)
from perpmargin.errors import (
    ConfigError,
    InsufficientMarginError,
    InvalidInputError,
    InvalidNumberError,
    OutflowLimitError,
    PerpmarginError,
    UnknownAccountError,
    WithdrawalsPausedError,
)
from perpmargin.state import state_from_canonical, state_hash

# =============================================================================================
# The waterfall table
# =============================================================================================


@dataclass(frozen=True)
class Case:
    """A scenario: ``setup`` builds the book of positions, ``marks`` is the price path of ``symbol``."""

    preset: str
    params: dict[str, object]
    setup: Callable[[Scenario], None]
    symbol: str
    marks: tuple[str, ...]
    channels: tuple[str, ...]
    """Liquidation channels used, in order (deduplicated)."""
    sizes_after: dict[str, int]
    """Position sizes after the path (``account`` or ``account:LEG``)."""
    fund_delta_sign: int | None = None
    """Sign of the insurance fund's equity change over the path (None: not checked)."""
    adl_with: tuple[str, ...] = ()
    adl_skipped: tuple[str, ...] = ()
    unresolved: tuple[str, ...] = ()
    first_symbols: tuple[str, ...] = ()
    """Order of the symbols the liquidation closed (riskiest first)."""
    extra: Callable[[Scenario], None] | None = field(default=None)


def _iso_partial(s: Scenario) -> None:
    s.account("alice", "26000", isolated=["BTCUSDT"])
    s.account("bob", "1000000")
    s.fill("BTCUSDT", "50000", "10", "alice", "bob")
    s.book("BTCUSDT", [("47800", "2"), ("47700", "5"), ("47000", "20")])


def _iso_partial_check(s: Scenario) -> None:
    # Only the isolated bucket paid: the cross wallet keeps what was left after the margin moved in.
    assert s.balance("alice") == 75_000_000_000
    (b,) = s.engine.risk("alice").isolated
    assert b.equity_q > b.mm_q


def _iso_gap(s: Scenario) -> None:
    s.account("alice", "26000", isolated=["BTCUSDT"])
    s.account("bob", "1000000")
    s.fill("BTCUSDT", "50000", "10", "alice", "bob")
    s.apply(FundInsurance(ts_ms=s.ts, asset="USDT", amount="50000"))
    s.book("BTCUSDT", [("46000", "4"), ("45500", "20")])


def _cross_two(s: Scenario) -> None:
    s.account("alice", "5000")
    s.account("bob", "1000000")
    s.fill("BTCUSDT", "50000", "1", "alice", "bob")
    s.fill("ETHUSDT", "3000", "5", "alice", "bob")
    s.book("BTCUSDT", [("45200", "5")])
    s.book("ETHUSDT", [("2990", "50")])


def _hedge(s: Scenario) -> None:
    s.account("alice", "3100", hedge=True)
    s.account("bob", "1000000")
    s.fill("BTCUSDT", "50000", "1", "alice", "bob", buyer_leg="LONG")
    s.fill("BTCUSDT", "50000", "0.2", "bob", "alice", seller_leg="SHORT")
    s.book("BTCUSDT", [("46300", "5")], [("46500", "5")])


def _fund(amount: str) -> Callable[[Scenario], None]:
    def setup(s: Scenario) -> None:
        s.account("alice", "5100")
        s.account("carol", "100000")
        s.fill("BTCUSDT", "50000", "1", "alice", "carol")
        if amount != "0":
            s.apply(FundInsurance(ts_ms=s.ts, asset="USDT", amount=amount))
        s.book("BTCUSDT", [("43000", "5")])

    return setup


def _adl_no_overlap(s: Scenario) -> None:
    s.account("alice", "5100")
    s.account("bob", "30000")
    s.account("carol", "100000")
    s.fill("BTCUSDT", "50000", "1", "alice", None)
    s.fill("BTCUSDT", "50000", "0.6", None, "bob")
    s.fill("BTCUSDT", "50000", "1", None, "carol")


def _adl_overlap(s: Scenario) -> None:
    # alice goes bankrupt with no profitable counterparty: unresolved until bob and carol short
    # after the fall; bob's thin account would itself go bankrupt at alice's bankruptcy price.
    s.account("alice", "5100")
    s.account("bob", "2100")
    s.account("carol", "100000")
    s.fill("BTCUSDT", "50000", "1", "alice", None)
    s.mark("BTCUSDT", "41000")
    s.fill("BTCUSDT", "41000", "1", None, "bob")
    s.fill("BTCUSDT", "41000", "1", None, "carol")


def _social(s: Scenario) -> None:
    s.account("alice", "5100")
    s.account("bob", "20000")
    s.account("carol", "20000")
    s.fill("BTCUSDT", "50000", "1", "alice", "bob")
    s.fill("BTCUSDT", "50000", "1", "carol", None)


def _social_check(s: Scenario) -> None:
    (ev,) = events_of(s.events, "SocializedLoss")
    # 925 USDT over 2 BTC of open interest (bob short 1, carol long 1): 462.5 each, charged exactly.
    assert ev.data["loss_q"] == 92_500_000_000
    assert ev.data["charged_q"] == 92_500_000_000
    assert ev.data["positions"] == 2


def _inverse(s: Scenario) -> None:
    s.account("alice", "0.012", asset="BTC")
    s.account("bob", "100", asset="BTC")
    s.fill("BTCUSD_PERP", "50000", "100", "alice", "bob")
    s.book("BTCUSD_PERP", [("47250.0", "200"), ("47200.0", "200")])


def _per_market(s: Scenario) -> None:
    s.account("alice", "5100")
    s.account("carol", "100000")
    s.fill("BTCUSDT", "50000", "1", "alice", "carol")
    s.apply(FundInsurance(ts_ms=s.ts, asset="USDT", amount="3000", symbol="BTCUSDT"))
    s.book("BTCUSDT", [("43000", "5")])


def _per_market_check(s: Scenario) -> None:
    flows = events_of(s.events, "InsuranceFundFlow")
    assert {f.data["fund"] for f in flows} == {"@insurance#BTCUSDT"}
    assert s.balance("@insurance") == 0


CASES: dict[str, Case] = {
    "isolated one-way long, partial: book fills step the position down until MM is restored": Case(
        "binance-usdm",
        {"fee": "0.001", "book_limit": "bankruptcy"},
        _iso_partial,
        "BTCUSDT",
        ("49000", "47850", "47800", "47750"),
        ("book",),
        {"alice": 7_860, "bob": -10_000},
        fund_delta_sign=1,
        extra=_iso_partial_check,
    ),
    "isolated, gap through bankruptcy: full close, the fund pays the book fills past bankruptcy": Case(
        "binance-usdm",
        {"fee": "0.001", "book_limit": "bankruptcy"},
        _iso_gap,
        "BTCUSDT",
        ("47000",),
        ("insurance_book",),
        {"alice": 0, "bob": -10_000},
        fund_delta_sign=-1,
    ),
    "cross multi-position: the riskiest position (largest MM) is liquidated first": Case(
        "binance-usdm",
        {"fee": "0.001", "book_limit": "bankruptcy", "insurance_backstop": False},
        _cross_two,
        "BTCUSDT",
        ("45500", "45250"),
        ("book",),
        {"alice": 463},
        first_symbols=("BTCUSDT",),
    ),
    "hedge mode: legs are positions of their own; the long leg (largest MM) goes first": Case(
        "binance-usdm",
        {"fee": "0.001", "book_limit": "bankruptcy", "insurance_backstop": False},
        _hedge,
        "BTCUSDT",
        ("46500", "46400"),
        ("book",),
        {"alice:LONG": 243, "alice:SHORT": -200},
    ),
    "fund sufficient: the fund pays the gap past bankruptcy, no ADL": Case(
        "binance-usdm",
        {"book_limit": "bankruptcy", "insurance_backstop": False, "insurance_book_slippage": "0.05"},
        _fund("5000"),
        "BTCUSDT",
        ("44000",),
        ("insurance_book",),
        {"alice": 0, "carol": -1_000},
        fund_delta_sign=-1,
    ),
    "fund exhausted: after the fund's last dollar, the rest is ADL'd against carol": Case(
        "binance-usdm",
        {"book_limit": "bankruptcy", "insurance_backstop": False, "insurance_book_slippage": "0.05"},
        _fund("300"),
        "BTCUSDT",
        ("44000",),
        ("insurance_book", "adl"),
        {"alice": 0},
        fund_delta_sign=-1,
        adl_with=("carol",),
    ),
    "ADL without overlapping bankruptcy prices: counterparties in rank order, at the bankruptcy price": Case(
        "binance-usdm",
        {"book_limit": "bankruptcy", "insurance_backstop": False},
        _adl_no_overlap,
        "BTCUSDT",
        ("44000",),
        ("adl",),
        {"alice": 0, "bob": 0, "carol": -600},
        adl_with=("bob", "carol"),
    ),
    "ADL with overlapping bankruptcy prices (C15): bob would go bankrupt, skipped; carol takes it": Case(
        "binance-usdm",
        {"book_limit": "bankruptcy", "insurance_backstop": False},
        _adl_overlap,
        "BTCUSDT",
        ("40500",),
        ("adl",),
        {"alice": 0, "bob": -1_000, "carol": 0},
        adl_with=("carol",),
        adl_skipped=("bob",),
    ),
    "no ADL: the deficit is socialised over the market's open interest (Drift)": Case(
        "binance-usdm",
        {"insurance_backstop": False, "adl": False, "socialize": True},
        _social,
        "BTCUSDT",
        ("44000",),
        ("socialized_close",),
        {"alice": 0, "bob": -1_000, "carol": 1_000},
        extra=_social_check,
    ),
    "no fund, no ADL, no socialisation: the deficit stays unresolved (and gates outflows)": Case(
        "binance-usdm",
        {"insurance_backstop": False, "adl": False},
        _social,
        "BTCUSDT",
        ("44000",),
        (),
        {"alice": 1_000},
        unresolved=("alice",),
    ),
    "inverse (COIN-M) cross long: partial close into the book, in BTC": Case(
        "binance-coinm",
        {"fee": "0.001", "book_limit": "bankruptcy"},
        _inverse,
        "BTCUSD_PERP",
        ("47300.0",),
        ("book",),
        {"alice": 11},
        fund_delta_sign=1,
    ),
    "per-market fund: the BTCUSDT fund pays, the shared fund is untouched": Case(
        "binance-usdm",
        {"book_limit": "bankruptcy", "insurance_backstop": False, "fund": "per_market"},
        _per_market,
        "BTCUSDT",
        ("44000",),
        ("insurance_book",),
        {"alice": 0},
        fund_delta_sign=-1,
        extra=_per_market_check,
    ),
}


def _fund_equity(s: Scenario) -> int:
    desk = s.engine.liquidation
    return sum(desk.fund_equity_q(f) for f in ("@insurance", "@insurance#BTCUSDT", "@insurance#BTCUSD_PERP"))


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_waterfall(case: Case) -> None:
    s = Scenario(case.preset, **case.params)
    case.setup(s)
    fund0 = _fund_equity(s)
    start = len(s.events)
    for px in case.marks:
        s.mark(case.symbol, px)
        assert_invariants(s.engine)
    new = s.events[start:]
    fills = events_of(new, "LiquidationFill")
    channels: list[str] = []
    for f in fills:
        if f.data["bucket"].startswith("@"):
            continue
        if not channels or channels[-1] != f.data["channel"]:
            channels.append(f.data["channel"])
    assert tuple(channels) == case.channels
    for key, size in case.sizes_after.items():
        aid, _, leg = key.partition(":")
        assert s.size(aid, case.symbol, leg or "BOTH") == size, key
    if case.fund_delta_sign is not None:
        delta = _fund_equity(s) - fund0
        assert (delta > 0) - (delta < 0) == case.fund_delta_sign, delta
    adl = events_of(new, "AdlFill")
    assert tuple(dict.fromkeys(a.data["counterparty"] for a in adl)) == case.adl_with
    skipped = [x for a in events_of(new, "AdlSummary") for x in a.data["skipped"]]
    assert tuple(dict.fromkeys(skipped)) == case.adl_skipped
    if adl:
        ratio = adl_overshoot(new)
        assert ratio is not None
        assert ratio <= 1 + Fraction(1, 10**5)  # ADL overshoot: ≤ 1 + rounding
        assert_adl_within_shortfall(s.engine, new)
    assert tuple(sorted(s.engine.liquidation.status()["unresolved"])) == case.unresolved
    if case.first_symbols:
        order = list(dict.fromkeys(f.data["symbol"] for f in fills))
        assert tuple(order[: len(case.first_symbols)]) == case.first_symbols
    if case.extra is not None:
        case.extra(s)
    assert replay_hash(s.commands, case.preset) == s.engine.state_hash()


# =============================================================================================
# Auctions, backstop liquidators, Hyperliquid slices
# =============================================================================================


def _auction_scenario(**params: object) -> Scenario:
    s = Scenario(
        "binance-usdm",
        auction=True,
        auction_steps="4",
        auction_step_ms="1000",
        auction_start_discount="0.001",
        fee="0.001",
        partial="full",
        insurance_backstop=False,
        liquidator_share="0.5",
        **params,
    )
    s.account("alice", "2600")
    s.account("liq1", "100000")
    s.account("liq2", "100000")
    s.apply(RegisterLiquidator(ts_ms=s.ts, account_id="liq1", capacity="20000", min_discount="0.002"))
    s.apply(RegisterLiquidator(ts_ms=s.ts, account_id="liq2", capacity="1000000", min_discount="0.003"))
    s.fill("BTCUSDT", "50000", "1", "alice", None)
    return s


def test_dutch_auction_walks_from_mark_to_bankruptcy_and_liquidators_take_at_their_discount() -> None:
    s = _auction_scenario()
    ev = s.mark("BTCUSDT", "47600")
    (started,) = events_of(ev, "AuctionStarted")
    assert started.data["bankruptcy_px"] == "4742500/1"  # 47,425: equity 175 over 1 BTC
    steps = events_of(ev, "AuctionStep")
    assert [x.data["price_px"] for x in steps] == [4755240]  # step 0: mark × (1 − 0.1 %) on the 0.1 tick
    for _ in range(3):
        ev += s.mark("BTCUSDT", "47600")
    steps = events_of(ev, "AuctionStep")
    prices = [x.data["price_px"] for x in steps]
    assert prices == sorted(prices, reverse=True)  # falls toward bankruptcy, never past it
    assert all(p >= 4742500 for p in prices)
    takes = [t for x in steps for t in x.data["takes"]]
    # liq1 (0.2 % discount) takes first, up to its 20,000 capacity; liq2 (0.3 %) takes the rest later.
    assert takes[0][0] == "liq1"
    assert {t[0] for t in takes} == {"liq1", "liq2"}
    assert sum(t[1] for t in takes) == 1000
    (ended,) = events_of(ev, "AuctionEnded")
    assert ended.data["status"] == "filled"
    fees = events_of(ev, "LiquidationFee")
    assert all(f.data["liquidator"] in ("liq1", "liq2") and f.data["liquidator_q"] > 0 for f in fees)
    assert s.size("liq1", "BTCUSDT") + s.size("liq2", "BTCUSDT") == 1000
    assert_invariants(s.engine)
    assert replay_hash(s.commands, "binance-usdm") == s.engine.state_hash()


def test_auction_bid_takes_at_the_current_price_and_a_bid_beyond_capacity_is_refused() -> None:
    s = _auction_scenario()
    s.apply(RegisterLiquidator(ts_ms=s.ts, account_id="liq1", capacity="20000", min_discount="0.5"))
    s.apply(RegisterLiquidator(ts_ms=s.ts, account_id="liq2", capacity="1000000", min_discount="0.5"))
    s.mark("BTCUSDT", "47600")
    (auction,) = events_of(s.events, "AuctionStarted")
    aid = auction.data["auction_id"]
    before = s.engine.state_hash()
    with pytest.raises(InsufficientMarginError):
        s.apply(AuctionBid(ts_ms=s.tick(), auction_id=aid, account_id="liq1", size="0.5"))  # > 20,000 capacity
    assert s.engine.state_hash() == before
    ev = s.apply(AuctionBid(ts_ms=s.ts, auction_id=aid, account_id="liq2", size="0.4"))
    (bid,) = events_of(ev, "AuctionBidFilled")
    assert (bid.data["step"], bid.data["size_sz"]) == (1, 400)
    assert s.size("liq2", "BTCUSDT") == 400
    with pytest.raises(InvalidInputError):
        s.apply(AuctionBid(ts_ms=s.ts, auction_id=aid + 7, account_id="liq2", size="0.1"))
    assert_invariants(s.engine)


def test_auction_expires_unfilled_then_the_backstop_takes_over() -> None:
    s = _auction_scenario(backstop_discount="0.002")
    s.apply(RegisterLiquidator(ts_ms=s.ts, account_id="liq1", capacity="0"))
    s.apply(RegisterLiquidator(ts_ms=s.ts, account_id="liq2", capacity="1000000", min_discount="0.5"))
    s.account("vault", "1000000")
    s.apply(RegisterLiquidator(ts_ms=s.ts, account_id="vault", capacity="1000000", backstop=True))
    ev = s.mark("BTCUSDT", "47600")
    for _ in range(4):
        ev += s.mark("BTCUSDT", "47600")
    (ended,) = events_of(ev, "AuctionEnded")
    assert ended.data["status"] == "expired"
    backstop = [f for f in events_of(ev, "LiquidationFill") if f.data["channel"] == "backstop"]
    assert [f.data["counterparty"] for f in backstop] == ["vault"]
    # The backstop pays mark × (1 − 0.2 %) = 47,504.8, above bankruptcy 47,425: alice keeps the rest.
    assert backstop[0].data["fills"] == [[4750480, 1000]]
    assert (s.size("alice", "BTCUSDT"), s.size("vault", "BTCUSDT")) == (0, 1000)
    assert s.equity("alice") > 0
    assert_invariants(s.engine)


def test_backstop_liquidator_takeover_drift_style_with_the_fee_split() -> None:
    s = Scenario(
        "binance-usdm",
        partial="full",
        book_limit="bankruptcy",
        backstop_discount="0.002",
        fee="0.001",
        liquidator_share="0.5",
        insurance_backstop=False,
    )
    s.account("alice", "2600")
    s.account("keeper", "200000")
    s.apply(RegisterLiquidator(ts_ms=s.ts, account_id="keeper", capacity="100000", min_discount="0.001", backstop=True))
    s.fill("BTCUSDT", "50000", "1", "alice", None)
    ev = s.mark("BTCUSDT", "47600")
    (fill,) = events_of(ev, "LiquidationFill")
    assert (fill.data["channel"], fill.data["counterparty"], fill.data["fills"]) == (
        "backstop",
        "keeper",
        [[4750480, 1000]],
    )
    (fee,) = events_of(ev, "LiquidationFee")
    # 0.1 % of 47,504.8 = 47.5048 (below the 80.2 left), half to the keeper, half to the fund.
    assert (fee.data["fee_q"], fee.data["liquidator_q"], fee.data["insurance_q"]) == (
        4_750_480_000,
        2_375_240_000,
        2_375_240_000,
    )
    assert_invariants(s.engine)


def test_hyperliquid_slices_20_percent_then_the_whole_position_inside_the_30s_cooldown() -> None:
    s = Scenario("hyperliquid", book_limit="bankruptcy", backstop_equity_ratio="0")
    s.account("whale", "260000")
    s.account("mm", "100000000")
    s.apply(SetLeverage(ts_ms=s.ts, account_id="whale", symbol="BTC", leverage="40"))
    s.fill("BTC", "100000", "100", "whale", "mm")  # 10M notional: above the 100k slice threshold
    s.book("BTC", [("98500", "1000")])
    ev = s.mark("BTC", "98600")  # equity 255,500 − 140,000 = 115,500 < MM 123,250: liquidatable
    fills = events_of(ev, "LiquidationFill")
    assert [f.data["size_sz"] for f in fills] == [2_000_000]  # 20 % of 100 BTC: healthy again
    assert s.size("whale", "BTC") == 8_000_000
    ev = s.mark("BTC", "98400", advance=10_000)  # liquidatable again 10 s later: inside the cooldown
    fills = events_of(ev, "LiquidationFill")
    assert sum(f.data["size_sz"] for f in fills) == 8_000_000  # the entire rest
    assert s.size("whale", "BTC") == 0
    assert_invariants(s.engine)


def test_hyperliquid_backstop_below_two_thirds_of_mm_skips_the_book() -> None:
    s = Scenario("hyperliquid", insurance_backstop=True)
    s.account("alice", "3000")
    s.account("mm", "10000000")
    s.apply(SetLeverage(ts_ms=s.ts, account_id="alice", symbol="BTC", leverage="40"))
    s.apply(FundInsurance(ts_ms=s.ts, asset="USDC", amount="1000000"))
    s.fill("BTC", "100000", "1", "alice", "mm")
    s.book("BTC", [("97900", "10")])
    ev = s.mark("BTC", "97800")  # equity 755 < 2/3 × MM 1,222.5: straight to the backstop
    fills = events_of(ev, "LiquidationFill")
    assert [(f.data["channel"], f.data["size_sz"]) for f in fills if f.data["bucket"] == "alice"] == [
        ("insurance_takeover", 100_000)
    ]
    # The fund then works a quarter of what it inherited into the book at this mark update.
    assert [(f.data["channel"], f.data["size_sz"]) for f in fills if f.data["bucket"] == "@insurance"] == [
        ("insurance_unwind", 25_000)
    ]
    assert s.size("@insurance", "BTC") == 75_000
    assert_invariants(s.engine)


# =============================================================================================
# Margin calls
# =============================================================================================


def test_margin_calls_rise_through_the_levels_and_clear_when_margin_comes_back() -> None:
    s = Scenario("binance-usdm", margin_call_levels="0.5,0.8,0.9", margin_call_grace_ms="60000")
    s.account("alice", "2700")
    s.fill("BTCUSDT", "50000", "1", "alice", None)  # taker fee 25: wallet 2,675
    seen = []
    for px in ("48000", "47600", "47560", "47530", "49000"):
        for e in events_of(s.mark("BTCUSDT", px), "MarginCall", "MarginCallCleared"):
            seen.append((px, e.kind, e.data["level"]))
    # MM used (MM / equity): 192/675 = 28 %, 190.4/275 = 69 %, 190.24/235 = 81 %, 190.12/205 = 93 %, then 11 %.
    assert seen == [
        ("47600", "MarginCall", 1),
        ("47560", "MarginCall", 2),
        ("47530", "MarginCall", 3),
        ("49000", "MarginCallCleared", 0),
    ]
    assert not events_of(s.events, "LiquidationStarted")


def test_margin_call_grace_enforced_partially_liquidates_below_the_call_level() -> None:
    s = Scenario(
        "binance-usdm",
        margin_call_levels="0.8",
        margin_call_grace_ms="60000",
        margin_call_enforce=True,
        fee="0",
        book_limit="bankruptcy",
    )
    s.account("alice", "2650")
    s.fill("BTCUSDT", "50000", "1", "alice", None)
    s.book("BTCUSDT", [("47600", "5")])
    ev = s.mark("BTCUSDT", "47600")  # MM 190.4 / equity 225 = 84.6 %: called, not liquidatable
    (call,) = events_of(ev, "MarginCall")
    assert call.data["deadline_ms"] == s.ts + 60_000
    assert not events_of(ev, "LiquidationFill")
    ev = s.mark("BTCUSDT", "47600", advance=30_000)
    assert not events_of(ev, "LiquidationFill")
    ev = s.mark("BTCUSDT", "47600", advance=30_000)  # grace over: reduce until MM/equity < 80 %
    (start,) = events_of(ev, "LiquidationStarted")
    assert start.data["reason"] == "margin_call_expired"
    assert events_of(ev, "LiquidationFill")
    r = s.engine.risk("alice").cross
    assert r.mm_q * 10 < r.equity_q * 8
    assert_invariants(s.engine)


# =============================================================================================
# Gates: C16 pause on unresolved negative equity, C17 outflow limits
# =============================================================================================


def test_c16_withdrawals_and_margin_removals_pause_while_negative_equity_is_unresolved() -> None:
    s = Scenario("binance-usdm", insurance_backstop=False, adl=False)
    s.account("alice", "5100")
    s.account("bob", "20000", isolated=["ETHUSDT"])
    s.account("carol", "20000")
    s.fill("BTCUSDT", "50000", "1", "alice", None)
    s.fill("ETHUSDT", "3000", "1", "bob", None)
    s.fill("BTCUSDT", "50000", "1", None, "carol")
    s.mark("BTCUSDT", "44000")
    assert s.engine.liquidation.status()["unresolved"] == {"alice": 92_500_000_000}
    assert s.engine.withdrawable("bob", "USDT") == 0
    with pytest.raises(WithdrawalsPausedError):
        s.apply(Withdraw(ts_ms=s.tick(), account_id="bob", asset="USDT", amount="1"))
    s.apply(TransferMargin(ts_ms=s.ts, account_id="bob", symbol="ETHUSDT", amount="100"))  # adding margin is fine
    with pytest.raises(WithdrawalsPausedError):
        s.apply(TransferMargin(ts_ms=s.ts, account_id="bob", symbol="ETHUSDT", amount="-1"))
    # Resolving it (the operator turns socialisation on: carol's short pays the 925) lifts the pause.
    s.apply(
        ConfigureLiquidation(
            ts_ms=s.tick(), params=(("adl", "false"), ("insurance_backstop", "false"), ("socialize", "true"))
        )
    )
    assert s.engine.liquidation.status()["unresolved"] == {}
    s.apply(Withdraw(ts_ms=s.tick(), account_id="bob", asset="USDT", amount="1"))
    assert_invariants(s.engine)


def test_c17_outflow_limits_per_hour_and_per_day() -> None:
    s = Scenario(
        "binance-usdm", outflow_hour="0.01", outflow_hour_min="1000", outflow_day="0.1", outflow_day_min="10000"
    )
    for i in range(10):
        s.account(f"u{i}", "10000")  # vault 100,000: 1,000/h (1 %), 10,000/day (10 %)
    s.apply(Withdraw(ts_ms=s.tick(), account_id="u0", asset="USDT", amount="600"))
    with pytest.raises(OutflowLimitError) as err:
        s.apply(Withdraw(ts_ms=s.tick(), account_id="u1", asset="USDT", amount="500"))
    assert err.value.details["window"] == "hour"
    assert s.engine.withdrawable("u1", "USDT") == 400
    s.apply(Withdraw(ts_ms=s.ts, account_id="u1", asset="USDT", amount="400"))
    total, refused = 1000, None
    for hour in range(1, 30):
        s.tick(3_600_000)
        try:
            s.apply(Withdraw(ts_ms=s.ts, account_id=f"u{hour % 10}", asset="USDT", amount="990"))
            total += 990
        except OutflowLimitError as e:
            refused = e.details["window"]
            break
    assert refused == "day"
    # A day's outflow never passes max(10 % of the vault, 10,000).
    assert total <= 10_000 + 990


# =============================================================================================
# Price validity, the sweep, determinism, rollback, bad input
# =============================================================================================


def test_c2_no_liquidation_while_the_market_is_halted_then_it_resumes() -> None:
    s = Scenario("binance-usdm", book_limit="bankruptcy", insurance_backstop=False)
    s.account("alice", "2600")
    s.fill("BTCUSDT", "50000", "1", "alice", None)
    s.book("BTCUSDT", [("47500", "5")])
    s.apply(HaltMarket(ts_ms=s.ts, symbol="BTCUSDT", actor="ops", reason="test"))
    ev = s.mark("BTCUSDT", "47600")
    assert events_of(ev, "LiquidationStarted")
    assert not events_of(ev, "LiquidationFill")
    assert s.size("alice", "BTCUSDT") == 1000
    ev = s.apply(ResumeMarket(ts_ms=s.tick(), symbol="BTCUSDT", actor="ops", reason="test"))
    assert events_of(ev, "LiquidationFill")
    assert_invariants(s.engine)


def test_sweep_is_a_no_op_safety_net_after_monitored_updates() -> None:
    s = Scenario("binance-usdm")
    for i in range(6):
        s.account(f"u{i}", str(2600 + 500 * i))
        s.fill("BTCUSDT", "50000", "1", f"u{i}", None)
    for px in ("49000", "48000", "48800", "49500"):
        s.mark("BTCUSDT", px)
    h = s.engine.state_hash()
    ev = s.apply(SweepLiquidations(ts_ms=s.tick()))
    assert not [e for e in ev if e.kind not in ("MarkPriceSet",)]
    assert s.engine.state_hash() != h  # only seq/time moved
    assert s.engine.liquidation.index_size() == 6


def test_state_round_trips_through_its_canonical_form_and_a_replay() -> None:
    c = CASES["fund exhausted: after the fund's last dollar, the rest is ADL'd against carol"]
    s = Scenario(c.preset, **c.params)
    c.setup(s)
    s.mark("BTCUSDT", "44000")
    st = s.engine.state
    again = state_from_canonical(st.to_canonical(), st)
    assert state_hash(again) == state_hash(st)
    assert st.liquidation is not None
    assert not st.liquidation.is_empty()
    assert replay_hash(s.commands, c.preset) == s.engine.state_hash()


def test_an_engine_that_never_configured_liquidation_hashes_as_before() -> None:
    from perpmargin.engine import Engine
    from perpmargin.presets import load_venue

    e = Engine.from_venue(load_venue("binance-usdm"))
    assert "liquidation" not in e.state.to_canonical()


BAD: dict[str, tuple[Callable[[Scenario], object], type[PerpmarginError]]] = {
    "unknown parameter": (
        lambda s: s.apply(ConfigureLiquidation(ts_ms=s.ts, params=(("fees", "0.1"),))),
        ConfigError,
    ),
    "margin-call levels not ascending": (
        lambda s: s.apply(ConfigureLiquidation(ts_ms=s.ts, params=(("margin_call_levels", "0.9,0.8"),))),
        ConfigError,
    ),
    "a float parameter (TOML float)": (
        lambda s: s.apply(ConfigureLiquidation(ts_ms=s.ts, params=(("fee", 0.1),))),  # type: ignore[arg-type]
        ConfigError,
    ),
    "crossed depth": (
        lambda s: s.apply(SetBookDepth(ts_ms=s.ts, symbol="BTCUSDT", bids=(("50010", "1"),), asks=(("50000", "1"),))),
        InvalidInputError,
    ),
    "bids not descending": (
        lambda s: s.apply(SetBookDepth(ts_ms=s.ts, symbol="BTCUSDT", bids=(("49000", "1"), ("49500", "1")))),
        InvalidInputError,
    ),
    "depth off the tick": (
        lambda s: s.apply(SetBookDepth(ts_ms=s.ts, symbol="BTCUSDT", bids=(("49000.05", "1"),))),
        InvalidNumberError,
    ),
    "a float size in the depth": (
        lambda s: s.apply(SetBookDepth(ts_ms=s.ts, symbol="BTCUSDT", bids=(("49000", 1.5),))),
        InvalidNumberError,
    ),
    "unknown liquidator account": (
        lambda s: s.apply(RegisterLiquidator(ts_ms=s.ts, account_id="nobody", capacity="1")),
        UnknownAccountError,
    ),
    "a system account as liquidator": (
        lambda s: s.apply(RegisterLiquidator(ts_ms=s.ts, account_id="@insurance", capacity="1")),
        UnknownAccountError,
    ),
    "negative fund deposit": (
        lambda s: s.apply(FundInsurance(ts_ms=s.ts, asset="USDT", amount="-1")),
        InvalidNumberError,
    ),
    "bid on an unknown auction": (
        lambda s: s.apply(AuctionBid(ts_ms=s.ts, auction_id=1, account_id="alice", size="1")),
        InvalidInputError,
    ),
}


@pytest.mark.parametrize("case", BAD.values(), ids=BAD.keys())
def test_bad_input_is_refused_and_changes_nothing(
    case: tuple[Callable[[Scenario], object], type[PerpmarginError]],
) -> None:
    action, error = case
    s = Scenario("binance-usdm")
    s.account("alice", "1000")
    before = s.engine.state_hash()
    with pytest.raises(error):
        action(s)
    assert s.engine.state_hash() == before


def test_the_sqlite_journal_replays_liquidations_from_genesis_and_from_a_snapshot(tmp_path: Path) -> None:
    """A crash with fund, book, ADL and socialised loss, journaled: reopen from the latest snapshot,
    replay from genesis and verify all give the live state hash."""
    from perpmargin.journal import Journal, replay, verify_journal

    c = CASES["fund exhausted: after the fund's last dollar, the rest is ADL'd against carol"]
    s = Scenario(c.preset, **c.params)
    c.setup(s)
    s.mark("BTCUSDT", "44000")
    path = tmp_path / "liq.sqlite"
    with Journal.open(path, c.preset) as j:
        for i, cmd in enumerate(s.commands):
            j.submit(cmd)
            if i == len(s.commands) // 2:
                j.snapshot()
        live = j.state_hash()
        j.snapshot()
    assert live == s.engine.state_hash()
    assert state_hash(replay(path, c.preset).state) == live
    assert verify_journal(path, c.preset).ok
    with Journal.open(path) as j2:  # from the latest snapshot: the index is rebuilt lazily
        assert j2.state_hash() == live
        assert j2.engine.liquidation.status()["unresolved"] == {}
