"""Funding: premium index, impact prices, rate formula and caps, payments and funding indices.

Units and signs
---------------
* Rates (premium, interest, clamp, caps, funding) are ints in rate quanta (``1e-9``,
  :data:`~perpmargin.numbers.RATE_SCALE`); ``0.05 %`` is ``500_000``.
* Prices are price quanta (``_px``), sizes size quanta (``_sz``, signed: long > 0, short < 0),
  amounts settle-asset quanta (``_q``). A linear position's value in settle quanta is
  ``size_sz × price_px × 10^(quote_decimals − price_decimals − size_decimals)``.
* Sign convention: a positive funding rate means **longs pay shorts**. Functions named
  ``*_owed_*`` / ``*_payment_*`` return what the account **owes** (positive = debit, negative =
  credit); functions named ``*_settlement_*`` return the **balance change** (the negation).
* Every amount an account owes is rounded **against the account**: debits up, credits down
  (``CEIL`` of the amount owed). Over a zero-sum book this leaves a non-negative residue that
  the ledger books to its rounding account (:func:`settle_funding_book`).

Formulas (mechanics.md §6)::

    premium P     = [max(0, impact_bid − index) − max(0, index − impact_ask)] / index
    funding F     = P̄ + clamp(I − P̄, −c, +c)                      (8-hour rate, c = 0.05 %)
    normalised    = F × N / 8                                        (Binance, N-hour interval)
    capped        = clamp(normalised, floor, cap)
    payment       = size × price × F                                 (longs pay when F > 0)

Cumulative funding index (lazy settlement, dYdX / Drift style): the market keeps
``index += rate_r × price_px`` at each funding tick (exact int, :func:`funding_index_delta`); a
position settles ``owed = size × (index_now − index_last)`` converted to settle quanta and
rounded once, against the account (:func:`funding_owed_from_index_q`).

Equivalence with timestamp settlement. For a position whose size is constant between its
last settlement and now, and for ticks ``k`` with rates ``F_k`` and prices ``p_k``::

    owed_from_index = ceil(size × Σ_k F_k·p_k / D) = ceil(Σ_k size × p_k × F_k / D)

so index settlement equals timestamp settlement **exactly** when the timestamp path sums the
exact per-tick amounts and rounds once (or when there is one tick, or every per-tick amount
is on a quantum). If the timestamp path rounds every tick (``Σ_k ceil(x_k)``), the index path
owes at most that much and less than ``K`` quanta less for ``K`` ticks. The condition is
"settle before every size change": the engine must settle a position at its old size before
the size changes, which it does anyway.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Final

from perpmargin.errors import InvalidInputError, InvalidNumberError
from perpmargin.numbers import RATE_SCALE, Rounding, div_round, pow10

__all__ = [
    "BASE_INTERVAL_HOURS",
    "DEFAULT_CLAMP_R",
    "DYDX_FUNDING_PERIOD_S",
    "INVERSE_INDEX_SCALE",
    "BookSide",
    "FundingSettlement",
    "cap_bitmex_r",
    "cap_dydx_r",
    "cap_from_mmr_r",
    "drift_funding_owed_q",
    "drift_funding_rate",
    "dydx_funding_index_delta",
    "dydx_funding_settlement_q",
    "funding_index_delta",
    "funding_owed_from_index_q",
    "funding_owed_q",
    "funding_payment_exact",
    "funding_payment_q",
    "funding_rate_r",
    "funding_settlement_from_index_q",
    "impact_notional_q",
    "impact_price",
    "impact_price_inverse",
    "inverse_funding_index_delta",
    "inverse_funding_owed_from_index_q",
    "inverse_funding_payment_exact",
    "premium_from_mark_r",
    "premium_from_mid_r",
    "premium_index_r",
    "prorate_rate_r",
    "quote_to_pxsz",
    "settle_funding_book",
    "settle_funding_values",
]

DEFAULT_CLAMP_R: Final = 500_000
"""The ±0.05 % clamp on ``I − P̄`` (Binance, BitMEX, Bybit, Hyperliquid), rate quanta."""
BASE_INTERVAL_HOURS: Final = 8
"""The interval the funding formula is quoted for (an 8-hour rate)."""
DYDX_FUNDING_PERIOD_S: Final = 28_800
"""dYdX v4: the funding rate is an 8-hour rate; a tick applies ``Δt / 28,800`` of it."""

_DYDX_PPM: Final = 1_000_000
_DRIFT_FUNDING_RATE_BUFFER: Final = 1_000
_ONE_HOUR_S: Final = 3_600
_ONE_DAY_S: Final = 86_400

Number = int | Fraction


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _require_int(name: str, value: object) -> None:
    if not _is_int(value):
        raise InvalidNumberError(f"{name} must be an int", field=name, value=value)


def _require_number(name: str, value: object) -> None:
    """Accept an ``int`` or an exact ``Fraction``; refuse ``float``, ``bool``, ``Decimal``..."""
    if isinstance(value, bool) or not isinstance(value, int | Fraction):
        raise InvalidNumberError(f"{name} must be an int or a Fraction", field=name, value=value)


def _clamp(value: int, lo: int, hi: int) -> int:
    return lo if value < lo else hi if value > hi else value


def _round(value: Fraction, rounding: Rounding) -> int:
    return div_round(value.numerator, value.denominator, rounding)


# --------------------------------------------------------------------------------------------
# Impact prices and premium index
# --------------------------------------------------------------------------------------------


class BookSide(enum.Enum):
    """Which side of the book a market order of the impact notional would hit."""

    BID = "bid"
    """A sell walks the bids, best (highest) first: gives the impact **bid**."""
    ASK = "ask"
    """A buy walks the asks, best (lowest) first: gives the impact **ask**."""


def impact_notional_q(imr_r: int, *, base_notional_q: int, rounding: Rounding) -> int:
    """Binance impact margin notional ``IMN = base / IMR`` (base = 200 USDT, or 200 USD COIN-M).

    ``imr_r`` is the initial margin rate at the maximum leverage bracket (``1/125 = 0.8 %``).
    Units: ``base_notional_q`` and the result in settle quanta. ``base × RATE_SCALE / imr_r``,
    rounded once with ``rounding``. Examples: 200 USDT / 0.8 % = 25,000 USDT; / 5 % = 4,000.

    Raises
    ------
    InvalidNumberError
        When ``imr_r <= 0`` or ``base_notional_q <= 0``.
    """
    _require_int("imr_r", imr_r)
    _require_int("base_notional_q", base_notional_q)
    if imr_r <= 0 or base_notional_q <= 0:
        raise InvalidNumberError("impact notional needs imr_r > 0 and base_notional_q > 0", imr_r=imr_r)
    return div_round(base_notional_q * RATE_SCALE, imr_r, rounding)


def quote_to_pxsz(
    notional_q: Number, *, price_decimals: int, size_decimals: int, quote_decimals: int
) -> Fraction:
    """Convert a quote amount in settle quanta to *price quanta × size quanta* (exact).

    ``notional_q × 10^(price_decimals + size_decimals − quote_decimals)``: the unit in which a
    book level's ``price_px × size_sz`` is a notional; used for :func:`impact_price`.
    """
    _require_number("notional_q", notional_q)
    shift = price_decimals + size_decimals - quote_decimals
    if shift >= 0:
        return Fraction(notional_q) * pow10(shift)
    return Fraction(notional_q) / pow10(-shift)


def impact_price(
    levels: Sequence[tuple[int, int]],
    impact_notional_pxsz: Number,
    side: BookSide,
) -> Fraction | None:
    """Average fill price of a market order of ``impact_notional`` against one side of a book.

    ``levels`` are ``(price_px, size_sz)``; they are sorted here (bids by price descending, asks
    ascending), so their order does not matter. The order fills whole levels while their
    notional ``price × size`` fits, then the fraction ``remaining / price`` of the next level::

        impact price = impact_notional / base filled          (exact Fraction, price quanta)

    ``impact_notional_pxsz`` is in price quanta × size quanta (see :func:`quote_to_pxsz`).
    Returns ``None`` when the side's whole depth is smaller than the impact notional (dYdX:
    no impact price, premium 0).

    Raises
    ------
    InvalidNumberError
        On a non-positive notional, price or size.
    """
    _require_number("impact_notional_pxsz", impact_notional_pxsz)
    notional = Fraction(impact_notional_pxsz)
    if notional <= 0:
        raise InvalidNumberError("impact notional must be positive", impact_notional=str(notional))
    for price, size in levels:
        if not _is_int(price) or not _is_int(size) or price <= 0 or size <= 0:
            raise InvalidNumberError("book levels need positive int price and size", price=price, size=size)
    ordered = sorted(levels, key=lambda lv: lv[0], reverse=side is BookSide.BID)
    remaining = notional
    base = Fraction(0)
    for price, size in ordered:
        level_notional = price * size
        if remaining <= level_notional:
            base += remaining / price
            return notional / base
        base += size
        remaining -= level_notional
    return None


def impact_price_inverse(
    levels: Sequence[tuple[int, int]],
    impact_contracts_sz: Number,
    side: BookSide,
) -> Fraction | None:
    """Average fill price of a market order of the impact notional on an **inverse** (coin-margined) book.

    Levels are ``(price_px, contracts_sz)``. On an inverse contract the notional of ``c``
    contracts is ``c × contract_size`` in the quote currency (USD) whatever the price, and what
    changes hands is the coin ``c × contract_size / price``. Binance COIN-M states the impact
    margin notional in USD: "IMN for COIN-Margined contracts is the notional available to trade
    with 200 USD worth of margin" (``IMN = 200 USD / IMR``; mechanics.md §6.2, "COIN-M: 200
    USD"), so the order is ``C = IMN / contract_size`` contracts (``impact_contracts_sz``, size
    quanta, exact, may be fractional). Walking the side best first, level ``i`` contributes
    ``c_i = min(remaining, size_i)`` contracts and ``c_i × contract_size / p_i`` coin; the
    impact price is the quote paid per coin received::

        impact price = C × contract_size / Σ_i (c_i × contract_size / p_i) = C / Σ_i (c_i / p_i)

    (the contract-weighted harmonic mean of the level prices; exact ``Fraction``, price
    quanta). ``None`` when the side's whole depth is smaller than ``C`` (premium 0).

    Raises
    ------
    InvalidNumberError
        On a non-positive notional, price or size.
    """
    _require_number("impact_contracts_sz", impact_contracts_sz)
    wanted = Fraction(impact_contracts_sz)
    if wanted <= 0:
        raise InvalidNumberError("impact notional must be positive", impact_contracts=str(wanted))
    for price, size in levels:
        if not _is_int(price) or not _is_int(size) or price <= 0 or size <= 0:
            raise InvalidNumberError("book levels need positive int price and size", price=price, size=size)
    ordered = sorted(levels, key=lambda lv: lv[0], reverse=side is BookSide.BID)
    remaining = wanted
    coin = Fraction(0)  # Σ c_i / p_i: coin per contract_size, in size quanta / price quanta
    for price, size in ordered:
        take = remaining if remaining <= size else Fraction(size)
        coin += take / price
        remaining -= take
        if remaining == 0:
            return wanted / coin
    return None


def premium_index_r(
    impact_bid_px: Number | None,
    impact_ask_px: Number | None,
    index_px: Number,
    *,
    rounding: Rounding,
    signed: bool = False,
) -> int:
    """Premium index ``P = [max(0, bid − index) − max(0, index − ask)] / index``, rate quanta.

    Binance / dYdX / Hyperliquid (mechanics.md §6.2). Prices in price quanta, exact (an impact
    price is usually a ``Fraction``); the quotient is rounded once with ``rounding``. When a
    side has no impact price (``None``: not enough depth) the premium is 0 (dYdX rule).
    Example: bid 10,100, index 10,000 → ``10_000_000`` (1 %).

    ``signed=True`` (markets whose prices may be zero or negative, incidents.md C5): the
    denominator is ``|index|``, so the premium keeps its meaning (bids above the index → positive
    premium → longs pay) below zero; only ``index == 0`` is refused.

    Raises
    ------
    InvalidNumberError
        When ``index_px <= 0`` (``signed``: when ``index_px == 0``).
    """
    _require_number("index_px", index_px)
    index = Fraction(index_px)
    if index == 0 or (index < 0 and not signed):
        raise InvalidNumberError("premium index needs a positive index price", index_px=str(index))
    if impact_bid_px is None or impact_ask_px is None:
        return 0
    _require_number("impact_bid_px", impact_bid_px)
    _require_number("impact_ask_px", impact_ask_px)
    up = max(Fraction(0), Fraction(impact_bid_px) - index)
    down = max(Fraction(0), index - Fraction(impact_ask_px))
    return _round((up - down) * RATE_SCALE / abs(index), rounding)


def premium_from_mark_r(mark_px: Number, index_px: Number, *, rounding: Rounding, signed: bool = False) -> int:
    """Premium of the mark over the index ``(mark − index) / |index|``, rate quanta, rounded once.

    ``signed=True`` accepts a negative index (the denominator is ``|index|``, so a mark above the
    index is a positive premium on either side of zero).

    Raises
    ------
    InvalidNumberError
        When ``index_px <= 0`` (``signed``: when ``index_px == 0``).
    """
    _require_number("mark_px", mark_px)
    _require_number("index_px", index_px)
    index = Fraction(index_px)
    if index == 0 or (index < 0 and not signed):
        raise InvalidNumberError("premium needs a positive index price", index_px=str(index))
    return _round((Fraction(mark_px) - index) * RATE_SCALE / abs(index), rounding)


def premium_from_mid_r(
    impact_bid_px: Number, impact_ask_px: Number, oracle_px: Number, *, rounding: Rounding
) -> int:
    """Hyperliquid HIP-3 premium ``0.5 × (impact_bid + impact_ask) / oracle − 1``, rate quanta.

    Raises
    ------
    InvalidNumberError
        When ``oracle_px <= 0``.
    """
    _require_number("impact_bid_px", impact_bid_px)
    _require_number("impact_ask_px", impact_ask_px)
    mid = (Fraction(impact_bid_px) + Fraction(impact_ask_px)) / 2
    return premium_from_mark_r(mid, oracle_px, rounding=rounding)


# --------------------------------------------------------------------------------------------
# Rate formula, normalisation, caps
# --------------------------------------------------------------------------------------------


def prorate_rate_r(rate_r: int, *, elapsed: int, period: int, rounding: Rounding) -> int:
    """The share ``rate × elapsed / period`` of a rate quoted for ``period``, rate quanta.

    ``elapsed`` and ``period`` in the same time unit. Hyperliquid pays the 8-hour rate hourly:
    ``prorate_rate_r(F, elapsed=1, period=8)`` (0.95 % → 0.11875 %). Rounded once.

    Raises
    ------
    InvalidInputError
        When ``period <= 0`` or ``elapsed < 0``.
    """
    if period <= 0 or elapsed < 0:
        raise InvalidInputError("prorating needs period > 0 and elapsed >= 0", elapsed=elapsed, period=period)
    return div_round(rate_r * elapsed, period, rounding)


def funding_rate_r(
    premium_avg_r: int,
    interest_r: int,
    *,
    rounding: Rounding,
    clamp_r: int = DEFAULT_CLAMP_R,
    cap_r: int | None = None,
    floor_r: int | None = None,
    interval_hours: int = BASE_INTERVAL_HOURS,
    base_interval_hours: int = BASE_INTERVAL_HOURS,
) -> int:
    """Funding rate for one interval, rate quanta.

    ::

        F  = P̄ + clamp(I − P̄, −clamp_r, +clamp_r)       (rate for base_interval_hours, exact)
        Fn = F × interval_hours / base_interval_hours     (Binance "/(8/N)"), rounded with ``rounding``
        result = clamp(Fn, floor_r, cap_r)

    When ``|I − P̄| ≤ clamp_r`` the result before normalisation is exactly ``I`` (§13 item 21).
    ``cap_r`` and ``floor_r`` bound the **interval's** rate (the one charged); ``floor_r``
    defaults to ``−cap_r``; ``None`` for both means uncapped. Build caps with
    :func:`cap_from_mmr_r` (Binance), :func:`cap_bitmex_r` or :func:`cap_dydx_r`.
    The rounding only acts on the normalisation (``F × N / 8``).

    Raises
    ------
    InvalidInputError
        On a negative clamp, non-positive interval, or ``floor_r > cap_r``.
    """
    for name, value in (("premium_avg_r", premium_avg_r), ("interest_r", interest_r), ("clamp_r", clamp_r)):
        _require_int(name, value)
    if clamp_r < 0:
        raise InvalidInputError("clamp_r must not be negative", clamp_r=clamp_r)
    if interval_hours <= 0 or base_interval_hours <= 0:
        raise InvalidInputError(
            "funding intervals must be positive", interval_hours=interval_hours, base=base_interval_hours
        )
    if floor_r is None and cap_r is not None:
        floor_r = -cap_r
    if cap_r is not None and floor_r is not None and floor_r > cap_r:
        raise InvalidInputError("funding floor above cap", floor_r=floor_r, cap_r=cap_r)
    rate = premium_avg_r + _clamp(interest_r - premium_avg_r, -clamp_r, clamp_r)
    rate = div_round(rate * interval_hours, base_interval_hours, rounding)
    if cap_r is not None:
        rate = min(rate, cap_r)
    if floor_r is not None:
        rate = max(rate, floor_r)
    return rate


def cap_from_mmr_r(mmr_r: int, *, factor_r: int = 750_000_000, rounding: Rounding) -> int:
    """Binance funding cap ``factor × MMR`` (default 0.75 × MMR), rate quanta, rounded once.

    The floor is the negation. Example: ADAUSDT MMR 0.65 % → ±0.4875 % (``4_875_000``).
    """
    return div_round(factor_r * mmr_r, RATE_SCALE, rounding)


def cap_bitmex_r(im_r: int, mm_r: int, *, factor_r: int = 750_000_000, rounding: Rounding) -> int:
    """BitMEX funding cap ``factor × (IM − MM)`` (default 75 %), rate quanta, rounded once.

    Example: 75 % × (1 % − 0.5 %) = 0.375 % (``3_750_000``).
    """
    return div_round(factor_r * (im_r - mm_r), RATE_SCALE, rounding)


def cap_dydx_r(imf_r: int, mf_r: int, *, clamp_factor_r: int = 6_000_000_000, rounding: Rounding) -> int:
    """dYdX v4 funding clamp ``clamp_factor × (IMF − IMF × MF)``, rate quanta, rounded once.

    ``mf_r`` is the maintenance fraction (MMF = IMF × MF). Exact product, one rounding.
    Examples: 600 % × (15 % − 15 % × 80 %) = 18 %; 600 % × (45 % − 45 %) = 0;
    300 % × (100 % − 0) = 300 %.
    """
    exact = Fraction(clamp_factor_r * (imf_r * RATE_SCALE - imf_r * mf_r), RATE_SCALE * RATE_SCALE)
    return _round(exact, rounding)


# --------------------------------------------------------------------------------------------
# Payments (timestamp settlement) and zero-sum book settlement
# --------------------------------------------------------------------------------------------


def funding_owed_q(value_q: Number, rate_r: int) -> int:
    """What a position owes for one funding: ``ceil(value × rate / RATE_SCALE)``, settle quanta.

    ``value_q`` is the signed position value in settle quanta (long > 0; exact, may be a
    ``Fraction``; for inverse contracts pass the value in the settle coin). Positive result =
    debit. Rounded against the account: ``CEIL`` of the amount owed (debits up, credits down).
    """
    _require_number("value_q", value_q)
    _require_int("rate_r", rate_r)
    return _round(Fraction(value_q) * rate_r / RATE_SCALE, Rounding.CEIL)


def funding_payment_exact(
    size_sz: int,
    price_px: int,
    rate_r: int,
    *,
    price_decimals: int,
    size_decimals: int,
    quote_decimals: int,
) -> Fraction:
    """Exact amount owed ``size × price × F`` in settle quanta (linear contract; long pays if F > 0).

    ``size_sz × price_px × rate_r × 10^quote_decimals / (RATE_SCALE × 10^(price_decimals +
    size_decimals))``. Hyperliquid uses the oracle price, Binance the mark price: the caller
    chooses ``price_px``.
    """
    for name, value in (("size_sz", size_sz), ("price_px", price_px), ("rate_r", rate_r)):
        _require_int(name, value)
    return Fraction(
        size_sz * price_px * rate_r * pow10(quote_decimals),
        RATE_SCALE * pow10(price_decimals + size_decimals),
    )


def funding_payment_q(
    size_sz: int,
    price_px: int,
    rate_r: int,
    *,
    price_decimals: int,
    size_decimals: int,
    quote_decimals: int,
) -> int:
    """:func:`funding_payment_exact` rounded against the account (``CEIL`` of the amount owed)."""
    exact = funding_payment_exact(
        size_sz,
        price_px,
        rate_r,
        price_decimals=price_decimals,
        size_decimals=size_decimals,
        quote_decimals=quote_decimals,
    )
    return _round(exact, Rounding.CEIL)


@dataclass(frozen=True, slots=True)
class FundingSettlement:
    """Result of settling one funding over a whole, balanced book.

    Attributes
    ----------
    payments:
        ``(account, owed_q)`` sorted by account; positive = debit, negative = credit; accounts
        with no position are left out (flat accounts never pay).
    total_debits_q:
        ``Σ owed`` over payers.
    total_credits_q:
        ``Σ −owed`` over receivers.
    residue_q:
        ``total_debits_q − total_credits_q``: what the rounding left, ``0 ≤ residue <
        len(payments)``; the ledger credits it to the rounding account so the transfer balances.
    """

    payments: tuple[tuple[str, int], ...]
    total_debits_q: int
    total_credits_q: int
    residue_q: int

    def payment_of(self, account: str) -> int:
        """What ``account`` owes (0 when it had no position)."""
        for name, owed in self.payments:
            if name == account:
                return owed
        return 0


def settle_funding_values(values_q: Mapping[str, Number], rate_r: int) -> FundingSettlement:
    """Settle one funding over a zero-sum book given each account's signed position value.

    ``owed_i = ceil(value_i × rate / RATE_SCALE)`` (:func:`funding_owed_q`): payers are rounded
    up, receivers down. Because ``Σ value_i = 0``, ``Σ exact_i = 0`` and the residue
    ``Σ owed_i = Σ (ceil(x_i) − x_i)`` lies in ``[0, n)`` for ``n`` accounts; it is returned for
    the rounding account. The result does not depend on the mapping's order.

    Raises
    ------
    InvalidInputError
        When the values do not sum to zero (the book is not balanced).
    """
    total = sum((Fraction(v) for v in values_q.values()), Fraction(0))
    if total != 0:
        raise InvalidInputError(
            "funding settlement needs a balanced book (values sum to 0)", imbalance=str(total)
        )
    payments: list[tuple[str, int]] = []
    debits = credits = 0
    for account in sorted(values_q):
        value = values_q[account]
        if value == 0:
            continue
        owed = funding_owed_q(value, rate_r)
        payments.append((account, owed))
        if owed > 0:
            debits += owed
        else:
            credits -= owed
    return FundingSettlement(tuple(payments), debits, credits, debits - credits)


def settle_funding_book(
    positions_sz: Mapping[str, int],
    price_px: int,
    rate_r: int,
    *,
    price_decimals: int,
    size_decimals: int,
    quote_decimals: int,
) -> FundingSettlement:
    """Settle one funding over a balanced book of linear positions (``Σ size = 0``).

    Each account owes ``ceil(size × price × F)`` in settle quanta (see
    :func:`funding_payment_q`); see :func:`settle_funding_values` for the residue.

    Raises
    ------
    InvalidInputError
        When the sizes do not sum to zero.
    """
    for account, size in positions_sz.items():
        if not _is_int(size):
            raise InvalidNumberError("position sizes must be ints", account=account, size=size)
    scale = Fraction(price_px * pow10(quote_decimals), pow10(price_decimals + size_decimals))
    values = {account: size * scale for account, size in positions_sz.items()}
    return settle_funding_values(values, rate_r)


# --------------------------------------------------------------------------------------------
# Cumulative funding index (lazy settlement)
# --------------------------------------------------------------------------------------------


def funding_index_delta(rate_r: int, price_px: int) -> int:
    """Increment of the exact cumulative funding index for one tick: ``rate_r × price_px``.

    Units: rate quanta × price quanta (per size unit); exact (no rounding), so the index is
    the exact ``Σ_k F_k × p_k`` over ticks. ``rate_r`` is the rate *for that tick* (prorate
    first with :func:`prorate_rate_r` if needed).
    """
    _require_int("rate_r", rate_r)
    _require_int("price_px", price_px)
    return rate_r * price_px


def funding_owed_from_index_q(
    size_sz: int,
    index_now: int,
    index_last: int,
    *,
    price_decimals: int,
    size_decimals: int,
    quote_decimals: int,
) -> int:
    """What a position owes since its last settlement: ``size × (index_now − index_last)``.

    Converted to settle quanta (``× 10^quote_decimals / (RATE_SCALE × 10^(price_decimals +
    size_decimals))``) and rounded **once**, against the account (``CEIL`` of the amount owed).
    Positive = debit. Equals :func:`funding_payment_q` for a single tick.
    """
    for name, value in (("size_sz", size_sz), ("index_now", index_now), ("index_last", index_last)):
        _require_int(name, value)
    exact = Fraction(
        size_sz * (index_now - index_last) * pow10(quote_decimals),
        RATE_SCALE * pow10(price_decimals + size_decimals),
    )
    return _round(exact, Rounding.CEIL)


def funding_settlement_from_index_q(
    size_sz: int,
    index_now: int,
    index_last: int,
    *,
    price_decimals: int,
    size_decimals: int,
    quote_decimals: int,
) -> int:
    """Balance change ``−(index_now − index_last) × size``: the negation of :func:`funding_owed_from_index_q`.

    Rounded once against the account (``FLOOR`` of the balance change).
    """
    return -funding_owed_from_index_q(
        size_sz,
        index_now,
        index_last,
        price_decimals=price_decimals,
        size_decimals=size_decimals,
        quote_decimals=quote_decimals,
    )


INVERSE_INDEX_SCALE: Final = 10**24
"""Fixed-point scale of an inverse market's cumulative funding index (see :func:`inverse_funding_index_delta`)."""


def inverse_funding_payment_exact(
    size_sz: int,
    price_px: int,
    rate_r: int,
    *,
    multiplier: Fraction,
    price_decimals: int,
    size_decimals: int,
    settle_decimals: int,
) -> Fraction:
    """Exact amount an **inverse** position owes for one funding, settle-coin quanta (long pays if F > 0).

    ``contracts × contract_size / price × F`` (Binance COIN-M: the position's coin notional at
    the mark times the rate)::

        size_sz × multiplier × rate_r × 10^(price_decimals + settle_decimals)
            / (RATE_SCALE × 10^size_decimals × price_px)

    Round it against the account with :func:`funding_owed_q` semantics (``CEIL`` of the amount owed).

    Raises
    ------
    InvalidNumberError
        When ``price_px <= 0`` (an inverse contract has no value at a non-positive price).
    """
    for name, value in (("size_sz", size_sz), ("price_px", price_px), ("rate_r", rate_r)):
        _require_int(name, value)
    if price_px <= 0:
        raise InvalidNumberError("inverse funding needs a positive price", price_px=price_px)
    return Fraction(
        size_sz * multiplier.numerator * rate_r * pow10(price_decimals + settle_decimals),
        multiplier.denominator * RATE_SCALE * pow10(size_decimals) * price_px,
    )


def inverse_funding_index_delta(rate_r: int, price_px: int) -> int:
    """Increment of an **inverse** market's cumulative funding index for one tick.

    An inverse position owes ``size × multiplier × F / p`` per tick, so the per-contract index
    is ``Σ_k F_k / p_k``: not an integer. It is kept in fixed point::

        delta = round_half_even(rate_r × INVERSE_INDEX_SCALE / price_px)

    (rate quanta × ``INVERSE_INDEX_SCALE`` per price quantum). The rounding is the index's only
    inexactness: at most half a unit of ``1e-24`` rate-per-price-quantum per tick, i.e. far below
    a settle quantum for any real position (1e9 contracts of 100 USD at 0.1 USD quanta: < 1e-19
    quanta per tick), so index settlement owes the same as timestamp settlement except when the
    exact amount lies within that distance of a quantum boundary (then one quantum apart). The
    index is shared by every position, so settlement stays zero-sum whatever the rounding.

    Raises
    ------
    InvalidNumberError
        When ``price_px <= 0``.
    """
    _require_int("rate_r", rate_r)
    _require_int("price_px", price_px)
    if price_px <= 0:
        raise InvalidNumberError("inverse funding needs a positive price", price_px=price_px)
    return div_round(rate_r * INVERSE_INDEX_SCALE, price_px, Rounding.HALF_EVEN)


def inverse_funding_owed_from_index_q(
    size_sz: int,
    index_now: int,
    index_last: int,
    *,
    multiplier: Fraction,
    price_decimals: int,
    size_decimals: int,
    settle_decimals: int,
) -> int:
    """What an **inverse** position owes since its last settlement, settle-coin quanta, rounded once against it.

    ::

        owed = ceil( size × multiplier × (index_now − index_last) × 10^(price_decimals + settle_decimals)
                     / (RATE_SCALE × INVERSE_INDEX_SCALE × 10^size_decimals) )

    (indices from :func:`inverse_funding_index_delta`; positive = debit).
    """
    for name, value in (("size_sz", size_sz), ("index_now", index_now), ("index_last", index_last)):
        _require_int(name, value)
    num = size_sz * multiplier.numerator * (index_now - index_last) * pow10(price_decimals + settle_decimals)
    den = multiplier.denominator * RATE_SCALE * INVERSE_INDEX_SCALE * pow10(size_decimals)
    return div_round(num, den, Rounding.CEIL)


def dydx_funding_index_delta(
    delta_t_s: int,
    rate_ppm: int,
    price_value: int,
    price_exponent: int,
    atomic_resolution: int,
    *,
    quote_atomic_resolution: int = -6,
) -> int:
    """dYdX v4 funding-index delta per tick, ppm-scaled quote quantums per base quantum.

    ::

        Δindex = trunc0( trunc0(Δt × rate_ppm × price × 10^(price_exp + atomic_res − quote_res)) / 28,800 )

    with ``quote_res = −6`` (USDC), both divisions truncating toward zero (mechanics.md §6.4,
    §13 item 20). ``rate_ppm`` is the 8-hour rate in ppm, ``Δt`` seconds. Example: Δt 28,800,
    rate 1,001,999, price 1,000 (exp 0), atomic res −12 → 1,001.
    """
    for name, value in (
        ("delta_t_s", delta_t_s),
        ("rate_ppm", rate_ppm),
        ("price_value", price_value),
        ("price_exponent", price_exponent),
        ("atomic_resolution", atomic_resolution),
    ):
        _require_int(name, value)
    exponent = price_exponent + atomic_resolution - quote_atomic_resolution
    product = delta_t_s * rate_ppm * price_value
    inner = (
        product * pow10(exponent) if exponent >= 0 else div_round(product, pow10(-exponent), Rounding.TRUNC)
    )
    return div_round(inner, DYDX_FUNDING_PERIOD_S, Rounding.TRUNC)


def dydx_funding_settlement_q(quantums: int, index_now: int, index_last: int) -> int:
    """dYdX position settlement: balance change ``−(index_now − index_last) × quantums / 1e6``.

    ``quantums`` signed base quantums; indices in ppm-scaled quote quantums per base quantum.
    Divided by 1e6 once, rounding against the account (``FLOOR`` of the balance change, as
    dYdX's Euclidean division does).
    """
    for name, value in (("quantums", quantums), ("index_now", index_now), ("index_last", index_last)):
        _require_int(name, value)
    return div_round(-(index_now - index_last) * quantums, _DYDX_PPM, Rounding.FLOOR)


# --------------------------------------------------------------------------------------------
# Drift v2
# --------------------------------------------------------------------------------------------


def drift_funding_rate(
    mark_twap_px: int,
    oracle_twap_px: int,
    *,
    funding_period_s: int = _ONE_HOUR_S,
    max_spread_divisor: int = 33,
    offset_denominator: int = 5_000,
    dead_band_denominator: int | None = None,
) -> int:
    """Drift v2 funding rate per funding period (mechanics.md §6.5, ``update_funding_rate``).

    In Drift's integer steps, every division truncating toward zero (Rust ``/`` on signed ints)::

        period_adjustment = 86,400 / max(3,600, funding_period_s)
        spread            = mark_twap − oracle_twap
        offset            = |oracle_twap| / offset_denominator          (5,000 → ≈7.3 %/yr)
        with_offset       = offset           if dead band and |spread| ≤ |oracle_twap| / dead_band_den
                            spread + offset  otherwise
        max_spread        = oracle_twap / max_spread_divisor   (33: tiers A/B ≈3 %, 20: C, 10: others)
        rate              = clamp(with_offset, ±max_spread) × 1,000 / period_adjustment

    Units: the result is **an absolute amount per base unit**, in price quanta × 1,000 (Drift's
    ``FUNDING_RATE_BUFFER``; with Drift's 1e6 price precision this is its 1e9 funding-rate
    precision). Positive = longs pay. The dead band (``None`` = off; ``dead_band_den``
    = ``dead_band_denominator``) is in newer Drift code only.
    Settle with :func:`drift_funding_owed_q` on the cumulative sum of these rates.

    Raises
    ------
    InvalidInputError
        On a non-positive ``funding_period_s``, divisor or denominator.
    """
    for name, value in (
        ("funding_period_s", funding_period_s),
        ("max_spread_divisor", max_spread_divisor),
        ("offset_denominator", offset_denominator),
    ):
        if not _is_int(value) or value <= 0:
            raise InvalidInputError(f"{name} must be a positive int", field=name, value=value)
    _require_int("mark_twap_px", mark_twap_px)
    _require_int("oracle_twap_px", oracle_twap_px)
    if dead_band_denominator is not None and dead_band_denominator <= 0:
        raise InvalidInputError("dead_band_denominator must be positive", value=dead_band_denominator)
    trunc = Rounding.TRUNC
    period_adjustment = div_round(_ONE_DAY_S, max(_ONE_HOUR_S, funding_period_s), trunc)
    spread = mark_twap_px - oracle_twap_px
    offset = div_round(abs(oracle_twap_px), offset_denominator, trunc)
    if dead_band_denominator is not None and abs(spread) <= div_round(
        abs(oracle_twap_px), dead_band_denominator, trunc
    ):
        with_offset = offset
    else:
        with_offset = spread + offset
    max_spread = div_round(oracle_twap_px, max_spread_divisor, trunc)
    clamped = _clamp(with_offset, -max_spread, max_spread)
    return div_round(clamped * _DRIFT_FUNDING_RATE_BUFFER, period_adjustment, trunc)


def drift_funding_owed_q(
    size_sz: int,
    cumulative_now: int,
    cumulative_last: int,
    *,
    price_decimals: int,
    size_decimals: int,
    quote_decimals: int,
) -> int:
    """What a position owes under Drift-style rates: ``size × (cum_now − cum_last)``.

    ``cum`` is the running sum of :func:`drift_funding_rate` results (price quanta × 1,000 per
    base unit). Converted to settle quanta (``× 10^quote_decimals / (1,000 ×
    10^(price_decimals + size_decimals))``) and rounded once against the account (``CEIL`` of
    the amount owed; Drift itself truncates the magnitude, which favours the account).
    """
    for name, value in (
        ("size_sz", size_sz),
        ("cumulative_now", cumulative_now),
        ("cumulative_last", cumulative_last),
    ):
        _require_int(name, value)
    exact = Fraction(
        size_sz * (cumulative_now - cumulative_last) * pow10(quote_decimals),
        _DRIFT_FUNDING_RATE_BUFFER * pow10(price_decimals + size_decimals),
    )
    return _round(exact, Rounding.CEIL)
