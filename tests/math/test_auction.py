"""Dutch-auction price curve for liquidation auctions."""

from __future__ import annotations

from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from perpmargin.errors import InvalidNumberError
from perpmargin.math.auction import AuctionCurve, auction_price, auction_schedule
from perpmargin.numbers import RATE_SCALE

PCT = RATE_SCALE // 100
BP10 = PCT // 10  # 0.1 %

SCHEDULE_CASES = [
    pytest.param(
        {"mark_px": 50_000, "bankruptcy_px": 49_000, "liquidating_long": True, "start_discount_r": BP10},
        AuctionCurve.LINEAR,
        0,
        [49_950, 49_713, 49_475, 49_238, 49_000],
        id="long: linear from 49,950 (mark − 0.1%) to 49,000; half ticks round up (system sells)",
    ),
    pytest.param(
        {"mark_px": 50_000, "bankruptcy_px": 51_000, "liquidating_long": False, "start_discount_r": BP10},
        AuctionCurve.LINEAR,
        0,
        [50_050, 50_287, 50_525, 50_762, 51_000],
        id="short: linear from 50,050 (mark + 0.1%) to 51,000; half ticks round down (system buys)",
    ),
    pytest.param(
        {"mark_px": 50_000, "bankruptcy_px": 49_000, "liquidating_long": True, "start_discount_r": BP10},
        AuctionCurve.EXPONENTIAL,
        50 * PCT,
        [49_950, 49_475, 49_238, 49_119, 49_000],
        id="long: exponential, half the distance each step (950, 475, 237.5, 118.75), then bankruptcy",
    ),
    pytest.param(
        {"mark_px": 50_000, "bankruptcy_px": 50_500, "liquidating_long": True, "start_discount_r": BP10},
        AuctionCurve.LINEAR,
        0,
        [50_500] * 5,
        id="long already past bankruptcy at mark: the whole auction sits at the bankruptcy price",
    ),
    pytest.param(
        {"mark_px": 50_000, "bankruptcy_px": 49_000, "liquidating_long": True, "start_discount_r": 0},
        AuctionCurve.LINEAR,
        0,
        [50_000, 49_750, 49_500, 49_250, 49_000],
        id="no start discount: starts at mark",
    ),
]


@pytest.mark.parametrize(("market", "curve", "decay_r", "expected"), SCHEDULE_CASES)
def test_auction_schedule(market: dict[str, int], curve: AuctionCurve, decay_r: int, expected: list[int]) -> None:
    got = auction_schedule(**market, steps=4, tick_px=1, curve=curve, decay_r=decay_r)  # type: ignore[arg-type]
    assert got == expected
    for k, price in enumerate(expected):
        assert auction_price(k, **market, steps=4, tick_px=1, curve=curve, decay_r=decay_r) == price  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("liquidating_long", "bankruptcy_px", "expected"),
    [
        pytest.param(True, 49_003, [49_950, 49_715, 49_480, 49_240, 49_005], id="long on a 5 tick: prices round up"),
        pytest.param(False, 50_997, [50_050, 50_285, 50_520, 50_760, 50_995], id="short on a 5 tick: round down"),
    ],
)
def test_auction_rounds_to_tick_in_the_systems_favour(
    liquidating_long: bool, bankruptcy_px: int, expected: list[int]
) -> None:
    got = auction_schedule(
        mark_px=50_000,
        bankruptcy_px=bankruptcy_px,
        liquidating_long=liquidating_long,
        start_discount_r=BP10,
        steps=4,
        tick_px=5,
    )
    assert got == expected


def test_steps_past_the_end_stay_at_bankruptcy() -> None:
    args = {"mark_px": 50_000, "bankruptcy_px": 49_000, "liquidating_long": True, "start_discount_r": BP10}
    assert auction_price(99, **args, steps=4, tick_px=1) == 49_000  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param({"steps": 0}, id="no steps"),
        pytest.param({"tick_px": 0}, id="zero tick"),
        pytest.param({"start_discount_r": RATE_SCALE}, id="100% start discount"),
        pytest.param({"curve": AuctionCurve.EXPONENTIAL, "decay_r": 0}, id="exponential without decay"),
        pytest.param({"liquidating_long": False, "bankruptcy_px": 3, "tick_px": 5}, id="short bankrupt below a tick"),
        pytest.param({"mark_px": 0}, id="zero mark"),
    ],
)
def test_auction_rejects_bad_parameters(overrides: dict[str, object]) -> None:
    args: dict[str, object] = {
        "mark_px": 50_000,
        "bankruptcy_px": 49_000,
        "liquidating_long": True,
        "start_discount_r": BP10,
        "steps": 4,
        "tick_px": 1,
    }
    args.update(overrides)
    with pytest.raises(InvalidNumberError):
        auction_schedule(**args)  # type: ignore[arg-type]


def test_auction_rejects_a_negative_step() -> None:
    with pytest.raises(InvalidNumberError):
        auction_price(
            -1, mark_px=50_000, bankruptcy_px=49_000, liquidating_long=True, start_discount_r=0, steps=4, tick_px=1
        )


@st.composite
def auctions(draw: st.DrawFn) -> dict[str, object]:
    tick = draw(st.integers(min_value=1, max_value=100))
    liquidating_long = draw(st.booleans())
    mark = draw(st.integers(min_value=tick, max_value=10**9))
    bankruptcy = draw(st.integers(min_value=tick, max_value=2 * mark))
    curve = draw(st.sampled_from(AuctionCurve))
    return {
        "mark_px": mark,
        "bankruptcy_px": bankruptcy,
        "liquidating_long": liquidating_long,
        "start_discount_r": draw(st.integers(min_value=0, max_value=RATE_SCALE - 1)),
        "steps": draw(st.integers(min_value=1, max_value=60)),
        "tick_px": tick,
        "curve": curve,
        "decay_r": draw(st.integers(min_value=1, max_value=RATE_SCALE)) if curve is AuctionCurve.EXPONENTIAL else 0,
    }


@settings(max_examples=300, deadline=None)
@given(args=auctions())
def test_auction_is_monotone_and_never_crosses_bankruptcy(args: dict[str, object]) -> None:
    schedule = auction_schedule(**args)  # type: ignore[arg-type]
    bankruptcy = args["bankruptcy_px"]
    tick = args["tick_px"]
    assert isinstance(bankruptcy, int)
    assert isinstance(tick, int)
    assert len(schedule) == args["steps"] + 1  # type: ignore[operator]
    assert all(p % tick == 0 and p > 0 for p in schedule)
    if args["liquidating_long"]:
        assert all(a >= b for a, b in pairwise(schedule))  # the system's sell price falls
        assert all(p >= bankruptcy for p in schedule)
        assert schedule[-1] == -(-bankruptcy // tick) * tick
    else:
        assert all(a <= b for a, b in pairwise(schedule))  # the system's buy price rises
        assert all(p <= bankruptcy for p in schedule)
        assert schedule[-1] == bankruptcy // tick * tick


@settings(max_examples=100, deadline=None)
@given(args=auctions(), step=st.integers(min_value=0, max_value=80))
def test_auction_price_agrees_with_the_schedule(args: dict[str, object], step: int) -> None:
    schedule = auction_schedule(**args)  # type: ignore[arg-type]
    assert auction_price(step, **args) == schedule[min(step, len(schedule) - 1)]  # type: ignore[arg-type]
