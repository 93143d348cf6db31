"""dYdX-style account-level bankruptcy, fillable price and insurance-fund delta.

These are the formulas of dYdX v4's ``x/clob/keeper/liquidations.go``
(``GetBankruptcyPriceInQuoteQuantums``, ``GetFillablePrice``,
``ConvertFillablePriceToSubticks``, ``GetLiquidationInsuranceFundDelta``), written as pure
functions on integers.

Glossary (all amounts in **quote quanta**, sizes in **size quanta**, signed)
--------------------------------------------------------------------------
``PS``
    Position size: positive long, negative short.
``Δ``
    Size delta of the liquidation: opposite sign to ``PS`` and ``|Δ| ≤ |PS|``.
``PNNV``, ``NNV(s)``
    Position net notional value (signed: a short's is negative) at size ``s``.
``PMMR``, ``MMR(s)``
    Position maintenance margin requirement at size ``s`` (≥ 0).
``TNC``, ``TMMR``
    Total net collateral and total maintenance requirement of the whole account.
``ΔNNV``, ``ΔMMR``
    ``NNV(PS + Δ) − NNV(PS)`` and ``MMR(PS + Δ) − MMR(PS)``: computed from **two full
    evaluations** of the position's risk (never from ``Δ`` alone), so that rounding inside the
    risk function and a non-linear requirement are handled exactly as dYdX does.

Rates (``BA``, ``SMMR``, max fee) are ints in rate quanta (``1e-9``,
:data:`~perpmargin.numbers.RATE_SCALE`); dYdX's ppm values are ``ppm × 1000``.
"""

from __future__ import annotations

from collections.abc import Callable
from fractions import Fraction
from typing import NamedTuple

from perpmargin.errors import InvalidInputError, InvalidNumberError, InvariantViolation
from perpmargin.numbers import RATE_SCALE, Rounding, div_round, pow10

__all__ = [
    "PositionRisk",
    "RiskFn",
    "adjusted_bankruptcy_rating",
    "bankruptcy_quote_quantums",
    "bankruptcy_quote_quantums_from_deltas",
    "fillable_price",
    "fillable_price_to_px",
    "insurance_fund_delta",
    "round_fillable_price_to_tick",
]


class PositionRisk(NamedTuple):
    """Risk of one position at one size: net notional (signed) and maintenance requirement.

    Both in quote quanta. ``nnv_q`` is positive for a long and negative for a short
    (dYdX's ``NC`` of the position, without the quote balance); ``mmr_q`` is ``≥ 0``.
    """

    nnv_q: int
    mmr_q: int


RiskFn = Callable[[int], PositionRisk]
"""Maps a signed position size (size quanta) to its :class:`PositionRisk` at the oracle price."""


def _require_positive_tmmr(total_mmr_q: int) -> None:
    if total_mmr_q <= 0:
        raise InvalidNumberError(
            "total maintenance requirement must be positive (an account without one is not liquidatable)",
            field="total_mmr_q",
            value=total_mmr_q,
        )


def bankruptcy_quote_quantums_from_deltas(
    *, delta_nnv_q: int, delta_mmr_q: int, total_nc_q: int, total_mmr_q: int
) -> int:
    """Bankruptcy value of a position delta, in quote quanta (signed).

    Formula: ``BQ = −ΔNNV − floor(TNC × |ΔMMR| / TMMR)``.

    The floor division is the only rounding; because its result is *subtracted*, ``BQ`` is
    rounded toward **+∞**, so that closing the delta at ``BQ`` never needs an insurance-fund
    payment (the dYdX comment's reason). ``BQ`` is what the account must *receive* for the
    delta: positive when selling (closing a long), negative when buying (closing a short, it
    may pay at most ``−BQ``).

    Raises
    ------
    InvariantViolation
        If ``ΔMMR > 0``: reducing a position raised its requirement (dYdX panics here).
    InvalidNumberError
        If ``TMMR ≤ 0``.
    """
    if delta_mmr_q > 0:
        raise InvariantViolation("maintenance requirement grew when the position was reduced", delta_mmr_q=delta_mmr_q)
    _require_positive_tmmr(total_mmr_q)
    # Python's // floors toward −inf even for a negative TNC, like Go's Euclidean big.Int.Div
    # with a positive divisor: subtracting a floored value rounds BQ toward +inf.
    before_bankruptcy_q = (total_nc_q * -delta_mmr_q) // total_mmr_q
    return -delta_nnv_q - before_bankruptcy_q


def _validate_delta(position_sz: int, delta_sz: int) -> None:
    if position_sz == 0 or delta_sz == 0 or (position_sz > 0) == (delta_sz > 0) or abs(delta_sz) > abs(position_sz):
        raise InvalidInputError(
            "the size delta must reduce the position: opposite sign and no larger than it",
            position_sz=position_sz,
            delta_sz=delta_sz,
        )


def bankruptcy_quote_quantums(
    *, position_sz: int, delta_sz: int, risk: RiskFn, total_nc_q: int, total_mmr_q: int
) -> int:
    """Bankruptcy value (quote quanta, signed) of closing ``delta_sz`` of a position.

    Formula: ``BQ = −ΔNNV − TNC × |ΔMMR| / TMMR`` with ``ΔNNV``/``ΔMMR`` taken from
    ``risk(PS + Δ) − risk(PS)`` (two full evaluations), rounded toward +∞ as in
    :func:`bankruptcy_quote_quantums_from_deltas`.

    Examples (dYdX ``liquidations_test.go``, BTC at $50,000, MMF 10 %): long 0.1 BTC with
    −4,501 USDC, full close → ``4_501_000_000`` (= $4,501 received at least); short 0.1 BTC
    with +5,499 USDC → ``−5_499_000_000`` (pays at most $5,499).

    Raises
    ------
    InvalidInputError
        If ``delta_sz`` does not reduce ``position_sz`` (same sign, zero, or larger).
    InvariantViolation
        If the risk function's requirement grows on the reduction.
    InvalidNumberError
        If ``TMMR ≤ 0``.
    """
    _validate_delta(position_sz, delta_sz)
    old = risk(position_sz)
    new = risk(position_sz + delta_sz)
    return bankruptcy_quote_quantums_from_deltas(
        delta_nnv_q=new.nnv_q - old.nnv_q,
        delta_mmr_q=new.mmr_q - old.mmr_q,
        total_nc_q=total_nc_q,
        total_mmr_q=total_mmr_q,
    )


def adjusted_bankruptcy_rating(*, total_nc_q: int, total_mmr_q: int, bankruptcy_adjustment_r: int) -> Fraction:
    """ABR, exact: ``clamp(BA × (1 − TNC / TMMR), 0, 1)``.

    ``BA`` in rate quanta (``1.0`` = ``RATE_SCALE``). ``0`` for a healthy account
    (``TNC ≥ TMMR``), ``1`` at or below bankruptcy when ``BA = 1``.

    Raises
    ------
    InvalidNumberError
        If ``TMMR ≤ 0`` or ``BA < 0``.
    """
    _require_positive_tmmr(total_mmr_q)
    if bankruptcy_adjustment_r < 0:
        raise InvalidNumberError(
            "bankruptcy adjustment must not be negative",
            field="bankruptcy_adjustment_r",
            value=bankruptcy_adjustment_r,
        )
    unbounded = Fraction(bankruptcy_adjustment_r, RATE_SCALE) * (1 - Fraction(total_nc_q, total_mmr_q))
    return min(Fraction(1), max(Fraction(0), unbounded))


def fillable_price(
    *,
    position_sz: int,
    position_nnv_q: int,
    position_mmr_q: int,
    total_nc_q: int,
    total_mmr_q: int,
    bankruptcy_adjustment_r: int,
    spread_to_mmr_r: int,
) -> Fraction:
    """Fillable price of a liquidation order, exact, in quote quanta per size quantum.

    Formula: ``FP = (PNNV − ABR × SMMR × PMMR) / PS`` with
    ``ABR = clamp(BA × (1 − TNC/TMMR), 0, 1)`` (:func:`adjusted_bankruptcy_rating`).
    No rounding: dYdX returns a ``big.Rat``; :func:`fillable_price_to_px` converts units and
    :func:`round_fillable_price_to_tick` rounds it to the order's tick.

    For a long (``PNNV > 0``) the price is below the oracle, for a short above it; the more
    underwater the account, the wider the spread, up to ``SMMR × PMMR / |PS|``.

    Raises
    ------
    InvalidInputError
        If ``position_sz == 0`` or ``position_mmr_q < 0``.
    InvalidNumberError
        If ``TMMR ≤ 0`` or a rate is negative.
    InvariantViolation
        If the result is negative (dYdX panics: ``PNNV`` and ``PS`` disagree in sign).
    """
    if position_sz == 0:
        raise InvalidInputError("a fillable price needs an open position", position_sz=position_sz)
    if position_mmr_q < 0:
        raise InvalidInputError("a position requirement cannot be negative", position_mmr_q=position_mmr_q)
    if spread_to_mmr_r < 0:
        raise InvalidNumberError(
            "spread-to-MMR ratio must not be negative", field="spread_to_mmr_r", value=spread_to_mmr_r
        )
    abr = adjusted_bankruptcy_rating(
        total_nc_q=total_nc_q, total_mmr_q=total_mmr_q, bankruptcy_adjustment_r=bankruptcy_adjustment_r
    )
    max_spread_q = Fraction(position_mmr_q * spread_to_mmr_r, RATE_SCALE)
    price = (position_nnv_q - abr * max_spread_q) / position_sz
    if price < 0:
        raise InvariantViolation("fillable price is negative", position_sz=position_sz, position_nnv_q=position_nnv_q)
    return price


def fillable_price_to_px(
    price_q_per_sz: Fraction, *, quote_decimals: int, size_decimals: int, price_decimals: int
) -> Fraction:
    """Convert a price in quote quanta per size quantum to price quanta (exact).

    Formula: ``px = p × 10^(price_decimals + size_decimals − quote_decimals)``: a size quantum
    is ``10^-size_decimals`` base and a quote quantum ``10^-quote_decimals`` quote, and a
    price quantum is ``10^-price_decimals`` quote per base. No rounding.
    """
    e = price_decimals + size_decimals - quote_decimals
    return price_q_per_sz * pow10(e) if e >= 0 else price_q_per_sz / pow10(-e)


def round_fillable_price_to_tick(price_px: Fraction, *, tick_px: int, liquidating_long: bool) -> int:
    """Round a fillable price (price quanta) onto the tick grid, in dYdX's direction.

    A sell that closes a long rounds **up** and a buy that closes a short rounds **down**:
    the liquidation order never trades at a price worse for the account than the fillable
    price. The result is a multiple of ``tick_px`` and at least one tick (dYdX's lower bound).

    Raises
    ------
    InvalidNumberError
        If ``tick_px ≤ 0`` or the price is negative.
    """
    if tick_px <= 0:
        raise InvalidNumberError("tick must be positive", field="tick_px", value=tick_px)
    if price_px < 0:
        raise InvalidNumberError("fillable price must not be negative", field="price_px", value=str(price_px))
    rounding = Rounding.CEIL if liquidating_long else Rounding.FLOOR
    ticks = div_round(price_px.numerator, price_px.denominator * tick_px, rounding)
    return max(1, ticks) * tick_px


def insurance_fund_delta(*, quote_received_q: int, bankruptcy_q: int, max_fee_r: int) -> int:
    """Net payment between the liquidated account and the insurance fund, quote quanta.

    Formula: ``d = quote_received − BQ``; if ``d ≤ 0`` the fund pays ``−d`` (the result is
    ``d``, negative or zero); else the account pays ``min(d, floor(|quote_received| × max_fee))``
    (positive result). The fee product is truncated (never overcharges) and never exceeds the
    leftover ``d``, so the account is never pushed below zero by the fee.

    Sign: positive = account pays the fund; negative = the fund covers a loss.
    ``quote_received_q`` is signed: positive when the liquidation sells (closes a long),
    negative when it buys (closes a short).

    Raises
    ------
    InvalidNumberError
        If ``max_fee_r`` is negative.
    """
    if max_fee_r < 0:
        raise InvalidNumberError("max liquidation fee must not be negative", field="max_fee_r", value=max_fee_r)
    d = quote_received_q - bankruptcy_q
    if d <= 0:
        return d
    max_fee_q = abs(quote_received_q) * max_fee_r // RATE_SCALE
    return min(d, max_fee_q)
