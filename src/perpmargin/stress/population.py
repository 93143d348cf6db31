"""Trader populations for stress runs: generated from a TOML spec, or loaded from CSV/Parquet.

A population is a list of :class:`~perpmargin.stress.specs.AccountSpec`: who deposits what,
in which position mode, and which positions they open at which step. The generator draws
every random choice from one ``numpy.random.Generator(PCG64(seed))`` as whole arrays in a
fixed order, then sizes each position **exactly** (``Fraction``) on the market's step, so the
same spec, venue, prices, ``n`` and seed give the same accounts on any machine.

Sizing (all in USD; stablecoins count at par for sizing only — the engine values them at
their index): the drawn USD size is floored to whole cents and converted to the collateral
asset (rounded down to its quantum); the account's collateral value is
``amount × price × haircut`` (the asset's lowest haircut tier). It is split evenly over the
account's positions; a position with leverage ``L`` and budget ``B`` may have notional up to
``N_max = B·L / (1 + L·taker_fee)``
(initial margin ``N/L`` plus the taker fee fit the budget), and no more than 90 % of the cap
of the last bracket that still allows ``L`` (room for a price move before a late entry). The
target notional ``N = f·N_max`` with ``f ~ U(size_fraction)`` is turned into a size —
linear ``N / (multiplier × price)``, inverse ``N / multiplier`` contracts — and rounded
**down** to the step. A size under the market's minimum is raised to the minimum and the
deposit topped up (rounded up) so the position still fits; so every generated position is one
the engine accepts at the given prices (tested against the real engine).

Rules that keep every position valid: one-way accounts hold each symbol once; hedge-mode
accounts name the leg (``LONG``/``SHORT``) and some hold both legs of their first symbol;
a position is isolated only if the account's collateral asset is the market's settle asset
(isolated margin moves the settle asset out of the cross wallet).
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import ROUND_DOWN, Decimal, InvalidOperation
from fractions import Fraction
from importlib import resources
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import pandas as pd
from numpy.random import PCG64, Generator

from perpmargin.config import ContractKind, Market
from perpmargin.errors import DataError
from perpmargin.numbers import RATE_SCALE, pow10
from perpmargin.presets import Venue
from perpmargin.stress.specs import AccountSpec, PositionSpec

__all__ = [
    "POPULATION_COLUMNS",
    "PopulationSpec",
    "default_population_spec",
    "generate_population",
    "load_population",
    "load_population_spec",
    "save_population",
]

STABLECOINS = frozenset({"USD", "USDT", "USDC", "BUSD", "FDUSD", "DAI", "TUSD", "USDE"})
"""Assets counted at 1 USD when sizing collateral and positions (not when valuing them)."""

BRACKET_HEADROOM = Fraction(9, 10)
"""A position's notional stays below this share of its bracket's cap."""

MAX_SIZE_FRACTION = 0.98
"""Upper limit of ``size_fraction``: leaves room for the engine's rounding in its favour."""


@dataclass(frozen=True)
class PopulationSpec:
    """The distributions a population is drawn from (file format: ``data/population-default.toml``).

    Collateral: log-normal USD value with median ``collateral_median_usd`` and log-sd
    ``collateral_sigma``, clipped to ``[collateral_min_usd, collateral_max_usd]``; one asset per
    account drawn from ``assets`` (weights; assets the venue lacks are skipped). Leverage:
    discrete ``leverage`` weights (clipped to each market's maximum). ``long_share`` of
    positions are long; ``isolated_share`` of (account, symbol) pairs are isolated;
    ``hedge_share`` of accounts use hedge mode, and ``hedge_both_sides_share`` of those also
    open the opposite leg on their first symbol. ``symbols`` weights are keyed by venue
    symbol or base asset (``BTC`` matches ``BTCUSDT``, ``BTC-USD``...). ``positions`` weights
    the number of symbols an account trades. Size: ``size_fraction`` (lo, hi) of the largest
    notional the budget allows. Entry: ``entry_at_start_share`` of accounts open at step 0,
    the others at a uniform step in ``[1, entry_window_steps]``. Weights need not sum to 1.
    """

    collateral_median_usd: float
    collateral_sigma: float
    collateral_min_usd: float
    collateral_max_usd: float
    assets: tuple[tuple[str, float], ...]
    leverage: tuple[tuple[str, float], ...]
    long_share: float
    isolated_share: float
    hedge_share: float
    hedge_both_sides_share: float
    symbols: tuple[tuple[str, float], ...]
    positions: tuple[tuple[int, float], ...]
    size_fraction: tuple[float, float]
    entry_at_start_share: float
    entry_window_steps: int
    name: str = ""

    def __post_init__(self) -> None:
        def share(name: str, v: float) -> None:
            if not (math.isfinite(v) and 0 <= v <= 1):
                raise DataError(f"population spec: {name} must be a share in [0, 1]", **{name: v})

        if not (0 < self.collateral_min_usd <= self.collateral_median_usd <= self.collateral_max_usd < math.inf):
            raise DataError("population spec: need 0 < collateral min ≤ median ≤ max < ∞")
        if not (math.isfinite(self.collateral_sigma) and self.collateral_sigma >= 0):
            raise DataError("population spec: collateral sigma must be ≥ 0")
        for name in ("long_share", "isolated_share", "hedge_share", "hedge_both_sides_share", "entry_at_start_share"):
            share(name, getattr(self, name))
        for name, weights in (("assets", self.assets), ("leverage", self.leverage), ("symbols", self.symbols)):
            _check_weights(name, weights)
        _check_weights("positions", self.positions)
        for lev, _w in self.leverage:
            try:
                d = Decimal(lev)
            except InvalidOperation:
                raise DataError("population spec: leverage keys must be numbers", leverage=lev) from None
            if not d.is_finite() or d < 1:
                raise DataError("population spec: leverage must be ≥ 1", leverage=lev)
        if any(k < 1 for k, _w in self.positions):
            raise DataError("population spec: position counts must be ≥ 1")
        lo, hi = self.size_fraction
        if not 0 < lo <= hi <= MAX_SIZE_FRACTION:
            raise DataError(f"population spec: size_fraction needs 0 < lo ≤ hi ≤ {MAX_SIZE_FRACTION}", lo=lo, hi=hi)
        if self.entry_window_steps < 1:
            raise DataError("population spec: entry_window_steps must be ≥ 1")


def _check_weights(name: str, weights: Sequence[tuple[Any, float]]) -> None:
    if not weights:
        raise DataError(f"population spec: {name} needs at least one weight")
    if any(not (math.isfinite(w) and w >= 0) for _k, w in weights) or sum(w for _k, w in weights) <= 0:
        raise DataError(f"population spec: {name} weights must be ≥ 0 with a positive sum")
    keys = [k for k, _w in weights]
    if len(set(keys)) != len(keys):
        raise DataError(f"population spec: {name} has duplicate keys")


# --- spec files -----------------------------------------------------------------------------


def _num(table: Mapping[str, Any], key: str, where: str) -> float:
    if key not in table:
        raise DataError(f"population spec: missing {where}.{key}")
    v = table[key]
    if isinstance(v, bool):
        raise DataError(f"population spec: {where}.{key} must be a number", value=v)
    try:
        out = float(Decimal(v) if isinstance(v, str) else v)
    except (InvalidOperation, TypeError, ValueError):
        raise DataError(f"population spec: {where}.{key} must be a number", value=v) from None
    if not math.isfinite(out):
        raise DataError(f"population spec: {where}.{key} must be finite", value=v)
    return out


def _weights(table: Mapping[str, Any], key: str, where: str) -> tuple[tuple[str, float], ...]:
    t = table.get(key)
    if not isinstance(t, dict) or not t:
        raise DataError(f"population spec: {where}.{key} must be a table of weights")
    return tuple((str(k), _num(t, k, f"{where}.{key}")) for k in t)


def _table(data: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    t = data.get(key)
    if not isinstance(t, dict):
        raise DataError(f"population spec: missing [{key}] table")
    return t


def _spec_from_dict(data: Mapping[str, Any], name: str) -> PopulationSpec:
    col = _table(data, "collateral")
    pos = _table(data, "positions")
    modes = _table(data, "modes")
    entry = _table(data, "entry")
    counts = _weights(pos, "count", "positions")
    try:
        count_w = tuple((int(k), w) for k, w in counts)
    except ValueError:
        raise DataError("population spec: positions.count keys must be integers") from None
    frac = pos.get("size_fraction")
    if not isinstance(frac, list) or len(frac) != 2:
        raise DataError("population spec: positions.size_fraction must be [lo, hi]")
    fr = {"lo": frac[0], "hi": frac[1]}
    window = _num(entry, "window_steps", "entry")
    if window != int(window):
        raise DataError("population spec: entry.window_steps must be an integer")
    return PopulationSpec(
        collateral_median_usd=_num(col, "median_usd", "collateral"),
        collateral_sigma=_num(col, "sigma", "collateral"),
        collateral_min_usd=_num(col, "min_usd", "collateral"),
        collateral_max_usd=_num(col, "max_usd", "collateral"),
        assets=_weights(col, "assets", "collateral"),
        leverage=_weights(data, "leverage", ""),
        long_share=_num(_table(data, "sides"), "long_share", "sides"),
        isolated_share=_num(modes, "isolated_share", "modes"),
        hedge_share=_num(modes, "hedge_share", "modes"),
        hedge_both_sides_share=_num(modes, "hedge_both_sides_share", "modes"),
        symbols=_weights(data, "symbols", ""),
        positions=count_w,
        size_fraction=(_num(fr, "lo", "positions.size_fraction"), _num(fr, "hi", "positions.size_fraction")),
        entry_at_start_share=_num(entry, "at_start_share", "entry"),
        entry_window_steps=int(window),
        name=name,
    )


def load_population_spec(path: str | Path) -> PopulationSpec:
    """Read a population spec from a TOML file (layout: ``data/population-default.toml``)."""
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"population spec {p}: no such file", path=str(p)) from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise DataError(f"population spec {p}: cannot be read ({exc})", path=str(p)) from None
    return _spec_from_dict(data, p.stem)


def default_population_spec() -> PopulationSpec:
    """The shipped retail-heavy default (``perpmargin/stress/data/population-default.toml``)."""
    ref = resources.files("perpmargin.stress") / "data" / "population-default.toml"
    return _spec_from_dict(tomllib.loads(ref.read_text(encoding="utf-8")), "population-default")


# --- generation -----------------------------------------------------------------------------


def _fraction(value: Decimal | str | int) -> Fraction:
    try:
        d = Decimal(value)
    except (InvalidOperation, TypeError, ValueError):
        raise DataError("price must be a decimal number", price=value) from None
    if isinstance(value, float) or not d.is_finite() or d <= 0:
        raise DataError("price must be a finite positive Decimal", price=str(value))
    return Fraction(d)


def _usd_price(asset: str, venue: Venue, prices: Mapping[str, Fraction]) -> Fraction:
    """USD price of ``asset`` for sizing: given, stable (1), or a USD-quoted market on it."""
    if asset in prices:
        return prices[asset]
    if asset in STABLECOINS:
        return Fraction(1)
    for sym, m in sorted(venue.markets.items()):
        if m.base == asset and m.quote in STABLECOINS and sym in prices:
            return prices[sym]
    raise DataError(f"no price for collateral asset {asset}: pass prices[{asset!r}] or a {asset} market price")


def _min_haircut(venue: Venue, asset: str) -> Fraction:
    return Fraction(min(t.ratio_r for t in venue.assets[asset].haircut_tiers), RATE_SCALE)


def _dec_str(x: Fraction, places: int, rounding: str) -> str:
    d = (Decimal(x.numerator) / Decimal(x.denominator)).quantize(Decimal(1).scaleb(-places), rounding=rounding)
    return format(d.normalize() if d != 0 else d, "f")


def _frac_str(x: Fraction) -> str:
    return format(Decimal(x.numerator) / Decimal(x.denominator), "f") if x.denominator != 1 else str(x.numerator)


def _usd_per_size(m: Market, price: Fraction) -> Fraction:
    """USD notional of one size unit (base unit or contract) at ``price``."""
    if m.kind is ContractKind.LINEAR:
        return m.contract_multiplier * price
    return m.contract_multiplier


def _cap_usd(m: Market, lev: Fraction, price: Fraction, settle_usd: Fraction, settle_decimals: int) -> Fraction | None:
    """USD notional below which ``lev`` is allowed (cap of the last bracket allowing it)."""
    cap_q: int | None = None
    for b in m.brackets.brackets:
        if b.max_leverage >= lev:
            cap_q = b.cap_q
            if cap_q is None:
                return None
        else:
            break
    if cap_q is None:
        raise DataError("leverage above every bracket", symbol=m.symbol, leverage=str(lev))
    return Fraction(cap_q, pow10(settle_decimals)) * settle_usd


def _pick(rng_u: np.ndarray, weights: Sequence[float]) -> np.ndarray:
    """Indices drawn by inverse CDF from uniforms ``rng_u`` (deterministic, no float sort)."""
    w = np.asarray(weights, dtype=np.float64)
    cdf = np.cumsum(w / w.sum())
    cdf[-1] = 1.0
    return np.searchsorted(cdf, rng_u, side="right")


def _pick_one(u: float, weighted: Sequence[tuple[str, float]]) -> int:
    """Index drawn by inverse CDF from one uniform ``u`` (the last index absorbs rounding)."""
    total = sum(w for _k, w in weighted)
    acc = 0.0
    for i, (_k, w) in enumerate(weighted):
        acc += w / total
        if u < acc:
            return i
    return len(weighted) - 1


def _markets_for(spec: PopulationSpec, venue: Venue, prices: Mapping[str, Fraction]) -> list[tuple[str, float]]:
    out: dict[str, float] = {}
    for key, w in spec.symbols:
        matches = [key] if key in venue.markets else sorted(s for s, m in venue.markets.items() if m.base == key)
        matches = [s for s in matches if s in prices]
        for s in matches:
            out[s] = out.get(s, 0.0) + w / len(matches)
    chosen = [(s, w) for s, w in out.items() if w > 0]
    if not chosen:
        raise DataError(
            "no market of the spec's symbols is on this venue with a price",
            spec_symbols=[k for k, _ in spec.symbols],
            venue_markets=sorted(venue.markets),
            priced=sorted(prices),
        )
    return chosen


def generate_population(
    spec: PopulationSpec,
    *,
    n: int,
    venue: Venue,
    prices: Mapping[str, Decimal],
    seed: int,
    steps: int | None = None,
) -> list[AccountSpec]:
    """Draw ``n`` accounts (ids ``t000001``…) from ``spec`` for ``venue`` at ``prices``.

    ``prices`` maps market symbols (and optionally asset names) to Decimal prices, e.g. the
    scenario's first close; markets without a price are skipped. ``steps`` (the path length)
    caps late entries at ``steps − 1``; ``None`` keeps ``entry_window_steps``. Draw order (one
    array each, ``K`` = the largest position count): collateral normals (n), asset (n), hedge
    (n), both-sides (n), count (n), entry-at-start (n), entry step (n), then n × (K + 1) arrays of
    symbol, side, leverage, isolated and size-fraction uniforms. See the module docstring for
    the sizing rule.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1 or n > 999_999:
        raise DataError("n must be an integer in [1, 999999]", n=n)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise DataError("seed must be a non-negative integer", seed=seed)
    if steps is not None and (not isinstance(steps, int) or steps < 1):
        raise DataError("steps must be a positive integer", steps=steps)
    px = {k: _fraction(v) for k, v in prices.items()}
    assets = [(a, w) for a, w in spec.assets if a in venue.assets and w > 0]
    if not assets:
        raise DataError("none of the spec's collateral assets exists on this venue", venue_assets=sorted(venue.assets))
    markets = _markets_for(spec, venue, px)
    asset_usd = {a: _usd_price(a, venue, px) for a, _w in assets}
    haircut = {a: _min_haircut(venue, a) for a, _w in assets}
    levs = [(Fraction(Decimal(k)), w) for k, w in spec.leverage]
    counts = [k for k, _w in spec.positions]
    k_max = max(counts)
    window = spec.entry_window_steps if steps is None else min(spec.entry_window_steps, max(steps - 1, 0))

    sizing = {(sym, lev): _sizing(venue, px, sym, lev) for sym, _w in markets for lev, _lw in levs}

    rng = Generator(PCG64(seed))
    z = rng.standard_normal(n)
    u_asset = rng.random(n)
    u_hedge = rng.random(n)
    u_both = rng.random(n)
    u_count = rng.random(n)
    u_start = rng.random(n)
    entry_late = rng.integers(1, max(window, 1) + 1, n)
    u_sym = rng.random((n, k_max + 1))
    u_side = rng.random((n, k_max + 1))
    u_lev = rng.random((n, k_max + 1))
    u_iso = rng.random((n, k_max + 1))
    u_frac = rng.random((n, k_max + 1))

    usd = np.clip(
        spec.collateral_median_usd * np.exp(spec.collateral_sigma * z), spec.collateral_min_usd, spec.collateral_max_usd
    )
    asset_idx = _pick(u_asset, [w for _a, w in assets])
    count_idx = _pick(u_count, [w for _k, w in spec.positions])
    lev_idx = _pick(u_lev.ravel(), [w for _l, w in levs]).reshape(u_lev.shape)
    lo, hi = spec.size_fraction
    frac = lo + (hi - lo) * u_frac

    out: list[AccountSpec] = []
    for i in range(n):
        asset = assets[int(asset_idx[i])][0]
        hedge = bool(u_hedge[i] < spec.hedge_share)
        entry = 0 if (u_start[i] < spec.entry_at_start_share or window < 1) else int(entry_late[i])
        # Symbols without replacement, by inverse CDF over the remaining weights.
        remaining = list(markets)
        k = min(counts[int(count_idx[i])], len(remaining))
        chosen: list[str] = []
        for j in range(k):
            chosen.append(remaining.pop(_pick_one(float(u_sym[i, j]), remaining))[0])
        legs: list[tuple[str, Literal["long", "short"], int]] = []  # (symbol, side, draw column)
        for j, sym in enumerate(chosen):
            legs.append((sym, "long" if u_side[i, j] < spec.long_share else "short", j))
        if hedge and u_both[i] < spec.hedge_both_sides_share:
            sym0, side0, _ = legs[0]
            legs.append((sym0, "short" if side0 == "long" else "long", k_max))
        amount_q, positions = _size_account(
            venue=venue,
            sizing=sizing,
            asset=asset,
            asset_usd=asset_usd[asset],
            haircut=haircut[asset],
            usd=Fraction(int(usd[i] * 100), 100),  # whole cents, rounded down
            legs=legs,
            lev_of={sym: levs[int(lev_idx[i, j])][0] for j, sym in enumerate(chosen)},
            iso_of={sym: bool(u_iso[i, j] < spec.isolated_share) for j, sym in enumerate(chosen)},
            frac_of=[Fraction(int(frac[i, col] * 1_000_000), 1_000_000) for _s, _d, col in legs],
            hedge=hedge,
            entry=entry,
        )
        dec = venue.assets[asset].decimals
        out.append(
            AccountSpec(
                account_id=f"t{i + 1:06d}",
                position_mode="hedge" if hedge else "one_way",
                deposits=((asset, _dec_str(Fraction(amount_q, pow10(dec)), dec, ROUND_DOWN)),),
                positions=tuple(positions),
            )
        )
    return out


@dataclass(frozen=True)
class _Sizing:
    """Per (market, leverage) constants of the sizing rule (exact)."""

    lev: Fraction
    lev_str: str
    gross: Fraction  # L / (1 + L·taker_fee): notional per USD of budget
    cap: Fraction | None  # BRACKET_HEADROOM × bracket cap, USD
    per: Fraction  # USD notional of one size unit
    scale: int  # 10**size_decimals
    step: int
    floor_sz: int


def _sizing(venue: Venue, px: Mapping[str, Fraction], sym: str, lev_drawn: Fraction) -> _Sizing:
    m = venue.markets[sym]
    price = px[sym]
    settle_usd = _usd_price(m.settle_asset, venue, px) if m.kind is ContractKind.LINEAR else price
    lev = min(lev_drawn, m.max_leverage)
    fee = Fraction(m.taker_fee_r, RATE_SCALE)
    cap = _cap_usd(m, lev, price, settle_usd, venue.assets[m.settle_asset].decimals)
    floor_sz = max(m.min_size_sz, m.step_sz)
    return _Sizing(
        lev=lev,
        lev_str=_frac_str(lev),
        gross=lev / (1 + lev * fee),
        cap=None if cap is None else cap * BRACKET_HEADROOM,
        per=_usd_per_size(m, price),
        scale=pow10(m.size_decimals),
        step=m.step_sz,
        floor_sz=-(-floor_sz // m.step_sz) * m.step_sz,
    )


def _size_account(
    *,
    venue: Venue,
    sizing: Mapping[tuple[str, Fraction], _Sizing],
    asset: str,
    asset_usd: Fraction,
    haircut: Fraction,
    usd: Fraction,
    legs: Sequence[tuple[str, Literal["long", "short"], int]],
    lev_of: Mapping[str, Fraction],
    iso_of: Mapping[str, bool],
    frac_of: Sequence[Fraction],
    hedge: bool,
    entry: int,
) -> tuple[int, list[PositionSpec]]:
    """Deposit (asset quanta, rounded down; topped up for minimum sizes) and sized positions."""
    dec = venue.assets[asset].decimals
    amount_q = int(usd / asset_usd * pow10(dec))  # floor: never deposit more than drawn
    value = Fraction(amount_q, pow10(dec)) * asset_usd * haircut
    budget = value / len(legs)
    extra_usd = Fraction(0)
    positions: list[PositionSpec] = []
    for (sym, side, _col), f in zip(legs, frac_of, strict=True):
        sz = sizing[(sym, lev_of[sym])]
        target = f * budget * sz.gross
        if sz.cap is not None and target > sz.cap:
            target = sz.cap
        units = target / sz.per
        size_sz = (units.numerator * sz.scale // units.denominator) // sz.step * sz.step
        if size_sz < sz.floor_sz:
            size_sz = sz.floor_sz
            need = Fraction(size_sz, sz.scale) * sz.per / sz.gross
            if need > budget:
                # Top up so this leg's share of the collateral covers IM + fee with 2 % to spare.
                extra_usd += (need - budget) * Fraction(102, 100)
        isolated = iso_of[sym] and venue.markets[sym].settle_asset == asset
        positions.append(
            PositionSpec(
                symbol=sym,
                side=side,
                size=_frac_str(Fraction(size_sz, sz.scale)),
                leverage=sz.lev_str,
                margin_mode="isolated" if isolated else "cross",
                leg=("LONG" if side == "long" else "SHORT") if hedge else "BOTH",
                entry_step=entry,
            )
        )
    if extra_usd:
        # Every leg gets an even share of the collateral, so a leg's shortfall is needed on every
        # share: the sum of shortfalls × the number of legs is enough (it over-covers, never under).
        top = extra_usd * len(legs) / (asset_usd * haircut)
        amount_q += -(-top.numerator * pow10(dec) // top.denominator)
    return amount_q, positions


# --- files ----------------------------------------------------------------------------------

POPULATION_COLUMNS = (
    "account_id",
    "position_mode",
    "deposits",
    "symbol",
    "side",
    "size",
    "leverage",
    "margin_mode",
    "leg",
    "entry_step",
)
"""Columns of a population file: one row per position, account columns repeated on each row.

``deposits`` is ``ASSET:amount`` pairs joined by ``;`` (``USDT:1000;BTC:0.05``). An account
with no position has one row with the position columns empty. Rows of one account must agree
on ``position_mode`` and ``deposits``; accounts keep the order of their first row.
"""


def save_population(accounts: Sequence[AccountSpec], path: str | Path) -> None:
    """Write ``accounts`` to ``path`` (``.csv``, ``.csv.gz`` or ``.parquet``; see :data:`POPULATION_COLUMNS`)."""
    rows: list[dict[str, str]] = []
    for a in accounts:
        base = {
            "account_id": a.account_id,
            "position_mode": a.position_mode,
            "deposits": ";".join(f"{k}:{v}" for k, v in a.deposits),
        }
        if not a.positions:
            rows.append({**base, **dict.fromkeys(POPULATION_COLUMNS[3:], "")})
        for p in a.positions:
            rows.append(
                {
                    **base,
                    "symbol": p.symbol,
                    "side": p.side,
                    "size": p.size,
                    "leverage": p.leverage,
                    "margin_mode": p.margin_mode,
                    "leg": p.leg,
                    "entry_step": str(p.entry_step),
                }
            )
    frame = pd.DataFrame(rows, columns=list(POPULATION_COLUMNS), dtype=str)
    out = Path(path)
    name = out.name.lower()
    if name.endswith(".parquet"):
        frame.to_parquet(out, index=False)
    elif name.endswith((".csv", ".csv.gz")):
        frame.to_csv(out, index=False)
    else:
        raise DataError(f"{out.name}: unsupported file type (use .csv, .csv.gz or .parquet)")


def _positive_decimal(text: str, what: str, row: int) -> Decimal:
    try:
        d = Decimal(text)
    except InvalidOperation:
        raise DataError(f"population row {row}: {what} {text!r} is not a number") from None
    if not d.is_finite() or d <= 0:
        raise DataError(f"population row {row}: {what} must be a finite positive number", value=text)
    return d


def load_population(path: str | Path, venue: Venue) -> list[AccountSpec]:
    """Read a population written by :func:`save_population` (or by hand) and check it against ``venue``.

    Checks (each a :class:`DataError` naming the row): required columns; account id
    non-empty; ``position_mode`` one_way/hedge; deposits ``ASSET:amount`` with venue assets,
    positive amounts within the asset's decimals; symbol on the venue; side long/short; size
    positive, on the step and ≥ the minimum; leverage in ``[1, market max]``; margin mode
    cross/isolated; leg BOTH (one-way) or LONG/SHORT matching the side (hedge); entry step
    ≥ 0; no (symbol, leg) twice in an account; account columns equal on all its rows.
    """
    p = Path(path)
    name = p.name.lower()
    if not p.is_file():
        raise DataError(f"{p}: no such file", path=str(p))
    try:
        if name.endswith(".parquet"):
            frame = pd.read_parquet(p).astype(str)
        elif name.endswith((".csv", ".csv.gz")):
            frame = pd.read_csv(p, dtype=str, keep_default_na=False)
        else:
            raise DataError(f"{p.name}: unsupported file type (use .csv, .csv.gz or .parquet)")
    except DataError:
        raise
    except pd.errors.EmptyDataError:
        raise DataError(f"{p.name}: the file is empty") from None
    except (OSError, ValueError) as exc:
        raise DataError(f"{p.name}: cannot be read ({exc})") from None
    missing = [c for c in POPULATION_COLUMNS if c not in frame.columns]
    if missing:
        raise DataError(f"{p.name}: missing column(s) {', '.join(missing)}", found=list(frame.columns))
    if len(frame) == 0:
        raise DataError(f"{p.name}: the file has no rows")
    frame = frame.replace({"None": "", "nan": ""})
    order: list[str] = []
    heads: dict[str, tuple[str, str]] = {}
    deposits: dict[str, tuple[tuple[str, str], ...]] = {}
    positions: dict[str, list[PositionSpec]] = {}
    for row, rec in enumerate(frame[list(POPULATION_COLUMNS)].itertuples(index=False, name=None)):
        aid, mode, deps, sym, side, size, lev, mmode, leg, entry = (str(x).strip() for x in rec)
        if not aid:
            raise DataError(f"population row {row}: empty account_id")
        if aid not in heads:
            if mode not in ("one_way", "hedge"):
                raise DataError(f"population row {row}: position_mode must be one_way or hedge", value=mode)
            heads[aid] = (mode, deps)
            deposits[aid] = _parse_deposits(deps, venue, row)
            positions[aid] = []
            order.append(aid)
        elif heads[aid] != (mode, deps):
            raise DataError(f"population row {row}: account {aid} has different position_mode/deposits on its rows")
        if not sym:
            if any((side, size, lev, mmode, leg, entry)):
                raise DataError(f"population row {row}: position columns set without a symbol")
            continue
        positions[aid].append(_parse_position(venue, row, mode, sym, side, size, lev, mmode, leg, entry))
        keys = [(q.symbol, q.leg) for q in positions[aid]]
        if len(set(keys)) != len(keys):
            raise DataError(f"population row {row}: account {aid} holds {sym} {leg} twice")
    return [
        AccountSpec(
            account_id=a,
            position_mode=cast(Literal["one_way", "hedge"], heads[a][0]),
            deposits=deposits[a],
            positions=tuple(positions[a]),
        )
        for a in order
    ]


def _parse_deposits(text: str, venue: Venue, row: int) -> tuple[tuple[str, str], ...]:
    out: list[tuple[str, str]] = []
    if not text:
        return ()
    for part in text.split(";"):
        asset, sep, amount = part.partition(":")
        asset, amount = asset.strip(), amount.strip()
        if not sep or asset not in venue.assets:
            raise DataError(f"population row {row}: deposit {part!r} must be ASSET:amount with a venue asset")
        d = _positive_decimal(amount, f"deposit of {asset}", row)
        exp = d.as_tuple().exponent
        if isinstance(exp, int) and -exp > venue.assets[asset].decimals:
            raise DataError(
                f"population row {row}: {asset} amount has more than {venue.assets[asset].decimals} decimals"
            )
        out.append((asset, amount))
    if len({a for a, _ in out}) != len(out):
        raise DataError(f"population row {row}: an asset is deposited twice")
    return tuple(out)


def _parse_position(
    venue: Venue, row: int, mode: str, sym: str, side: str, size: str, lev: str, mmode: str, leg: str, entry: str
) -> PositionSpec:
    m = venue.markets.get(sym)
    if m is None:
        raise DataError(
            f"population row {row}: symbol {sym} is not on venue {venue.rules.name}", markets=sorted(venue.markets)
        )
    if side not in ("long", "short"):
        raise DataError(f"population row {row}: side must be long or short", value=side)
    sz = _positive_decimal(size, "size", row) * pow10(m.size_decimals)
    if sz != sz.to_integral_value() or int(sz) % m.step_sz or int(sz) < m.min_size_sz:
        raise DataError(f"population row {row}: size {size} is off the step or below the minimum of {sym}")
    lv = _positive_decimal(lev, "leverage", row)
    if lv < 1 or Fraction(lv) > m.max_leverage:
        raise DataError(f"population row {row}: leverage {lev} outside [1, {m.max_leverage}] for {sym}")
    if mmode not in ("cross", "isolated"):
        raise DataError(f"population row {row}: margin_mode must be cross or isolated", value=mmode)
    want = "BOTH" if mode == "one_way" else ("LONG" if side == "long" else "SHORT")
    if leg != want:
        raise DataError(f"population row {row}: leg must be {want} for a {mode} {side} position", value=leg)
    try:
        step = int(entry)
    except ValueError:
        raise DataError(f"population row {row}: entry_step must be an integer", value=entry) from None
    if step < 0:
        raise DataError(f"population row {row}: entry_step must be ≥ 0", value=entry)
    return PositionSpec(
        symbol=sym,
        side=cast(Literal["long", "short"], side),
        size=size,
        leverage=lev,
        margin_mode=cast(Literal["cross", "isolated"], mmode),
        leg=cast(Literal["BOTH", "LONG", "SHORT"], leg),
        entry_step=step,
    )
