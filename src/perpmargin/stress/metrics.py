"""Stress-run metrics: pure functions of the event log, the per-step series and a few final facts.

Every money metric is summed from the engine's integer quanta (``*_q`` fields of the events,
the ``insurance_fund`` series) and printed as a decimal string in units of its asset, exactly.
Ratios of money (ADL overshoot, liquidated share) are exact fractions printed to 6 decimal
places (rounded half-even). Distribution statistics of screened quantities (margin ratios,
per-account drawdowns from the batch kernel's float screen) are floats rounded to 6 places:
they describe, they decide nothing.

Event kinds read (see :mod:`perpmargin.liquidation`, :mod:`perpmargin.engine`,
:mod:`perpmargin.prices`): ``LiquidationStarted``, ``LiquidationFill`` (``notional_q`` in the
settle asset, ``bucket`` with ``#`` for an isolated one, ``channel``), ``BadDebt``
(``amount_q``; the fill path's isolated-bankruptcy event has no ``asset``: it is the market's
settle asset; a retried bucket's later events carry its remaining deficit, see
:func:`bad_debt_flows`), ``AdlFill`` / ``AdlSummary`` (``adl_loss_q``, ``bad_debt_q``),
``FundingSettled`` (``payments`` ``[holder, leg, owed_q]``, positive = paid; index mode:
``owed_q``), ``InsuranceFundFlow``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from fractions import Fraction
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from perpmargin.config import Market

if TYPE_CHECKING:
    from perpmargin.engine import Engine

__all__ = ["RunFacts", "bad_debt_flows", "compute_metrics", "quantiles", "units"]


def units(q: int, decimals: int) -> str:
    """``q`` quanta as a decimal string in units (exact)."""
    d = Decimal(int(q)).scaleb(-decimals)
    return format(d, "f")


def ratio_text(num: int | Fraction, den: int | Fraction) -> str | None:
    """``num / den`` to 6 decimal places (half-even), ``None`` when ``den == 0``."""
    if den == 0:
        return None
    f = Fraction(num) / Fraction(den)
    return format((Decimal(f.numerator) / Decimal(f.denominator)).quantize(Decimal("0.000001")), "f")


def quantiles(values: npt.NDArray[np.float64], qs: Sequence[float]) -> list[float]:
    """Quantiles by the inverted empirical CDF (an observed value, no interpolation); NaN when empty."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return [float("nan")] * len(qs)
    return [float(x) for x in np.quantile(v, list(qs), method="inverted_cdf")]


def _r6(x: float) -> str | None:
    if not np.isfinite(x):
        return None if np.isnan(x) else ("inf" if x > 0 else "-inf")
    return format(Decimal(repr(float(x))).quantize(Decimal("0.000001")), "f")


@dataclass(frozen=True, slots=True)
class RunFacts:
    """What the metrics need besides events and series: configuration and the final state's few numbers."""

    n_accounts: int
    excluded: tuple[str, ...]
    markets: Mapping[str, Market]
    asset_decimals: Mapping[str, int]
    valuation_asset: str
    valuation_decimals: int
    initial_fund_q: int
    fund_asset: str
    drawdowns: npt.NDArray[np.float64] = field(default_factory=lambda: np.zeros(0))
    rejected: Mapping[str, int] = field(default_factory=dict)

    @classmethod
    def from_engine(
        cls,
        engine: Engine,
        *,
        n_accounts: int,
        excluded: Iterable[str],
        initial_fund_q: int,
        fund_asset: str,
        drawdowns: npt.NDArray[np.float64],
        rejected: Mapping[str, int],
    ) -> RunFacts:
        """Facts read from a finished engine."""
        st = engine.state
        return cls(
            n_accounts=n_accounts,
            excluded=tuple(excluded),
            markets=dict(st.markets),
            asset_decimals={a: x.decimals for a, x in st.assets.items()},
            valuation_asset=st.rules.valuation_asset,
            valuation_decimals=st.rules.valuation_decimals,
            initial_fund_q=initial_fund_q,
            fund_asset=fund_asset,
            drawdowns=drawdowns,
            rejected=dict(rejected),
        )


def _add(d: dict[str, int], key: str, v: int) -> None:
    d[key] = d.get(key, 0) + v


def _liquidations(events: Sequence[Mapping[str, Any]], facts: RunFacts) -> dict[str, Any]:
    excluded = set(facts.excluded)
    started = 0
    accounts: set[str] = set()
    by_asset: dict[str, int] = {}
    by_mode: dict[str, int] = {}
    by_bracket: dict[str, int] = {}
    by_channel: dict[str, int] = {}
    fills = 0
    for ev in events:
        kind, d = ev["kind"], ev["data"]
        if kind == "LiquidationStarted" and not str(d["bucket"]).startswith("@"):
            started += 1
            if d["account_id"] not in excluded:
                accounts.add(str(d["account_id"]))
        elif kind == "LiquidationFill" and not str(d["bucket"]).startswith("@"):
            fills += 1
            m = facts.markets[d["symbol"]]
            q = int(d["notional_q"])
            _add(by_asset, m.settle_asset, q)
            _add(by_mode, f"{m.settle_asset}:{'isolated' if '#' in str(d['bucket']) else 'cross'}", q)
            _add(by_channel, f"{m.settle_asset}:{d['channel']}", q)
            before = abs(int(d["size_after_sz"])) + int(d["size_sz"])
            n = m.notional_q(before, int(d["mark_px"]), facts.asset_decimals[m.settle_asset])
            idx = m.brackets.index_for(n.numerator, n.denominator)
            _add(by_bracket, f"{d['symbol']}:{idx}", q)

    def text(table: dict[str, int]) -> dict[str, str]:
        out = {}
        for k, v in sorted(table.items()):
            asset = k.split(":", 1)[0]
            dec = facts.asset_decimals.get(asset)
            if dec is None:  # bracket keys are symbol-prefixed
                dec = facts.asset_decimals[facts.markets[asset].settle_asset]
            out[k] = units(v, dec)
        return out

    return {
        "count": started,
        "fills": fills,
        "accounts_liquidated": len(accounts),
        "accounts_liquidated_share": ratio_text(len(accounts), facts.n_accounts),
        "notional": text(by_asset),
        "notional_q": dict(sorted(by_asset.items())),
        "notional_by_mode": text(by_mode),
        "notional_by_bracket": text(by_bracket),
        "notional_by_channel": text(by_channel),
    }


def bad_debt_flows(
    events: Iterable[Mapping[str, Any]], open_: dict[str, int] | None = None
) -> Iterator[tuple[str, int, int, int, int]]:
    """Per ``BadDebt`` event: ``(asset, newly recognised, fund paid, socialised, unresolved after)`` quanta.

    The desk re-tries an unresolved bucket and emits ``BadDebt`` again whenever the retry pays
    something; its ``amount_q`` is then the *remaining* deficit, not a new loss. A deficit is
    therefore counted once, when its bucket is first seen (or seen again after it was fully
    resolved); payments and socialisations are actual flows and add up; the unresolved amount
    is the last one per bucket. ``open_`` carries the unresolved buckets across calls.
    """
    pending = {} if open_ is None else open_
    for ev in events:
        if ev["kind"] != "BadDebt":
            continue
        d = ev["data"]
        key = str(d.get("bucket") or f"{d['account_id']}#{d['symbol']}")
        amount = int(d["amount_q"])
        new = 0 if key in pending else amount
        left = int(d.get("unresolved_q", 0))
        if left > 0:
            pending[key] = left
        else:
            pending.pop(key, None)
        yield str(d.get("asset") or ""), new, int(d.get("fund_paid_q", amount)), int(d.get("socialized_q", 0)), left


def _bad_debt(events: Sequence[Mapping[str, Any]], facts: RunFacts) -> dict[str, Any]:
    total: dict[str, int] = {}
    paid: dict[str, int] = {}
    social: dict[str, int] = {}
    n = 0
    pending: dict[str, int] = {}
    assets: dict[str, str] = {}
    bd = [ev for ev in events if ev["kind"] == "BadDebt"]
    for ev, (asset, new, p, soc, _left) in zip(bd, bad_debt_flows(bd, pending), strict=True):
        d = ev["data"]
        asset = asset or facts.markets[d["symbol"]].settle_asset
        assets[str(d.get("bucket") or f"{d['account_id']}#{d['symbol']}")] = asset
        n += 1
        _add(total, asset, new)
        _add(paid, asset, p)
        _add(social, asset, soc)
    unresolved: dict[str, int] = {}
    for key, left in pending.items():
        _add(unresolved, assets[key], left)

    def text(t: dict[str, int]) -> dict[str, str]:
        return {a: units(v, facts.asset_decimals[a]) for a, v in sorted(t.items())}

    return {
        "events": n,
        "total": text(total),
        "total_q": dict(sorted(total.items())),
        "fund_paid": text(paid),
        "socialized": text(social),
        "unresolved": text(unresolved),
        "buckets_unresolved": len(pending),
    }


def _fund(series: Mapping[str, Any], facts: RunFacts) -> dict[str, Any]:
    path = [int(x) for x in np.asarray(series["insurance_fund"], dtype=np.int64)]
    vdec = facts.valuation_decimals
    if not path:
        return {}
    peak = facts.initial_fund_q * 10 ** (vdec - facts.asset_decimals[facts.fund_asset])
    dd = 0
    for v in path:
        peak = max(peak, v)
        dd = max(dd, peak - v)
    return {
        "asset": facts.valuation_asset,
        "initial": units(facts.initial_fund_q, facts.asset_decimals[facts.fund_asset]),
        "min": units(min(path), vdec),
        "max": units(max(path), vdec),
        "final": units(path[-1], vdec),
        "max_drawdown": units(dd, vdec),
        "min_q": min(path),
        "final_q": path[-1],
    }


def _adl(events: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    fills = 0
    summaries = 0
    loss = 0
    debt = 0
    worst: Fraction | None = None
    for ev in events:
        if ev["kind"] == "AdlFill":
            fills += 1
        elif ev["kind"] == "AdlSummary":
            summaries += 1
            d = ev["data"]
            b, lq = int(d["bad_debt_q"]), int(d["adl_loss_q"])
            if b > 0:
                loss += lq
                debt += b
                r = Fraction(lq, b)
                worst = r if worst is None or r > worst else worst
    return {
        "fills": fills,
        "events": summaries,
        "overshoot_ratio": ratio_text(loss, debt),
        "overshoot_max": None if worst is None else ratio_text(worst, 1),
    }


def _open_interest(series: Mapping[str, Any], facts: RunFacts) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in sorted(series):
        if not key.startswith("open_interest."):
            continue
        sym = key.split(".", 1)[1]
        col = [int(x) for x in np.asarray(series[key], dtype=np.int64)]
        if not col:
            continue
        sd = facts.markets[sym].size_decimals
        out[sym] = {
            "initial": units(col[0], sd),
            "min": units(min(col), sd),
            "max": units(max(col), sd),
            "final": units(col[-1], sd),
        }
    return out


def _funding(events: Sequence[Mapping[str, Any]], facts: RunFacts) -> dict[str, Any]:
    excluded = set(facts.excluded)
    paid: dict[str, int] = {}
    users_net: dict[str, int] = {}
    settlements = 0
    for ev in events:
        if ev["kind"] != "FundingSettled":
            continue
        d = ev["data"]
        asset = facts.markets[d["symbol"]].settle_asset
        settlements += 1
        rows: list[tuple[str, int]]
        if d.get("mode") == "index":
            rows = [(str(d["account_id"]), int(d["owed_q"]))]
        else:
            rows = [(str(h), int(o)) for h, _leg, o in d.get("payments", ())]
        for holder, owed in rows:
            if owed > 0:
                _add(paid, asset, owed)
            acct = holder.split("#", 1)[0]
            if acct not in excluded and not acct.startswith("@"):
                _add(users_net, asset, owed)
    return {
        "settlements": settlements,
        "paid": {a: units(v, facts.asset_decimals[a]) for a, v in sorted(paid.items())},
        "population_net_paid": {a: units(v, facts.asset_decimals[a]) for a, v in sorted(users_net.items())},
    }


def compute_metrics(
    events: Sequence[Mapping[str, Any]], series: Mapping[str, Any], facts: RunFacts
) -> dict[str, Any]:
    """All metrics of a run (JSON-ready: strings, ints, ``None`` and nested dicts only)."""
    kinds: dict[str, int] = {}
    for ev in events:
        _add(kinds, str(ev["kind"]), 1)
    dd = quantiles(facts.drawdowns, (0.5, 0.9, 0.99, 1.0))
    mr99 = np.asarray(series.get("mr_p99", np.zeros(0)), dtype=np.float64)
    mr99 = mr99[np.isfinite(mr99)]
    return {
        "accounts": facts.n_accounts,
        "liquidations": _liquidations(events, facts),
        "bad_debt": _bad_debt(events, facts),
        "insurance_fund": _fund(series, facts),
        "adl": _adl(events),
        "open_interest": _open_interest(series, facts),
        "funding": _funding(events, facts),
        "drawdown": {"p50": _r6(dd[0]), "p90": _r6(dd[1]), "p99": _r6(dd[2]), "max": _r6(dd[3])},
        "margin_ratio_p99_max": _r6(float(mr99.max())) if mr99.size else None,
        "rejected": dict(sorted(facts.rejected.items())),
        "events_by_kind": dict(sorted(kinds.items())),
        "events": len(events),
    }
