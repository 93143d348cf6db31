"""Exact numbers: integer quanta inside, ``Decimal`` at the public boundary.

Conventions used everywhere in perpmargin
-----------------------------------------
* **Amounts** of an asset are ``int`` counts of that asset's quantum, ``10**-decimals``
  (e.g. USDT with 8 decimals: ``1 USDT == 100_000_000``). Names end in ``_q``.
* **Prices** of a market are ``int`` counts of ``10**-price_decimals`` quote per base
  (inverse: USD per coin). Names end in ``_px``.
* **Sizes** are ``int`` counts of the market's size quantum ``10**-size_decimals`` (base units
  for linear markets, contracts for inverse ones). Names end in ``_sz``.
* **Rates** (MMR, IMR, haircuts, fees, funding) are ``int`` counts of ``10**-9``
  (:data:`RATE_SCALE`); names end in ``_r``. ``0.4 %`` is ``4_000_000``.

Rounding is always an explicit argument (:class:`Rounding`): requirements, fees and debits
round toward the system (up), credits and payouts round down; a residue that a rounding
leaves is booked by the ledger to a named system account.

Public inputs go through :func:`parse_decimal`, which refuses ``float`` (binary floats cannot
hold most decimal prices), ``bool``, NaN, infinities and malformed strings with an
:class:`~perpmargin.errors.InvalidNumberError`.

Never write ``int(a / b)`` on ints: it goes through a float. Use :func:`div_round`.
"""

from __future__ import annotations

import decimal
import enum
from decimal import Decimal
from fractions import Fraction
from typing import Final

from perpmargin.errors import InvalidNumberError

__all__ = [
    "MAX_ABS_DECIMAL",
    "RATE_DECIMALS",
    "RATE_SCALE",
    "NumberLike",
    "Rounding",
    "div_round",
    "fraction_to_decimal",
    "from_quanta",
    "parse_decimal",
    "parse_rate",
    "pow10",
    "to_quanta",
]

RATE_DECIMALS: Final = 9
"""Decimal places of a rate quantum: rates are ints in units of ``1e-9``."""
RATE_SCALE: Final = 10**RATE_DECIMALS
"""``1.0`` expressed in rate quanta (expo -9)."""

MAX_ABS_DECIMAL: Final = Decimal(10) ** 30
"""Largest magnitude accepted at the boundary; anything larger is a unit or decimal-shift error."""

NumberLike = Decimal | int | str
"""What the public API accepts for a number (never ``float``)."""

# Decimal context for boundary conversions: enough digits for any value we accept
# (30 integer digits + up to 36 fractional digits) so that no silent rounding happens.
_CTX: Final = decimal.Context(prec=80, rounding=decimal.ROUND_HALF_EVEN, traps=[decimal.InvalidOperation])

_POW10: Final[tuple[int, ...]] = tuple(10**i for i in range(64))


def pow10(n: int) -> int:
    """Return ``10**n`` for ``n >= 0`` from a small cache (hot in conversions)."""
    if 0 <= n < 64:
        return _POW10[n]
    if n < 0:
        raise ValueError(f"pow10 takes n >= 0, was {n}")
    result: int = 10**n
    return result


class Rounding(enum.Enum):
    """How an exact quotient becomes an integer.

    ``CEIL`` rounds toward +inf, ``FLOOR`` toward -inf, ``TRUNC`` toward zero, ``AWAY``
    away from zero; ``HALF_UP`` (ties away from zero) and ``HALF_EVEN`` (ties to even) are
    for display and for matching published figures only, never for money.
    """

    CEIL = "ceil"
    FLOOR = "floor"
    TRUNC = "trunc"
    AWAY = "away"
    HALF_UP = "half_up"
    HALF_EVEN = "half_even"

    @classmethod
    def parse(cls, value: Rounding | str) -> Rounding:
        """Accept a :class:`Rounding` or its name/value (``"ceil"``, ``"HALF_UP"``...)."""
        if isinstance(value, Rounding):
            return value
        if isinstance(value, str):
            key = value.strip().lower()
            for member in cls:
                if member.value == key:
                    return member
        raise InvalidNumberError("unknown rounding mode", rounding=value, allowed=[m.value for m in cls])

    def to_decimal(self) -> str:
        """The ``decimal`` module's constant for this mode."""
        return _DECIMAL_ROUNDING[self]


_DECIMAL_ROUNDING: Final = {
    Rounding.CEIL: decimal.ROUND_CEILING,
    Rounding.FLOOR: decimal.ROUND_FLOOR,
    Rounding.TRUNC: decimal.ROUND_DOWN,
    Rounding.AWAY: decimal.ROUND_UP,
    Rounding.HALF_UP: decimal.ROUND_HALF_UP,
    Rounding.HALF_EVEN: decimal.ROUND_HALF_EVEN,
}


def div_round(num: int, den: int, rounding: Rounding) -> int:
    """Return ``num / den`` as an int, rounded as asked.

    Exact integer arithmetic (``//`` floors toward -inf); ``den`` must be non-zero.
    """
    if den == 0:
        raise ZeroDivisionError("div_round by zero")
    if den < 0:
        num, den = -num, -den
    q, r = divmod(num, den)  # floor division: q <= num/den < q + 1
    if r == 0 or rounding is Rounding.FLOOR:
        return q
    if rounding is Rounding.CEIL:
        return q + 1
    if rounding is Rounding.TRUNC:
        return q + 1 if num < 0 else q
    if rounding is Rounding.AWAY:
        return q if num < 0 else q + 1
    twice = 2 * r
    if twice > den or (twice == den and (rounding is Rounding.HALF_UP and num >= 0)):
        return q + 1
    if twice == den and rounding is Rounding.HALF_EVEN:
        return q + (q & 1)
    return q


def parse_decimal(
    value: object,
    *,
    field: str,
    positive: bool = False,
    non_negative: bool = False,
) -> Decimal:
    """Validate a public numeric input and return it as a finite ``Decimal``.

    Accepts ``Decimal``, ``int`` and numeric ``str``; refuses ``float`` and ``bool`` (a
    float cannot hold most decimal prices exactly), NaN, infinities, magnitudes of
    :data:`MAX_ABS_DECIMAL` or more, and, when asked, zero or negative values.

    Raises
    ------
    InvalidNumberError
        With ``field`` and the offending value in its details.
    """
    if isinstance(value, bool | float):
        raise InvalidNumberError(
            f"{field} must be a Decimal, int or numeric string, not {type(value).__name__}",
            field=field,
            value=value,
        )
    if isinstance(value, Decimal):
        d = value
    elif isinstance(value, int):
        d = Decimal(value)
    elif isinstance(value, str):
        text = value.strip().replace("_", "")
        try:
            d = _CTX.create_decimal(text)
        except (decimal.InvalidOperation, ValueError):
            raise InvalidNumberError(f"{field} is not a number", field=field, value=value) from None
    else:
        raise InvalidNumberError(
            f"{field} must be a Decimal, int or numeric string, not {type(value).__name__}",
            field=field,
            value=value,
        )
    if not d.is_finite():
        raise InvalidNumberError(f"{field} must be finite", field=field, value=str(value))
    if abs(d) >= MAX_ABS_DECIMAL:
        raise InvalidNumberError(f"{field} is out of range", field=field, value=str(value))
    if positive and d <= 0:
        raise InvalidNumberError(f"{field} must be positive", field=field, value=str(value))
    if non_negative and d < 0:
        raise InvalidNumberError(f"{field} must not be negative", field=field, value=str(value))
    return d


def to_quanta(
    value: object,
    decimals: int,
    *,
    field: str,
    rounding: Rounding | None = None,
    positive: bool = False,
    non_negative: bool = False,
) -> int:
    """Convert a public number to an integer count of ``10**-decimals``.

    With ``rounding=None`` the value must lie exactly on a quantum, else
    :class:`InvalidNumberError` (e.g. a price with more decimals than the market has).
    """
    d = parse_decimal(value, field=field, positive=positive, non_negative=non_negative)
    scaled = d.scaleb(decimals, context=_CTX)
    integral = scaled.to_integral_value(rounding=decimal.ROUND_FLOOR, context=_CTX)
    if integral == scaled:
        return int(integral)
    if rounding is None:
        raise InvalidNumberError(
            f"{field} has more than {decimals} decimal places", field=field, value=str(value)
        )
    return int(scaled.to_integral_value(rounding=rounding.to_decimal(), context=_CTX))


def parse_rate(value: object, *, field: str, rounding: Rounding | None = None) -> int:
    """Convert a public rate (``"0.004"`` for 0.4 %) to rate quanta (``10**-9``)."""
    return to_quanta(value, RATE_DECIMALS, field=field, rounding=rounding, non_negative=True)


def from_quanta(q: int, decimals: int) -> Decimal:
    """Return ``q * 10**-decimals`` as an exact ``Decimal``."""
    return Decimal(q).scaleb(-decimals, context=_CTX)


def fraction_to_decimal(value: Fraction, decimals: int, rounding: Rounding) -> Decimal:
    """Round an exact rational to ``decimals`` places with the given rounding."""
    q = div_round(value.numerator * pow10(decimals), value.denominator, rounding)
    return from_quanta(q, decimals)
