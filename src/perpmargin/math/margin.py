"""Margin requirements: tiered brackets, initial and maintenance margin, OI-scaled IMF.

Units
-----
A *notional* is passed as an exact rational ``num / den`` in **settle-asset quanta**
(``den > 0``), so that a requirement is rounded once, at the end. Bracket bounds are in
settle quanta, rates in rate quanta (``1e-9``, :data:`~perpmargin.numbers.RATE_SCALE`).

Brackets (Binance "maintenance amount", Bybit "MM deduction", Hyperliquid "deduction")::

    MM     = notional × MMR_n − cum_n            (n: bracket whose [floor, cap) holds the notional)
    cum_0  = 0
    cum_n  = floor_n × (MMR_n − MMR_{n−1}) + cum_{n−1}

``cum`` is never typed in: :func:`build_brackets` derives it by the recursion and keeps it
exact in *quanta × rate quanta* (``cum_qr``), so ``MM`` is continuous in the notional and
equals the marginal (per-tier) sum that Bybit describes.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

from perpmargin.errors import ConfigError
from perpmargin.numbers import RATE_SCALE, Rounding, div_round

_CEIL = Rounding.CEIL  # (a module global: cheaper than the enum attribute on the hot path)

__all__ = [
    "Bracket",
    "BracketTable",
    "build_brackets",
    "dydx_oi_scaled_imf_ppm",
    "initial_margin_q",
    "maintenance_margin_q",
    "mul_rate_q",
]


@dataclass(frozen=True, slots=True)
class Bracket:
    """One notional bracket (risk-limit tier).

    Attributes
    ----------
    floor_q:
        Lower bound of the bracket's notional, settle quanta (inclusive).
    cap_q:
        Upper bound, settle quanta (exclusive); ``None`` for the last bracket (no cap).
    mmr_r:
        Maintenance margin rate, rate quanta (1e-9).
    max_leverage:
        Highest leverage allowed for a position whose notional falls in this bracket.
    cum_qr:
        Maintenance amount in settle quanta × rate quanta (exact), from the recursion.
    """

    floor_q: int
    cap_q: int | None
    mmr_r: int
    max_leverage: Fraction
    cum_qr: int

    @property
    def imr_r(self) -> int:
        """Initial margin rate at max leverage, rate quanta, rounded up (``1 / max_leverage``)."""
        return div_round(RATE_SCALE * self.max_leverage.denominator, self.max_leverage.numerator, Rounding.CEIL)

    def cum(self) -> Fraction:
        """The maintenance amount in settle quanta (exact)."""
        return Fraction(self.cum_qr, RATE_SCALE)


@dataclass(frozen=True, slots=True)
class BracketTable:
    """An ordered, validated list of brackets covering ``[0, +inf)``."""

    brackets: tuple[Bracket, ...]
    caps_q: tuple[int, ...] = ()
    """The finite caps in order (derived; the last bracket has none)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "caps_q", tuple(b.cap_q for b in self.brackets if b.cap_q is not None))

    def index_for(self, num: int, den: int = 1) -> int:
        """Index of the bracket holding the notional ``num/den`` (settle quanta, ``den > 0``).

        A notional equal to a bracket's cap belongs to the next bracket (floors inclusive).
        Caps are integers, so ``N < cap`` exactly when ``floor(N) < cap``: one floor
        division and a binary search.
        """
        return bisect_right(self.caps_q, num // den if den != 1 else num)

    def for_notional(self, num: int, den: int = 1) -> Bracket:
        """The bracket holding the notional ``num/den`` (settle quanta)."""
        return self.brackets[self.index_for(num, den)]

    @property
    def max_leverage(self) -> Fraction:
        """The highest leverage any bracket allows (the first bracket's)."""
        return self.brackets[0].max_leverage

    @property
    def min_mmr_r(self) -> int:
        """The first bracket's MMR (rate quanta)."""
        return self.brackets[0].mmr_r


def build_brackets(rows: Sequence[tuple[int, int, Fraction]]) -> BracketTable:
    """Build and validate a bracket table from ``(floor_q, mmr_r, max_leverage)`` rows.

    Each bracket's cap is the next bracket's floor; the last has no cap. ``cum`` comes
    from the recursion ``cum_n = floor_n × (MMR_n − MMR_{n−1}) + cum_{n−1}``.

    Raises
    ------
    ConfigError
        If the first floor is not 0, floors are not strictly increasing, MMRs decrease,
        max leverage increases with size, an MMR is not in ``(0, 1)``, leverage is below 1,
        or the MMR is not below the bracket's initial rate ``1 / max_leverage``.
    """
    if not rows:
        raise ConfigError("a bracket table needs at least one bracket")
    if rows[0][0] != 0:
        raise ConfigError("the first bracket must start at notional 0", floor=rows[0][0])
    out: list[Bracket] = []
    prev_mmr = 0
    cum_qr = 0
    for i, (floor_q, mmr_r, max_lev) in enumerate(rows):
        if not 0 < mmr_r < RATE_SCALE:
            raise ConfigError("MMR must lie strictly between 0 and 1", bracket=i, mmr_r=mmr_r)
        if max_lev < 1:
            raise ConfigError("max leverage must be at least 1", bracket=i, max_leverage=str(max_lev))
        # MMR < IMR at max leverage, i.e. mmr × max_lev < 1.
        if mmr_r * max_lev >= RATE_SCALE:
            raise ConfigError(
                "MMR must be below the initial margin rate 1/max_leverage",
                bracket=i,
                mmr_r=mmr_r,
                max_leverage=str(max_lev),
            )
        if i > 0:
            prev_floor, _, prev_lev = rows[i - 1]
            if floor_q <= prev_floor:
                raise ConfigError("bracket floors must increase strictly", bracket=i, floor=floor_q)
            if mmr_r < prev_mmr:
                raise ConfigError("MMR must not decrease as notional grows", bracket=i, mmr_r=mmr_r)
            if max_lev > prev_lev:
                raise ConfigError(
                    "max leverage must not increase as notional grows", bracket=i, max_leverage=str(max_lev)
                )
        cum_qr += floor_q * (mmr_r - prev_mmr)
        cap = rows[i + 1][0] if i + 1 < len(rows) else None
        out.append(Bracket(floor_q=floor_q, cap_q=cap, mmr_r=mmr_r, max_leverage=Fraction(max_lev), cum_qr=cum_qr))
        prev_mmr = mmr_r
    return BracketTable(tuple(out))


def mul_rate_q(num: int, den: int, rate_r: int, rounding: Rounding) -> int:
    """``(num/den) × rate`` in settle quanta, rounded once as asked."""
    return div_round(num * rate_r, den * RATE_SCALE, rounding)


def maintenance_margin_q(table: BracketTable, num: int, den: int = 1, *, rounding: Rounding = Rounding.CEIL) -> int:
    """Maintenance margin of a notional ``num/den`` (settle quanta).

    Formula: ``MM = N × MMR_n − cum_n`` with ``n`` the bracket of ``N``; one rounding at the
    end, up by default (a requirement). Never negative.
    """
    if den == 1:  # an integer notional: no division for the bracket search
        b = table.brackets[bisect_right(table.caps_q, num)]
        top = num * b.mmr_r - b.cum_qr
    else:
        b = table.brackets[bisect_right(table.caps_q, num // den)]
        top = num * b.mmr_r - b.cum_qr * den
    # CEIL, the common case, is inlined: ceil(a / b) == -((-a) // b)
    q = -(-top // (den * RATE_SCALE)) if rounding is _CEIL else div_round(top, den * RATE_SCALE, rounding)
    return q if q > 0 else 0  # never negative


def initial_margin_q(num: int, den: int, leverage: Fraction, *, rounding: Rounding = Rounding.CEIL) -> int:
    """Initial margin ``N / leverage`` (settle quanta), rounded up by default."""
    return div_round(num * leverage.denominator, den * leverage.numerator, rounding)


def dydx_oi_scaled_imf_ppm(imf_ppm: int, lower_cap: int, upper_cap: int, oi_notional: int) -> int:
    """dYdX v4 open-interest-scaled initial margin fraction, ppm (rounded down).

    ``IMF_eff = IMF`` if ``upper == 0`` or ``OI ≤ lower``; ``1`` (1e6 ppm) if ``OI ≥ upper``;
    else ``IMF + (1 − IMF) × (OI − lower) / (upper − lower)``, floored (as dYdX's
    ``liquidity_tier.go``). Caps and OI notional share one unit (quote quantums).
    """
    if upper_cap == 0 or oi_notional <= lower_cap:
        return imf_ppm
    if oi_notional >= upper_cap:
        return 1_000_000
    return imf_ppm + ((1_000_000 - imf_ppm) * (oi_notional - lower_cap)) // (upper_cap - lower_cap)
