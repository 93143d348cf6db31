"""Exact numbers: rounding modes, boundary parsing, quanta conversion."""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from perpmargin.errors import InvalidNumberError, PerpmarginError
from perpmargin.numbers import Rounding, div_round, fraction_to_decimal, from_quanta, parse_decimal, to_quanta


@pytest.mark.parametrize(
    ("num", "den", "rounding", "expected"),
    [
        (7, 2, Rounding.CEIL, 4),
        (-7, 2, Rounding.CEIL, -3),
        (7, 2, Rounding.FLOOR, 3),
        (-7, 2, Rounding.FLOOR, -4),
        (-7, 2, Rounding.TRUNC, -3),
        (-7, 2, Rounding.AWAY, -4),
        (5, 2, Rounding.HALF_UP, 3),
        (-5, 2, Rounding.HALF_UP, -3),
        (5, 2, Rounding.HALF_EVEN, 2),
        (7, 2, Rounding.HALF_EVEN, 4),
        (7, -2, Rounding.CEIL, -3),
        (6, 3, Rounding.CEIL, 2),
    ],
    ids=lambda v: str(v),
)
def test_div_round_table(num: int, den: int, rounding: Rounding, expected: int) -> None:
    assert div_round(num, den, rounding) == expected


@given(st.integers(-(10**30), 10**30), st.integers(1, 10**12), st.sampled_from(list(Rounding)))
def test_div_round_agrees_with_decimal_quantize(num: int, den: int, rounding: Rounding) -> None:
    exact = Fraction(num, den)
    got = div_round(num, den, rounding)
    assert abs(Fraction(got) - exact) < 1
    if rounding is Rounding.CEIL:
        assert got >= exact
    if rounding is Rounding.FLOOR:
        assert got <= exact
    via_decimal = fraction_to_decimal(exact, 0, rounding)
    assert via_decimal == Decimal(got)


@pytest.mark.parametrize(
    "bad",
    [0.1, float("nan"), float("inf"), True, "abc", "1e40", "NaN", "-inf", None, [1], ""],
    ids=[
        "float",
        "float nan",
        "float inf",
        "bool",
        "word",
        "too large",
        "string nan",
        "string -inf",
        "none",
        "list",
        "empty",
    ],
)
def test_parse_decimal_refuses_what_is_not_an_exact_finite_number(bad: object) -> None:
    with pytest.raises(InvalidNumberError) as info:
        parse_decimal(bad, field="x")
    assert isinstance(info.value, PerpmarginError)
    assert info.value.details["field"] == "x"


def test_to_quanta_is_exact_or_refuses_without_a_rounding() -> None:
    assert to_quanta("1.23456789", 8, field="a") == 123_456_789
    assert to_quanta(Decimal("2"), 3, field="a") == 2_000
    with pytest.raises(InvalidNumberError):
        to_quanta("0.123", 2, field="a")
    assert to_quanta("0.123", 2, field="a", rounding=Rounding.CEIL) == 13
    assert to_quanta("-0.123", 2, field="a", rounding=Rounding.CEIL) == -12
    with pytest.raises(InvalidNumberError):
        to_quanta("0", 2, field="a", positive=True)
    with pytest.raises(InvalidNumberError):
        to_quanta("-1", 2, field="a", non_negative=True)


@given(st.integers(-(10**20), 10**20), st.integers(0, 18))
def test_quanta_round_trip(q: int, decimals: int) -> None:
    assert to_quanta(from_quanta(q, decimals), decimals, field="q") == q
    assert to_quanta(str(from_quanta(q, decimals)), decimals, field="q") == q
