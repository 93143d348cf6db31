"""Mutable price state: oracle feeds, smoothers, market status, bands and funding accumulators.

Plain data owned by :class:`~perpmargin.state.EngineState` (field ``prices``); only
:mod:`perpmargin.prices` mutates it, always through a copy-on-write record so that a failing
command leaves it exactly as it was. :meth:`PriceBook.to_canonical` is part of the state's
canonical encoding (hashed and snapshotted); an empty book encodes to nothing, so a state that
never used the price subsystem hashes as before.

Units: prices in the market's (or asset's) price quanta ``_px``, rates in rate quanta ``_r``,
times in ms. The cumulative funding index ``cum_index`` is in rate quanta × price quanta per
size quantum (exact: ``Σ_k F_k × p_k``) on linear markets, and ``Σ_k F_k / p_k`` in fixed
point (× ``INVERSE_INDEX_SCALE``) on inverse ones; see :func:`pending_funding_owed_q`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from perpmargin.config import ContractKind, Market
from perpmargin.math.funding import inverse_funding_owed_from_index_q
from perpmargin.math.smoothing import DecayingEma, DecayKind, TimeWeightedAverage
from perpmargin.numbers import RATE_SCALE, Rounding, div_round, pow10

__all__ = [
    "FeedState",
    "FeedStatus",
    "MarketPriceState",
    "MarketStatus",
    "PriceBook",
    "funding_value_q",
    "pending_funding_owed_q",
]


class FeedStatus(enum.Enum):
    """State of an oracle feed: never updated, publishing, or below quorum (no price)."""

    UNSET = "unset"
    VALID = "valid"
    DEGRADED = "degraded"


class MarketStatus(enum.Enum):
    """Operational status of a market (set by price bands or by an operator)."""

    OPEN = "open"
    HALTED = "halted"
    REDUCE_ONLY = "reduce_only"
    DELISTED = "delisted"


@dataclass(slots=True)
class FeedState:
    """One oracle feed (a market's index or a collateral asset's index).

    Attributes
    ----------
    status:
        :class:`FeedStatus`.
    index_px:
        Last published index (price quanta), ``None`` before the first valid update.
    fresh_until_ms:
        The published index is stale after this time: the ``quorum``-th newest used quote's
        timestamp + ``staleness_ms``.
    updated_ms:
        Time of the last accepted update command.
    rejects:
        Per-source counters of rejected quotes, key ``"source/reason"``.
    """

    status: FeedStatus = FeedStatus.UNSET
    index_px: int | None = None
    fresh_until_ms: int | None = None
    updated_ms: int | None = None
    rejects: dict[str, int] = field(default_factory=dict)

    def copy(self) -> FeedState:
        """An independent copy."""
        return FeedState(self.status, self.index_px, self.fresh_until_ms, self.updated_ms, dict(self.rejects))

    def to_canonical(self) -> dict[str, Any]:
        """JSON-ready encoding (sorted keys via the canonical JSON)."""
        return {
            "status": self.status.value,
            "index": self.index_px,
            "fresh_until": self.fresh_until_ms,
            "updated": self.updated_ms,
            "rejects": dict(sorted(self.rejects.items())),
        }

    @classmethod
    def from_canonical(cls, d: dict[str, Any]) -> FeedState:
        """Inverse of :meth:`to_canonical`."""
        return cls(
            FeedStatus(d["status"]),
            _opt_int(d["index"]),
            _opt_int(d["fresh_until"]),
            _opt_int(d["updated"]),
            {str(k): int(v) for k, v in d["rejects"].items()},
        )


@dataclass(slots=True)
class MarketPriceState:
    """Everything the price subsystem keeps for one market.

    Attributes
    ----------
    feed:
        The market's index feed.
    best_bid_px, best_ask_px, last_px, book_ts_ms:
        Latest book inputs (:class:`~perpmargin.commands.BookUpdate`) and their time.
    external_mid_px, external_ts_ms:
        Latest external perp mid (Hyperliquid's third mark input) and its time.
    basis_twap, basis_sample_ms:
        Binance: time-weighted average of ``mid − index`` samples (price quanta) and the time of
        the last sample (samples are taken at most every ``basis_sample_ms``).
    basis_ema, local_ema:
        Hyperliquid: ``EMA150s(mid − oracle)`` and ``EMA30s(local median)`` (price quanta).
    divergent:
        The mark is more than ``max_divergence`` away from the index (funding and triggers blocked).
    status, status_until_ms, status_actor, status_reason:
        :class:`MarketStatus`, the end of a band cool-off (``None``: until an operator resumes),
        and who set it and why.
    settlement_px:
        Operator-set settlement price; while set, the mark is pinned to it.
    bands_override:
        Operator-set band parameters ``(max_move_r, window_ms, action, cooloff_ms)``, or ``None``.
    bands_disabled:
        ``(actor, reason, ts_ms)`` when an operator disabled the bands, else ``None``.
    band_min, band_max:
        Monotonic deques ``(ts_ms, mark_px)`` of the marks inside the band window (the window's
        minimum and maximum are their first elements).
    funding_start_ms:
        Start of the funding interval being accumulated (a multiple of the interval), ``None``
        until funding starts (first oracle or book update of the market).
    premium_count, premium_sum, premium_last_ms:
        Premium samples of the current interval: count, ``Σ P_i`` (simple) or ``Σ i·P_i``
        (linear), rate quanta, and the time of the last sample (cadence).
    last_rate_r:
        Last funding rate set (interval rate, rate quanta).
    cum_index:
        Cumulative funding index (index settlement): ``Σ_k rate_k × price_k``.
    """

    feed: FeedState = field(default_factory=FeedState)
    best_bid_px: int | None = None
    best_ask_px: int | None = None
    last_px: int | None = None
    book_ts_ms: int | None = None
    external_mid_px: int | None = None
    external_ts_ms: int | None = None
    basis_twap: TimeWeightedAverage | None = None
    basis_sample_ms: int | None = None
    basis_ema: DecayingEma | None = None
    local_ema: DecayingEma | None = None
    divergent: bool = False
    status: MarketStatus = MarketStatus.OPEN
    status_until_ms: int | None = None
    status_actor: str = ""
    status_reason: str = ""
    settlement_px: int | None = None
    bands_override: tuple[int, int, str, int] | None = None
    bands_disabled: tuple[str, str, int] | None = None
    band_min: tuple[tuple[int, int], ...] = ()
    band_max: tuple[tuple[int, int], ...] = ()
    funding_start_ms: int | None = None
    premium_count: int = 0
    premium_sum: int = 0
    premium_last_ms: int | None = None
    last_rate_r: int | None = None
    cum_index: int = 0

    def copy(self) -> MarketPriceState:
        """An independent copy (every field is immutable except the feed)."""
        c = MarketPriceState.__new__(MarketPriceState)
        for name in MarketPriceState.__slots__:
            setattr(c, name, getattr(self, name))
        c.feed = self.feed.copy()
        return c

    def to_canonical(self) -> dict[str, Any]:
        """JSON-ready encoding of every field."""
        return {
            "feed": self.feed.to_canonical(),
            "book": [self.best_bid_px, self.best_ask_px, self.last_px, self.book_ts_ms],
            "external": [self.external_mid_px, self.external_ts_ms],
            "basis_twap": _twap_enc(self.basis_twap),
            "basis_sample": self.basis_sample_ms,
            "basis_ema": _ema_enc(self.basis_ema),
            "local_ema": _ema_enc(self.local_ema),
            "divergent": self.divergent,
            "status": [self.status.value, self.status_until_ms, self.status_actor, self.status_reason],
            "settlement": self.settlement_px,
            "bands_override": None if self.bands_override is None else list(self.bands_override),
            "bands_disabled": None if self.bands_disabled is None else list(self.bands_disabled),
            "band_min": [list(x) for x in self.band_min],
            "band_max": [list(x) for x in self.band_max],
            "funding": [
                self.funding_start_ms,
                self.premium_count,
                self.premium_sum,
                self.premium_last_ms,
                self.last_rate_r,
                str(self.cum_index),
            ],
        }

    @classmethod
    def from_canonical(cls, d: dict[str, Any]) -> MarketPriceState:
        """Inverse of :meth:`to_canonical`."""
        s = cls(feed=FeedState.from_canonical(d["feed"]))
        s.best_bid_px, s.best_ask_px, s.last_px, s.book_ts_ms = (_opt_int(x) for x in d["book"])
        s.external_mid_px, s.external_ts_ms = (_opt_int(x) for x in d["external"])
        s.basis_twap = _twap_dec(d["basis_twap"])
        s.basis_sample_ms = _opt_int(d["basis_sample"])
        s.basis_ema = _ema_dec(d["basis_ema"])
        s.local_ema = _ema_dec(d["local_ema"])
        s.divergent = bool(d["divergent"])
        status, until, actor, reason = d["status"]
        s.status, s.status_until_ms, s.status_actor, s.status_reason = (
            MarketStatus(status),
            _opt_int(until),
            str(actor),
            str(reason),
        )
        s.settlement_px = _opt_int(d["settlement"])
        bo = d["bands_override"]
        s.bands_override = None if bo is None else (int(bo[0]), int(bo[1]), str(bo[2]), int(bo[3]))
        bd = d["bands_disabled"]
        s.bands_disabled = None if bd is None else (str(bd[0]), str(bd[1]), int(bd[2]))
        s.band_min = tuple((int(a), int(b)) for a, b in d["band_min"])
        s.band_max = tuple((int(a), int(b)) for a, b in d["band_max"])
        start, count, total, last, rate, cum = d["funding"]
        s.funding_start_ms = _opt_int(start)
        s.premium_count, s.premium_sum = int(count), int(total)
        s.premium_last_ms, s.last_rate_r = _opt_int(last), _opt_int(rate)
        s.cum_index = int(cum)
        return s


@dataclass(slots=True)
class PriceBook:
    """The price subsystem's part of the engine state: per market and per collateral asset."""

    markets: dict[str, MarketPriceState] = field(default_factory=dict)
    assets: dict[str, FeedState] = field(default_factory=dict)

    def is_empty(self) -> bool:
        """``True`` when the subsystem was never used (then it is left out of the encoding)."""
        return not self.markets and not self.assets

    def copy(self) -> PriceBook:
        """An independent copy."""
        return PriceBook({k: v.copy() for k, v in self.markets.items()}, {k: v.copy() for k, v in self.assets.items()})

    def to_canonical(self) -> dict[str, Any]:
        """JSON-ready, order-independent encoding."""
        return {
            "markets": {k: self.markets[k].to_canonical() for k in sorted(self.markets)},
            "assets": {k: self.assets[k].to_canonical() for k in sorted(self.assets)},
        }

    @classmethod
    def from_canonical(cls, d: dict[str, Any]) -> PriceBook:
        """Inverse of :meth:`to_canonical`."""
        return cls(
            {str(k): MarketPriceState.from_canonical(v) for k, v in d["markets"].items()},
            {str(k): FeedState.from_canonical(v) for k, v in d["assets"].items()},
        )


def pending_funding_owed_q(
    market: Market, settle_decimals: int, size_sz: int, cum_index: int, position_index: int
) -> int:
    """Funding a position owes since it last settled (index settlement), settle quanta.

    ::

        owed = ceil( size × multiplier × (cum_index − position_index) × 10^settle_decimals
                     / (RATE_SCALE × 10^(price_decimals + size_decimals)) )

    (linear contracts; positive = the account owes). Inverse contracts keep ``Σ F_k / p_k`` in
    fixed point (:func:`~perpmargin.math.funding.inverse_funding_index_delta`) and owe
    ``ceil(size × multiplier × Δindex × 10^(price_decimals + settle_decimals) / (RATE_SCALE ×
    INVERSE_INDEX_SCALE × 10^size_decimals))`` in the settle coin. Rounded once, against the
    account (a debit up, a credit down), exactly as the settlement will book it, so equity that
    includes pending funding equals equity after settling it. Zero whenever the two indices are
    equal (every market with timestamp settlement, whose index stays 0).
    """
    delta = cum_index - position_index
    if delta == 0 or size_sz == 0:
        return 0
    if market.kind is ContractKind.INVERSE:
        return inverse_funding_owed_from_index_q(
            size_sz,
            cum_index,
            position_index,
            multiplier=market.contract_multiplier,
            price_decimals=market.price_decimals,
            size_decimals=market.size_decimals,
            settle_decimals=settle_decimals,
        )
    cm = market.contract_multiplier
    num = size_sz * delta * cm.numerator * pow10(settle_decimals)
    den = RATE_SCALE * cm.denominator * pow10(market.price_decimals + market.size_decimals)
    return div_round(num, den, Rounding.CEIL)


def funding_value_q(market: Market, settle_decimals: int, size_sz: int, price_px: int) -> Fraction:
    """Signed funding base of a position (settle quanta, exact): ``sign(size) × notional``.

    Positive for longs on linear *and* inverse contracts, so a positive rate makes longs pay.
    """
    n = market.notional_q(size_sz, price_px, settle_decimals)
    return n if size_sz > 0 else -n


def _opt_int(x: object) -> int | None:
    return None if x is None else int(x)  # type: ignore[call-overload]


def _twap_enc(t: TimeWeightedAverage | None) -> Any:
    if t is None:
        return None
    return {"window": t.window_ms, "samples": [list(s) for s in t.samples]}


def _twap_dec(d: Any) -> TimeWeightedAverage | None:
    if d is None:
        return None
    return TimeWeightedAverage(int(d["window"]), tuple((int(a), int(b)) for a, b in d["samples"]))


def _ema_enc(e: DecayingEma | None) -> Any:
    if e is None:
        return None
    return {
        "timescale": e.timescale_ms,
        "kind": e.kind.value,
        "last": e.last_ts_ms,
        "num": str(e.num_fx),
        "den": str(e.den_fx),
    }


def _ema_dec(d: Any) -> DecayingEma | None:
    if d is None:
        return None
    return DecayingEma(int(d["timescale"]), DecayKind(d["kind"]), _opt_int(d["last"]), int(d["num"]), int(d["den"]))
