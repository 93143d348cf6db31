"""ADL scores, ranking, quintiles and allocation (§10, §13 items 33–34, C14–C15); loss socialisation (§9)."""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from perpmargin.errors import InvalidInputError, InvalidNumberError
from perpmargin.math.adl import (
    AdlCandidate,
    AdlFill,
    AdlMethod,
    RankedCandidate,
    adl_quintiles,
    allocate_adl,
    binance_leverage_pnl,
    bitmex_adl_score,
    bitmex_adl_score_from_prices,
    hyperliquid_adl_score,
    rank_candidates,
    socialized_loss_charge_q,
    socialized_loss_index_delta,
)
from perpmargin.math.liquidation_sizing import MarketUnits
from perpmargin.numbers import RATE_SCALE, Rounding, fraction_to_decimal

# Contracts and whole-dollar prices: value = contracts × price.
CONTRACTS = MarketUnits(quote_decimals=0, price_decimals=0, size_decimals=0)

# ---------------------------------------------------------------------------------------------
# §13 item 33: BitMEX six longs
# ---------------------------------------------------------------------------------------------

# account: (qty, score)
BITMEX_LONGS = {"1": (10, 3), "2": (10, 6), "3": (20, 1), "4": (30, 4), "5": (20, 5), "6": (10, 2)}


def bitmex_longs(mark_px: int = 650, equity: dict[str, int] | None = None) -> list[AdlCandidate]:
    equity = equity or {}
    return [
        AdlCandidate(
            account_id=acct,
            size_sz=qty,
            score=Fraction(score),
            mark_px=mark_px,
            account_value_q=equity.get(acct, 10_000),
        )
        for acct, (qty, score) in BITMEX_LONGS.items()
    ]


def test_bitmex_example_ranks_by_score_descending() -> None:
    ranked = rank_candidates(bitmex_longs(), AdlMethod.SCORE)
    assert [r.candidate.account_id for r in ranked] == ["2", "5", "4", "1", "6", "3"]
    assert [r.rank for r in ranked] == [1, 2, 3, 4, 5, 6]


def test_bitmex_example_quintile_indicator() -> None:
    ranked = rank_candidates(bitmex_longs(), AdlMethod.SCORE)
    indicators = adl_quintiles(ranked)
    assert [(i.account_id, i.percentile_r) for i in indicators] == [
        ("2", 20 * RATE_SCALE // 100),
        ("5", 40 * RATE_SCALE // 100),
        ("4", 60 * RATE_SCALE // 100),
        ("1", 80 * RATE_SCALE // 100),
        ("6", 80 * RATE_SCALE // 100),
        ("3", 100 * RATE_SCALE // 100),
    ]
    assert [i.quintile for i in indicators] == [1, 2, 3, 4, 4, 5]


def test_bitmex_example_short_of_20_at_650_takes_10_from_account_2_and_10_from_account_5() -> None:
    ranked = rank_candidates(bitmex_longs(), AdlMethod.SCORE)
    got = allocate_adl(needed_sz=20, ranked=ranked, price_px=650, liquidated_is_long=False, units=CONTRACTS)
    assert got.fills == (
        AdlFill(account_id="2", close_sz=10, price_px=650, equity_after_q=10_000),
        AdlFill(account_id="5", close_sz=10, price_px=650, equity_after_q=10_000),
    )
    assert (got.filled_sz, got.unfilled_sz, got.skipped_ids) == (20, 0, ())
    keeps = {f.account_id: BITMEX_LONGS[f.account_id][0] - f.close_sz for f in got.fills}
    assert keeps == {"2": 0, "5": 10}


# ---------------------------------------------------------------------------------------------
# C15: a counterparty the ADL would bankrupt is skipped; C14(a): flat accounts never pay
# ---------------------------------------------------------------------------------------------

ALLOCATION_CASES = [
    pytest.param(
        {"2": 400},
        [("5", 20)],
        ("2",),
        id="C15: account 2 would end at 400 - 10 x 50 < 0, so it is skipped and account 5 covers all 20",
    ),
    pytest.param(
        {"2": 500},
        [("2", 10), ("5", 10)],
        (),
        id="C15 boundary: account 2 ends exactly at 0 and is used",
    ),
    pytest.param(
        {"5": 499},
        [("2", 10), ("4", 10)],
        ("5",),
        id="C15: account 5 would go bankrupt on its 10, account 4 is used instead",
    ),
    pytest.param(
        {"2": 0, "5": 0, "4": 0, "1": 0, "6": 0, "3": 0},
        [],
        ("2", "5", "4", "1", "6", "3"),
        id="C15: every counterparty would go bankrupt: nothing is filled",
    ),
]


@pytest.mark.parametrize(("equity", "expected_fills", "expected_skipped"), ALLOCATION_CASES)
def test_adl_skips_counterparties_it_would_bankrupt(
    equity: dict[str, int], expected_fills: list[tuple[str, int]], expected_skipped: tuple[str, ...]
) -> None:
    # The liquidated short's bankruptcy price is 650 while the mark is 700: longs sell 50 below mark.
    ranked = rank_candidates(bitmex_longs(mark_px=700, equity=equity), AdlMethod.SCORE)
    got = allocate_adl(needed_sz=20, ranked=ranked, price_px=650, liquidated_is_long=False, units=CONTRACTS)
    assert [(f.account_id, f.close_sz) for f in got.fills] == expected_fills
    assert got.skipped_ids == expected_skipped
    assert all(f.equity_after_q >= 0 for f in got.fills)
    assert got.filled_sz == sum(n for _, n in expected_fills)
    assert got.unfilled_sz == 20 - got.filled_sz


def test_flat_accounts_are_never_ranked_nor_allocated() -> None:
    candidates = [*bitmex_longs(), AdlCandidate(account_id="0", size_sz=0, score=Fraction(100))]
    ranked = rank_candidates(candidates, AdlMethod.SCORE)
    assert "0" not in [r.candidate.account_id for r in ranked]
    # Even if a caller forces a flat account into the queue, allocation ignores it.
    forced = [RankedCandidate(rank=0, score=Fraction(100), candidate=candidates[-1]), *ranked]
    got = allocate_adl(needed_sz=20, ranked=forced, price_px=650, liquidated_is_long=False, units=CONTRACTS)
    assert got.ineligible_ids == ("0",)
    assert [f.account_id for f in got.fills] == ["2", "5"]


def test_same_side_counterparties_are_ineligible() -> None:
    ranked = rank_candidates(bitmex_longs(), AdlMethod.SCORE)
    got = allocate_adl(needed_sz=20, ranked=ranked, price_px=650, liquidated_is_long=True, units=CONTRACTS)
    assert got.fills == ()
    assert got.unfilled_sz == 20
    assert len(got.ineligible_ids) == 6


@pytest.mark.parametrize(
    ("candidates", "error"),
    [
        pytest.param(
            [AdlCandidate("a", 1, Fraction(1)), AdlCandidate("a", 2, Fraction(2))],
            InvalidInputError,
            id="duplicate account ids",
        ),
        pytest.param(
            [AdlCandidate("a", 1, Fraction(1)), AdlCandidate("b", -2, Fraction(2))],
            InvalidInputError,
            id="longs and shorts mixed",
        ),
        pytest.param([AdlCandidate("a", 1)], InvalidInputError, id="score method without a score"),
    ],
)
def test_rank_candidates_rejects_bad_input(candidates: list[AdlCandidate], error: type[Exception]) -> None:
    with pytest.raises(error):
        rank_candidates(candidates, AdlMethod.SCORE)


def test_ties_are_broken_by_account_id() -> None:
    ranked = rank_candidates(
        [AdlCandidate("b", 1, Fraction(1)), AdlCandidate("a", 1, Fraction(1)), AdlCandidate("c", 1, Fraction(2))],
        AdlMethod.SCORE,
    )
    assert [r.candidate.account_id for r in ranked] == ["c", "a", "b"]


# ---------------------------------------------------------------------------------------------
# Scores: BitMEX, Binance (§13 item 34), Hyperliquid
# ---------------------------------------------------------------------------------------------

BITMEX_SCORE_CASES = [
    pytest.param(1, 100, 110, 90, Fraction(1, 10) * Fraction(110, 20), id="long in profit: PnL% 10% x EffLev 5.5"),
    pytest.param(1, 100, 95, 90, Fraction(-5, 100) / Fraction(95, 5), id="long at a loss: PnL% -5% / EffLev 19"),
    pytest.param(-1, 100, 90, 110, Fraction(1, 10) * Fraction(90, 20), id="short in profit: PnL% 10% x EffLev 4.5"),
    pytest.param(3, 100, 110, 90, Fraction(1, 10) * Fraction(110, 20), id="size cancels out of both ratios"),
]


@pytest.mark.parametrize(("size", "entry", "mark", "bankruptcy", "expected"), BITMEX_SCORE_CASES)
def test_bitmex_score(size: int, entry: int, mark: int, bankruptcy: int, expected: Fraction) -> None:
    got = bitmex_adl_score_from_prices(size_sz=size, entry_px=entry, mark_px=mark, bankruptcy_px=bankruptcy)
    assert got == expected


def test_bitmex_score_refuses_a_position_past_bankruptcy() -> None:
    with pytest.raises(InvalidNumberError):
        bitmex_adl_score(mark_value=90, entry_value=100, bankrupt_value=95)


def test_binance_forum_example_leverage_pnl() -> None:
    """uPnL 40.2, WB 4.27, margin ratio 13.42 % → PnL% 9.41, LeveragePnL 1.26 (half-up to 2 dp; truncation agrees)."""
    usdt = 10**8
    upnl, wb = 4_020_000_000, 427_000_000  # 40.2 and 4.27 USDT
    mm = 596_787_400  # 13.42 % × (4.27 + 40.2) = 5.967874 USDT, so that the margin ratio is exactly 13.42 %
    got = binance_leverage_pnl(upnl_q=upnl, wallet_balance_q=wb, maintenance_q=mm, one_q=usdt)
    assert got.margin_ratio == Fraction(1342, 10_000)
    assert got.pnl_pct == Fraction(4020, 427)
    assert got.leverage_pnl == Fraction(4020, 427) * Fraction(1342, 10_000)
    for rounding in (Rounding.HALF_UP, Rounding.TRUNC):
        assert fraction_to_decimal(got.pnl_pct, 2, rounding) == Decimal("9.41")
        assert fraction_to_decimal(got.leverage_pnl, 2, rounding) == Decimal("1.26")


@pytest.mark.parametrize(
    ("upnl", "wb", "mm", "expected"),
    [
        pytest.param(-5, 100, 10, Fraction(0), id="a loss scores 0"),
        pytest.param(50, 0, 10, Fraction(50, 100) * Fraction(10, 50), id="wallet below one unit counts as one"),
        pytest.param(50, -60, 10, Fraction(0), id="non-positive margin balance: margin ratio 0"),
    ],
)
def test_binance_leverage_pnl_edges(upnl: int, wb: int, mm: int, expected: Fraction) -> None:
    got = binance_leverage_pnl(upnl_q=upnl, wallet_balance_q=wb, maintenance_q=mm, one_q=100)
    assert got.leverage_pnl == expected


def test_hyperliquid_score() -> None:
    got = hyperliquid_adl_score(mark_px=110, entry_px=100, notional_q=1_100, account_value_q=500)
    assert got == Fraction(110, 100) * Fraction(1_100, 500)


def test_hyperliquid_score_refuses_a_non_positive_account_value() -> None:
    with pytest.raises(InvalidNumberError):
        hyperliquid_adl_score(mark_px=110, entry_px=100, notional_q=1_100, account_value_q=0)


def test_rank_by_method_reads_each_methods_fields() -> None:
    a = AdlCandidate(
        "a", 10, entry_px=100, mark_px=120, bankruptcy_px=80, wallet_balance_q=1_000, upnl_q=200,
        maintenance_q=60, account_value_q=1_200, notional_q=1_200,
    )  # fmt: skip
    b = AdlCandidate(
        "b", 10, entry_px=100, mark_px=120, bankruptcy_px=110, wallet_balance_q=100, upnl_q=200,
        maintenance_q=60, account_value_q=300, notional_q=1_200,
    )  # fmt: skip
    for method in (AdlMethod.BITMEX, AdlMethod.BINANCE, AdlMethod.HYPERLIQUID):
        ranked = rank_candidates([a, b], method, one_q=1)
        assert [r.candidate.account_id for r in ranked] == ["b", "a"], method  # b is more leveraged
    with pytest.raises(InvalidInputError):
        rank_candidates([a, b], AdlMethod.BINANCE)  # one_q missing


# ---------------------------------------------------------------------------------------------
# C14 properties: sized ADL, flat accounts never pay, deterministic ranking
# ---------------------------------------------------------------------------------------------


@st.composite
def candidate_pools(draw: st.DrawFn) -> list[AdlCandidate]:
    n = draw(st.integers(min_value=0, max_value=12))
    ids = draw(st.lists(st.text(alphabet="abcdefxyz0123", min_size=1, max_size=4), min_size=n, max_size=n, unique=True))
    return [
        AdlCandidate(
            account_id=i,
            size_sz=draw(st.integers(min_value=0, max_value=50)),
            score=Fraction(draw(st.integers(-5, 5)), draw(st.integers(1, 3))),
            mark_px=draw(st.integers(min_value=500, max_value=800)),
            account_value_q=draw(st.integers(min_value=-1_000, max_value=20_000)),
        )
        for i in ids
    ]


@settings(max_examples=300, deadline=None)
@given(
    pool=candidate_pools(),
    needed=st.integers(min_value=1, max_value=200),
    price=st.integers(min_value=400, max_value=900),
)
def test_adl_allocation_is_sized_and_never_touches_flat_or_would_be_bankrupt_accounts(
    pool: list[AdlCandidate], needed: int, price: int
) -> None:
    ranked = rank_candidates(pool, AdlMethod.SCORE)
    got = allocate_adl(needed_sz=needed, ranked=ranked, price_px=price, liquidated_is_long=False, units=CONTRACTS)
    by_id = {c.account_id: c for c in pool}
    assert got.filled_sz == sum(f.close_sz for f in got.fills) <= needed  # C14(b): never more than needed
    assert got.filled_sz + got.unfilled_sz == needed
    for f in got.fills:
        c = by_id[f.account_id]
        assert c.size_sz > 0  # C14(a): a flat account never pays
        assert 0 < f.close_sz <= c.size_sz
        assert f.equity_after_q >= 0  # C15: nobody is pushed into bankruptcy
        assert f.account_id not in got.skipped_ids
    # Replay the rule by hand: rank order, take min(remaining, size), skip iff equity would go negative.
    remaining, expected_fills, expected_skipped = needed, [], []
    for r in ranked:
        if remaining == 0:
            break
        c = r.candidate
        take = min(remaining, c.size_sz)
        assert c.account_value_q is not None
        assert c.mark_px is not None
        if c.account_value_q + take * (price - c.mark_px) < 0:
            expected_skipped.append(c.account_id)
            continue
        expected_fills.append((c.account_id, take))
        remaining -= take
    assert [(f.account_id, f.close_sz) for f in got.fills] == expected_fills
    assert list(got.skipped_ids) == expected_skipped


@settings(max_examples=200, deadline=None)
@given(pool=candidate_pools(), data=st.data())
def test_ranking_does_not_depend_on_input_order(pool: list[AdlCandidate], data: st.DataObject) -> None:
    shuffled = data.draw(st.permutations(pool))
    assert rank_candidates(shuffled, AdlMethod.SCORE) == rank_candidates(pool, AdlMethod.SCORE)
    ranked = rank_candidates(pool, AdlMethod.SCORE)
    keys = [(-r.score, r.candidate.account_id) for r in ranked]
    assert keys == sorted(keys)
    indicators = adl_quintiles(ranked)
    assert [i.quintile for i in indicators] == sorted(i.quintile for i in indicators)
    if indicators:
        assert indicators[-1].percentile_r == RATE_SCALE


# ---------------------------------------------------------------------------------------------
# Drift loss socialisation (§9)
# ---------------------------------------------------------------------------------------------


def test_drift_socialised_loss_matches_drift() -> None:
    """$100 over 7 long + 4 short base: ceil(100e6 × 1e9 / 11e9) = 9,090,910 (Drift test: 9,090,910,000, 1e3 finer)."""
    delta = socialized_loss_index_delta(
        loss_q=100 * 10**6, base_long_sz=7 * 10**9, base_short_sz=-4 * 10**9, index_scale=10**9
    )
    assert delta == 9_090_910
    long_charge = socialized_loss_charge_q(size_sz=7 * 10**9, index_delta=delta, index_scale=10**9)
    short_charge = socialized_loss_charge_q(size_sz=-4 * 10**9, index_delta=delta, index_scale=10**9)
    assert (long_charge, short_charge) == (63_636_370, 36_363_640)
    assert long_charge + short_charge - 100 * 10**6 == 10  # rounding residue, in the system's favour


def test_socialised_loss_needs_open_interest() -> None:
    with pytest.raises(InvalidInputError):
        socialized_loss_index_delta(loss_q=1, base_long_sz=0, base_short_sz=0, index_scale=10**9)


@settings(max_examples=300, deadline=None)
@given(
    loss=st.integers(min_value=0, max_value=10**15),
    longs=st.lists(st.integers(min_value=0, max_value=10**12), min_size=1, max_size=8),
    shorts=st.lists(st.integers(min_value=0, max_value=10**12), min_size=0, max_size=8),
    scale=st.sampled_from([1, 10**6, 10**9, 10**12]),
)
def test_socialised_loss_charges_cover_the_loss_and_flat_pays_nothing(
    loss: int, longs: list[int], shorts: list[int], scale: int
) -> None:
    total = sum(longs) + sum(shorts)
    if total == 0:
        return
    delta = socialized_loss_index_delta(
        loss_q=loss, base_long_sz=sum(longs), base_short_sz=-sum(shorts), index_scale=scale
    )
    charges = [socialized_loss_charge_q(size_sz=s, index_delta=delta, index_scale=scale) for s in longs + shorts]
    n = len(charges)
    assert loss <= sum(charges) <= loss + -(-total // scale) + n
    assert socialized_loss_charge_q(size_sz=0, index_delta=delta, index_scale=scale) == 0
