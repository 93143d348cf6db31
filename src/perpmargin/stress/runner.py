"""The stress runner: a price path, a population and the market model through the real engine.

:func:`run_stress` is a pure function of its :class:`StressConfig` (same config → same metrics,
same event-log hash, same state hash, on any machine and in any process), so sweeps can farm
configurations out to a process pool or a Dask cluster.

What a run does
---------------
1. **Venue.** The preset is loaded and the sweep overrides are applied to its parsed TOML
   (``mmr_scale`` multiplies every bracket's MMR, ``liquidation_fee`` sets
   ``[venue.liquidation] fee``, ``oracle_band`` sets ``max_deviation`` of ``[prices.oracle]`` and
   ``[prices.asset_oracle]``) and the result goes through the normal preset validation
   (:func:`perpmargin.presets.venue_from_dict`); an MMR scaled to or above a bracket's initial
   rate (``1 / max_leverage``) is a :class:`~perpmargin.errors.ConfigError`.
2. **Set-up** (at the first candle's open time): the first prices through the oracle path
   (below) and the book; the **market maker** ``stress-mm``: a one-way cross account at
   leverage 1 funded with :data:`MM_CAPITAL_MULTIPLE` × the population's gross notional at the
   path's highest price, the counterparty of every population fill (maker side). At leverage 1
   with that capital it cannot be liquidated by any move the path makes (it is short what the
   population is long and vice versa); it can be picked by ADL when it is in profit, as any
   trader can. Then every account: ``CreateAccount``, ``Deposit``, ``SetMarginMode`` /
   ``SetLeverage`` per symbol and the ``Fill`` against the market maker at the first price
   (positions with ``entry_step > 0`` open at that step's observed price). Then liquidation is
   switched on — ``ConfigureLiquidation`` from the venue (nothing is below its initial margin
   yet; the desk indexes every bucket once instead of after every set-up fill) — the insurance
   fund is funded (``FundInsurance``, ``insurance_fund``, default :data:`DEFAULT_FUND_SHARE` of
   the population's gross notional at the first price), and a liquidator is registered when
   the preset's rules hand positions to one (``backstop_equity_ratio > 0``: backstop) or run
   auctions. Commands the engine refuses (e.g. a fill the account's margin cannot carry, or
   one during a price band's reduce-only cool-off) are counted by error code in
   ``metrics["rejected"]`` and skipped, as a venue would.
3. **Each step** ``t`` (at the candle's close time ``open_time + step``), per market, in this
   order: the model advances (recovery, arbitrage) and proposes the observed price
   (:mod:`perpmargin.stress.market`); ``SetBookDepth`` with the model's levels (the depth that
   liquidations consume); ``OracleUpdate`` of the collateral asset that is the market's base
   (BTC collateral follows BTCUSDT) and of the market itself, each with three sources — the
   candle's close, low and high, scaled by the model's displacement (venues printing different
   prices within the minute; the oracle's outlier band and quorum decide) — then
   ``BookUpdate`` (best bid/ask from the levels, last = observed price, impact bid/ask at the
   market's impact notional) so that the preset's mark rule and funding premium have their
   book inputs. A ``FundingTick`` at every funding boundary that falls inside a step settles
   funding on time (any command settles the boundaries due first).
4. **Feedback.** Every ``LiquidationFill`` against ``@external`` (the stored book: book stage,
   insurance aggress and fund unwinds) is handed to the model, which thins the depth and (with
   ``feedback``) moves the next observed price.
5. **Series** per step (see :class:`~perpmargin.stress.specs.StressResult`), with the margin
   ratios of every margin bucket from the columnar batch kernel
   (:class:`perpmargin.batch.BookColumns`, kept in step incrementally with ``sync_account`` for
   the accounts each step's events touched, rebuilt after a funding settlement).
6. **End.** Ledger conservation is checked; metrics (:mod:`perpmargin.stress.metrics`); with
   ``journal`` every command went through :class:`perpmargin.journal.Journal` on SQLite
   (``submit_many`` per step; the store commits in batches, see :class:`_BatchedStore`) and the
   journal is replayed from genesis: both state hashes are in ``metrics["journal"]``.
"""

from __future__ import annotations

import hashlib
import tomllib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from decimal import ROUND_FLOOR, ROUND_HALF_EVEN, Context, Decimal, InvalidOperation, localcontext
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from perpmargin.batch import BookColumns
from perpmargin.commands import (
    BookUpdate,
    Command,
    CreateAccount,
    Deposit,
    Event,
    Fill,
    FundingTick,
    FundInsurance,
    OracleUpdate,
    RegisterLiquidator,
    SetBookDepth,
    SetLeverage,
    SetMarginMode,
)
from perpmargin.engine import Engine
from perpmargin.errors import ConfigError, DataError, InvariantViolation, PerpmarginError
from perpmargin.journal import DelegatingStore, Journal, Record, Snapshot, SqliteJournalStore, replay
from perpmargin.ledger import EXTERNAL, INSURANCE
from perpmargin.liquidation import LiquidationConfig, configure_command
from perpmargin.presets import Venue, list_presets, venue_from_dict
from perpmargin.state import canonical_json
from perpmargin.stress.market import (
    DEFAULT_HALF_LIFE_MS,
    AmmModel,
    BookModel,
    Grid,
    calibrate_depth,
    dec,
    make_model,
)
from perpmargin.stress.metrics import RunFacts, bad_debt_flows, compute_metrics, quantiles
from perpmargin.stress.paths import PricePath
from perpmargin.stress.specs import AccountSpec, StressResult

__all__ = [
    "DEFAULT_FUND_SHARE",
    "MM_ACCOUNT",
    "MM_CAPITAL_MULTIPLE",
    "StressConfig",
    "build_venue",
    "event_log_hash",
    "run_stress",
    "run_stress_accounts",
]

MM_ACCOUNT = "stress-mm"
"""The market maker: counterparty of every population fill."""
MM_CAPITAL_MULTIPLE = 3
"""The market maker's USD capital as a multiple of the population's gross notional at the path's highest price."""
DEFAULT_FUND_SHARE = Decimal("0.01")
"""Default insurance fund: 1 % of the population's gross notional at the first price (Binance's fund was
of the order of 1–2 % of its open interest in 2020)."""
LIQUIDATOR_ACCOUNT = "stress-liquidator"
SOURCES = ("stress-close", "stress-low", "stress-high")
_CTX = Context(prec=28)
"""Fixed decimal context of the runner's market-data arithmetic (independent of the caller's)."""


@dataclass(frozen=True, slots=True)
class StressConfig:
    """Everything a stress run depends on (see the module docstring; decimal knobs are strings).

    ``recovery_half_life_ms`` is the market model's half-life of depth recovery, price
    displacement decay and AMM arbitrage.
    """

    preset: str = "binance-usdm"
    scenario: str | None = "2020-03-12"
    data_paths: tuple[str, ...] = ()
    accounts: int = 2000
    seed: int = 7
    population: str | None = None
    feedback: bool = True
    liquidity: str = "book"
    depth_scale: str = "1"
    mmr_scale: str = "1"
    liquidation_fee: str | None = None
    insurance_fund: str | None = None
    oracle_band: str | None = None
    max_steps: int | None = None
    journal: str | None = None
    paths: Mapping[str, PricePath] | None = None
    recovery_half_life_ms: int = DEFAULT_HALF_LIFE_MS

    def to_dict(self) -> dict[str, str | int | bool | None]:
        """JSON-ready inputs; in-memory ``paths`` are summarised (symbol, rows, step, source, first open time)."""
        out: dict[str, str | int | bool | None] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == "paths":
                if v is None:
                    out["paths"] = None
                else:
                    out["paths"] = canonical_json(
                        {s: [len(p), p.step_ms, p.source, int(p.ts_ms[0])] for s, p in sorted(v.items())}
                    )
            elif f.name == "data_paths":
                out[f.name] = ",".join(v)
            else:
                out[f.name] = v
        return out


# -- venue ---------------------------------------------------------------------------------


def _decimal(text: str | None, name: str, *, positive: bool = True) -> Decimal | None:
    if text is None:
        return None
    try:
        d = Decimal(str(text).strip())
    except InvalidOperation:
        raise ConfigError(f"{name} must be a decimal string", value=text) from None
    if not d.is_finite() or (positive and d <= 0) or d < 0:
        raise ConfigError(f"{name} must be a finite {'positive' if positive else 'non-negative'} decimal", value=text)
    return d


def _preset_data(name: str) -> dict[str, Any]:
    path = Path(name)
    if path.suffix == ".toml" or path.exists():
        if not path.is_file():
            raise ConfigError("preset file not found", path=name)
        text = path.read_text(encoding="utf-8")
    else:
        if name not in list_presets():
            raise ConfigError("no shipped preset has this name", name=name, available=list_presets())
        text = (resources.files("perpmargin") / "presets" / f"{name}.toml").read_text(encoding="utf-8")
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"preset is not valid TOML: {e}", preset=name) from None


def build_venue(cfg: StressConfig) -> Venue:
    """The preset with the sweep overrides applied, validated like any preset.

    Raises :class:`ConfigError` for a bad knob, or an MMR scaled to or above a bracket's
    initial margin rate.
    """
    data = _preset_data(cfg.preset)
    mmr_scale = _decimal(cfg.mmr_scale, "mmr_scale")
    assert mmr_scale is not None
    if mmr_scale != 1:
        for sym, m in data.get("markets", {}).items():
            for row in m.get("brackets", []):
                mmr = Decimal(str(row["mmr"])) * mmr_scale
                lev = Decimal(str(row["max_leverage"]))
                if mmr * lev >= 1:
                    raise ConfigError(
                        "mmr_scale puts a bracket's MMR at or above its initial rate 1/max_leverage",
                        symbol=sym,
                        mmr=str(mmr),
                        max_leverage=str(lev),
                    )
                row["mmr"] = format(mmr.normalize(), "f")
    fee = _decimal(cfg.liquidation_fee, "liquidation_fee", positive=False)
    if fee is not None:
        data.setdefault("venue", {}).setdefault("liquidation", {})["fee"] = format(fee.normalize(), "f")
    band = _decimal(cfg.oracle_band, "oracle_band")
    if band is not None:
        prices = data.setdefault("prices", {})
        for section in ("oracle", "asset_oracle"):
            prices.setdefault(section, {})["max_deviation"] = format(band.normalize(), "f")
        for m in data.get("markets", {}).values():
            if isinstance(m.get("oracle"), dict):
                m["oracle"]["max_deviation"] = format(band.normalize(), "f")
    return venue_from_dict(data, source=cfg.preset)


# -- paths and population ---------------------------------------------------------------------


def _load_paths(cfg: StressConfig) -> dict[str, PricePath]:
    from perpmargin.stress import scenarios

    if cfg.paths is not None:
        paths = dict(cfg.paths)
    elif cfg.data_paths:
        loaded = [scenarios.load_klines(p) for p in cfg.data_paths]
        paths = scenarios.align({p.symbol: p for p in loaded})
    elif cfg.scenario is not None:
        paths = scenarios.load_scenario(cfg.scenario)
    else:
        raise ConfigError("a stress run needs a scenario, data paths or in-memory paths")
    if not paths:
        raise DataError("no price paths")
    steps = {p.step_ms for p in paths.values()}
    lengths = {len(p) for p in paths.values()}
    starts = {int(p.ts_ms[0]) for p in paths.values()}
    if len(steps) != 1 or len(lengths) != 1 or len(starts) != 1:
        raise DataError("price paths must share their time grid (same start, step and length)")
    if cfg.max_steps is not None:
        if cfg.max_steps < 2:
            raise ConfigError("max_steps must be at least 2", max_steps=cfg.max_steps)
        n = min(cfg.max_steps, lengths.pop())
        paths = {s: _truncate(p, n) for s, p in paths.items()}
    return paths


def _truncate(p: PricePath, n: int) -> PricePath:
    if n >= len(p):
        return p
    return PricePath(
        symbol=p.symbol,
        ts_ms=p.ts_ms[:n],
        open=p.open[:n],
        high=p.high[:n],
        low=p.low[:n],
        close=p.close[:n],
        volume=p.volume[:n],
        step_ms=p.step_ms,
        source=p.source,
        meta=dict(p.meta),
    )


def _population(cfg: StressConfig, venue: Venue, paths: Mapping[str, PricePath]) -> list[AccountSpec]:
    """The run's accounts: generated from the default or a TOML spec at the first prices, or loaded from a file."""
    from perpmargin.stress import population as pop

    src = cfg.population
    if src is not None and not src.lower().endswith(".toml"):
        return list(pop.load_population(src, venue))
    prices = {s: dec(float(p.open[0])) for s, p in paths.items()}
    for s, p in paths.items():
        base = venue.markets[s].base
        if base in venue.assets:
            prices.setdefault(base, dec(float(p.open[0])))
    spec = pop.default_population_spec() if src is None else pop.load_population_spec(src)
    steps = len(next(iter(paths.values())))
    return list(pop.generate_population(spec, n=cfg.accounts, venue=venue, prices=prices, seed=cfg.seed, steps=steps))


# -- the engine behind one interface (journaled or not) ---------------------------------------------


JOURNAL_FLUSH_RECORDS = 20_000
"""Records buffered before the stress journal commits (see :class:`_BatchedStore`)."""


class _BatchedStore(DelegatingStore):
    """A :class:`~perpmargin.journal.JournalStore` over SQLite that commits every ``JOURNAL_FLUSH_RECORDS`` records.

    A stress run acknowledges nothing to anyone, so it does not need one fsync per step
    (``synchronous=FULL`` costs ~0.1–0.2 s per commit on this machine's disk): the records,
    their payloads, hashes and chain are exactly those :meth:`Journal.submit_many` produced;
    they reach the file in larger transactions, and all of them before :func:`run_stress`
    replays the journal.
    """

    def __init__(self, inner: SqliteJournalStore) -> None:
        super().__init__(inner)
        self.buffer: list[Record] = []

    def append(self, records: Sequence[Record]) -> None:
        self.buffer.extend(records)
        if len(self.buffer) >= JOURNAL_FLUSH_RECORDS:
            self.flush()

    def flush(self) -> None:
        if self.buffer:
            self.inner.append(self.buffer)
            self.buffer = []

    def read(self, from_seq: int = 1) -> Iterator[Record]:
        self.flush()
        return self.inner.read(from_seq)

    def last_seq(self) -> int:
        return self.buffer[-1].seq if self.buffer else self.inner.last_seq()

    def truncate_after(self, seq: int) -> int:
        self.flush()
        return self.inner.truncate_after(seq)

    def save_snapshot(self, snapshot: Snapshot) -> None:
        self.flush()
        self.inner.save_snapshot(snapshot)

    def close(self) -> None:
        try:
            self.flush()
        finally:
            self.inner.close()


class _Sink:
    """Applies command batches to a bare engine, or through a SQLite journal (``submit_many`` per batch)."""

    def __init__(self, venue: Venue, journal: str | None) -> None:
        self.journal: Journal | None = None
        if journal is not None:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{journal}{suffix}").unlink(missing_ok=True)
            Path(journal).parent.mkdir(parents=True, exist_ok=True)
            self.journal = Journal.from_store(_BatchedStore(SqliteJournalStore(journal)), venue)
            self.engine = self.journal.engine
        else:
            self.engine = Engine.from_venue(venue)

    def run(self, cmds: Sequence[Command]) -> list[list[Event] | PerpmarginError]:
        if self.journal is not None:
            return self.journal.submit_many(cmds)
        out: list[list[Event] | PerpmarginError] = []
        for c in cmds:
            try:
                out.append(self.engine.apply(c))
            except PerpmarginError as e:
                out.append(e)
        return out

    def close(self) -> None:
        if self.journal is not None:
            self.journal.close()


# -- event log ------------------------------------------------------------------------------------


def _check_json(obj: Any, where: str) -> None:
    """Refuse floats (and anything not plain JSON) in an event: the log must hash the same everywhere."""
    if obj is None or isinstance(obj, bool | int | str):
        return
    if isinstance(obj, float):
        raise InvariantViolation("an engine event carries a float", where=where)
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not isinstance(k, str):
                raise InvariantViolation("an engine event has a non-string key", where=where)
            _check_json(v, where)
        return
    if isinstance(obj, list | tuple):
        for v in obj:
            _check_json(v, where)
        return
    raise InvariantViolation(f"an engine event carries a {type(obj).__name__}", where=where)


def event_log_hash(events: Sequence[Mapping[str, Any]]) -> str:
    """SHA-256 of ``canonical_json(list(events))`` (sorted keys, compact, ASCII), computed incrementally."""
    h = hashlib.sha256(b"[")
    for i, ev in enumerate(events):
        if i:
            h.update(b",")
        h.update(canonical_json(ev).encode("ascii"))
    h.update(b"]")
    return h.hexdigest()


# -- the run ----------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Market:
    symbol: str
    path: PricePath
    grid: Grid
    price_decimals: int
    size_decimals: int
    settle_decimals: int
    asset: str | None  # collateral asset following this market's base
    asset_price_decimals: int
    model: BookModel | AmmModel
    impact_notional: Decimal


@dataclass(slots=True)
class _Recorder:
    events: list[dict[str, Any]] = field(default_factory=list)
    rejected: dict[str, int] = field(default_factory=dict)

    def add(self, cmds: Sequence[Command], results: Sequence[list[Event] | PerpmarginError]) -> list[Event]:
        out: list[Event] = []
        for cmd, r in zip(cmds, results, strict=True):
            if isinstance(r, PerpmarginError):
                key = f"{cmd.type_name}:{r.code}"
                self.rejected[key] = self.rejected.get(key, 0) + 1
                continue
            for e in r:
                d = {"seq": e.seq, "ts_ms": e.ts_ms, "kind": e.kind, "data": e.data}
                _check_json(e.data, e.kind)
                self.events.append(d)
                out.append(e)
        return out


def _fmt(d: Decimal, places: int, rounding: str = ROUND_FLOOR) -> str:
    """``d`` rounded to ``places`` (down by default: amounts the runner hands out), at least one quantum."""
    q = Decimal(1).scaleb(-places)
    with localcontext(_CTX):
        v = d.quantize(q, rounding=rounding)
    if v <= 0:
        v = q
    t = format(v, "f")
    return t.rstrip("0").rstrip(".") if "." in t else t


def _tick_str(price: Decimal, mk: _Market) -> str:
    """``price`` half-even to the tick (market data rounding, not money)."""
    with localcontext(_CTX):
        ticks = (price / mk.grid.tick).to_integral_value(ROUND_HALF_EVEN)
        return _fmt(max(ticks, Decimal(1)) * mk.grid.tick, mk.price_decimals)


def _quotes(obs: Decimal, mk: _Market, t: int, ts: int, decimals: int) -> tuple[tuple[str, str, int], ...]:
    """The three sources' quotes: ``obs`` scaled by the candle's close, low and high relative to its close."""
    p = mk.path
    with localcontext(_CTX):
        close = dec(float(p.close[t]))
        lo = obs * dec(float(p.low[t])) / close
        hi = obs * dec(float(p.high[t])) / close
        return tuple((s, _fmt(x, decimals, ROUND_HALF_EVEN), ts) for s, x in zip(SOURCES, (obs, lo, hi), strict=True))


def _price_commands(mk: _Market, t: int, ts: int, obs: Decimal) -> list[Command]:
    """SetBookDepth, collateral and market OracleUpdate, BookUpdate for one market at step ``t``."""
    px = _tick_str(obs, mk)
    mid = Decimal(px)
    bids, asks = mk.model.book(mid, mk.grid)
    cmds: list[Command] = [SetBookDepth(ts_ms=ts, symbol=mk.symbol, bids=bids, asks=asks)]
    if mk.asset is not None:
        cmds.append(OracleUpdate(ts_ms=ts, asset=mk.asset, quotes=_quotes(obs, mk, t, ts, mk.asset_price_decimals)))
    cmds.append(OracleUpdate(ts_ms=ts, symbol=mk.symbol, quotes=_quotes(obs, mk, t, ts, mk.price_decimals)))
    ib, ia = mk.model.impact_prices(mid, mk.impact_notional)
    cmds.append(
        BookUpdate(
            ts_ms=ts,
            symbol=mk.symbol,
            best_bid=bids[0][0] if bids else None,
            best_ask=asks[0][0] if asks else None,
            last=px,
            impact_bid=_fmt(ib, mk.price_decimals + 4),
            impact_ask=_fmt(ia, mk.price_decimals + 4),
        )
    )
    return cmds


def _spec_commands(spec: AccountSpec, ts: int) -> list[Command]:
    cmds: list[Command] = [CreateAccount(ts_ms=ts, account_id=spec.account_id, position_mode=spec.position_mode)]
    for asset, amount in spec.deposits:
        cmds.append(Deposit(ts_ms=ts, account_id=spec.account_id, asset=asset, amount=amount))
    return cmds


def _position_commands(
    spec: AccountSpec, pos_index: int, ts: int, price: str, done: set[tuple[str, str, str]]
) -> list[Command]:
    """SetMarginMode / SetLeverage (once per account and symbol and value) and the fill against the market maker."""
    p = spec.positions[pos_index]
    aid = spec.account_id
    cmds: list[Command] = []
    if p.margin_mode == "isolated" and (aid, p.symbol, "mode") not in done:
        done.add((aid, p.symbol, "mode"))
        cmds.append(SetMarginMode(ts_ms=ts, account_id=aid, symbol=p.symbol, mode="isolated"))
    if (aid, p.symbol, p.leverage) not in done:
        done.add((aid, p.symbol, p.leverage))
        cmds.append(SetLeverage(ts_ms=ts, account_id=aid, symbol=p.symbol, leverage=p.leverage))
    long = p.side == "long"
    cmds.append(
        Fill(
            ts_ms=ts,
            symbol=p.symbol,
            price=price,
            size=p.size,
            buyer=aid if long else MM_ACCOUNT,
            seller=MM_ACCOUNT if long else aid,
            aggressor="buy" if long else "sell",
            buyer_leg=p.leg if long else "BOTH",
            seller_leg="BOTH" if long else p.leg,
        )
    )
    return cmds


def _gross_notional(accounts: Sequence[AccountSpec], prices: Mapping[str, Decimal]) -> Decimal:
    total = Decimal(0)
    for a in accounts:
        for p in a.positions:
            if p.symbol not in prices:
                raise DataError("a population position trades a symbol without a price path", symbol=p.symbol)
            total += Decimal(p.size) * prices[p.symbol]
    return total


def _touched(events: Sequence[Event]) -> tuple[set[str], bool]:
    """Accounts whose balances or positions the events may have changed; ``True`` = resync everyone."""
    ids: set[str] = set()
    everyone = False
    for e in events:
        d = e.data
        if e.kind == "FundingSettled" or e.kind.startswith("Socializ") or e.kind == "PositionSettled":
            everyone = True
        for key in ("account_id", "counterparty", "liquidator"):
            v = d.get(key)
            if isinstance(v, str) and not v.startswith("@"):
                ids.add(v)
        b = d.get("counterparty_bucket")
        if isinstance(b, str):
            ids.add(b.split("#", 1)[0])
    return ids, everyone


class _RiskTracker:
    """Margin-ratio quantiles and per-account drawdowns from the batch kernel, kept in step incrementally.

    The series describe; they decide nothing (the engine decides every margin call and
    liquidation exactly). So the kernel runs as a *screen only* (no state attached): the
    values are float64 within the kernel's error bound. Multi-asset cross accounts (BTC, ETH
    or USDC collateral on a USDT venue) have no screened equity — the kernel always sends them
    to the exact path, which per account costs what the naive re-mark costs — so they are left
    out of the margin-ratio quantiles and the drawdowns (their isolated buckets are kept).
    """

    def __init__(self, engine: Engine, exclude: set[str]) -> None:
        self.engine = engine
        self.book = self._build()
        self.ids = list(self.book.account_ids)
        self.keep = np.array([a not in exclude for a in self.ids], dtype=np.bool_)
        n = len(self.ids)
        self.peak = np.full(n, np.nan)
        self.worst = np.zeros(n)

    def _build(self) -> BookColumns:
        book = BookColumns.from_state(self.engine.state)
        book.state = None  # screen only: no exact re-decision (see the class docstring)
        return book

    def sync(self, ids: set[str], everyone: bool) -> None:
        st = self.engine.state
        if everyone:
            self.book = self._build()
            if list(self.book.account_ids) != self.ids:
                raise InvariantViolation("the batch book's accounts changed during a run")
            return
        for aid in sorted(ids):
            if aid in st.accounts:
                self.book.sync_account(st, aid)

    def measure(self) -> tuple[float, float, float]:
        st = self.engine.state
        risk = self.book.compute(st.mark_prices)
        na = len(self.ids)
        cross = risk.margin_ratio[:na][(risk.cross_mm[:na] > 0) & self.keep]
        live_iso = risk.live & risk.isolated
        iso = risk.iso_margin_ratio[live_iso]
        ratios = np.concatenate([cross, iso])
        ratios = ratios[~np.isnan(ratios)]
        q = quantiles(ratios, (0.5, 0.9, 0.99))
        # account equity = cross equity + its isolated buckets' equity (valuation ≈ settle quanta)
        n = self.book.n_slots
        acct = self.book._acct[:n].astype(np.intp)
        iso_eq = np.where(live_iso[:n], np.nan_to_num(risk.iso_equity[:n]), 0.0)
        eq = risk.equity[:na] + np.bincount(acct, iso_eq, minlength=na)[:na]
        with np.errstate(invalid="ignore"):
            self.peak = np.fmax(self.peak, eq)
            dd = np.where(self.peak > 0, (self.peak - eq) / self.peak, 0.0)
        self.worst = np.fmax(self.worst, np.nan_to_num(dd, nan=0.0))
        return q[0], q[1], q[2]

    def drawdowns(self) -> npt.NDArray[np.float64]:
        """Worst drawdown ``(peak − equity) / peak`` per population account with a screened equity."""
        mask = self.keep & ~np.isnan(self.peak)
        return np.asarray(self.worst[mask], dtype=np.float64)


def run_stress(cfg: StressConfig, *, progress: Callable[[int, int], None] | None = None) -> StressResult:
    """Run one stress configuration (see the module docstring); deterministic in ``cfg``.

    Raises :class:`ConfigError` / :class:`DataError` for bad inputs (before anything runs) and
    :class:`InvariantViolation` if the engine's books stop balancing (a bug).
    """
    if cfg.accounts < 1 and cfg.population is None:
        raise ConfigError("accounts must be at least 1", accounts=cfg.accounts)
    venue = build_venue(cfg)
    paths = _load_paths(cfg)
    accounts = _population(cfg, venue, paths)
    return run_stress_accounts(cfg, accounts, progress=progress, venue=venue, paths=paths)


def run_stress_accounts(
    cfg: StressConfig,
    accounts: Sequence[AccountSpec],
    *,
    progress: Callable[[int, int], None] | None = None,
    venue: Venue | None = None,
    paths: Mapping[str, PricePath] | None = None,
    on_step: Callable[[int, Engine], None] | None = None,
) -> StressResult:
    """:func:`run_stress` with an explicit population (``cfg.accounts``/``population``/``seed`` unused).

    ``on_step(t, engine)`` is called after step ``t`` has been recorded (benchmarks and debugging;
    it must not change the engine).
    """
    venue = build_venue(cfg) if venue is None else venue
    paths = _load_paths(cfg) if paths is None else dict(paths)
    if cfg.liquidity not in ("book", "amm"):
        raise ConfigError("liquidity must be 'book' or 'amm'", liquidity=cfg.liquidity)
    if cfg.recovery_half_life_ms <= 0:
        raise ConfigError("recovery_half_life_ms must be positive")
    depth_scale = _decimal(cfg.depth_scale, "depth_scale")
    assert depth_scale is not None
    ids = [a.account_id for a in accounts]
    if len(set(ids)) != len(ids) or MM_ACCOUNT in ids or LIQUIDATOR_ACCOUNT in ids:
        raise DataError("account ids must be unique and must not use the runner's reserved ids")
    for sym in paths:
        if sym not in venue.markets:
            raise DataError("a price path's symbol is not a market of the preset", symbol=sym)
    symbols = sorted(paths)
    first = next(iter(paths.values()))
    n_steps, step_ms = len(first), first.step_ms
    t0 = int(first.ts_ms[0])
    open0 = {s: dec(float(paths[s].open[0])) for s in symbols}
    highest = {s: dec(float(np.max(paths[s].high))) for s in symbols}

    markets: dict[str, _Market] = {}
    sink = _Sink(venue, cfg.journal)
    engine = sink.engine
    for s in symbols:
        m = venue.markets[s]
        settle = venue.assets[m.settle_asset]
        asset = m.base if m.base in venue.assets and m.base != venue.rules.valuation_asset else None
        depth = calibrate_depth(paths[s], scale=depth_scale)
        imp_q = engine.prices.impact_notional_q(m)
        markets[s] = _Market(
            symbol=s,
            path=paths[s],
            grid=Grid(Decimal(m.tick_px).scaleb(-m.price_decimals), Decimal(m.step_sz).scaleb(-m.size_decimals)),
            price_decimals=m.price_decimals,
            size_decimals=m.size_decimals,
            settle_decimals=settle.decimals,
            asset=asset,
            asset_price_decimals=venue.assets[asset].price_decimals if asset else 0,
            model=make_model(
                cfg.liquidity, depth, open0[s], half_life_ms=cfg.recovery_half_life_ms, feedback=cfg.feedback
            ),
            impact_notional=Decimal(imp_q).scaleb(-settle.decimals),
        )
    settle_asset = venue.markets[symbols[0]].settle_asset
    settle_dec = venue.assets[settle_asset].decimals
    gross0 = _gross_notional(accounts, open0)
    gross_hi = _gross_notional(accounts, highest)
    fund = _decimal(cfg.insurance_fund, "insurance_fund", positive=False)
    if fund is None:
        fund = gross0 * DEFAULT_FUND_SHARE
    liq_cfg = LiquidationConfig.from_params(venue.liquidation)

    rec = _Recorder()
    try:
        setup: list[Command] = []
        for s in symbols:
            setup += _price_commands(markets[s], 0, t0, open0[s])
        mm_capital = max(gross_hi * MM_CAPITAL_MULTIPLE, Decimal(1_000_000))
        setup += [
            CreateAccount(ts_ms=t0, account_id=MM_ACCOUNT),
            Deposit(ts_ms=t0, account_id=MM_ACCOUNT, asset=settle_asset, amount=_fmt(mm_capital, settle_dec)),
        ]
        setup += [SetLeverage(ts_ms=t0, account_id=MM_ACCOUNT, symbol=s, leverage="1") for s in symbols]
        first_px = {s: _tick_str(open0[s], markets[s]) for s in symbols}
        later: dict[int, list[tuple[AccountSpec, int]]] = {}
        done: set[tuple[str, str, str]] = set()
        for a in accounts:
            setup += _spec_commands(a, t0)
            for i, p in enumerate(a.positions):
                if p.entry_step < 0:
                    raise DataError("entry_step must be >= 0", account_id=a.account_id)
                if p.entry_step == 0:
                    setup += _position_commands(a, i, t0, first_px[p.symbol], done)
                elif p.entry_step < n_steps:
                    later.setdefault(p.entry_step, []).append((a, i))
        # Liquidation is switched on once the book is open (nothing is below its initial margin
        # yet): the desk indexes every bucket once instead of re-keying after every set-up fill.
        setup.append(configure_command(venue, ts_ms=t0))
        if fund > 0:
            setup.append(FundInsurance(ts_ms=t0, asset=settle_asset, amount=_fmt(fund, settle_dec)))
        if liq_cfg.backstop_equity_r > 0 or liq_cfg.auction:
            cap = max(gross_hi, Decimal(1))
            setup += [
                CreateAccount(ts_ms=t0, account_id=LIQUIDATOR_ACCOUNT),
                Deposit(ts_ms=t0, account_id=LIQUIDATOR_ACCOUNT, asset=settle_asset, amount=_fmt(cap, settle_dec)),
                RegisterLiquidator(
                    ts_ms=t0,
                    account_id=LIQUIDATOR_ACCOUNT,
                    capacity=_fmt(cap, 0),
                    backstop=liq_cfg.backstop_equity_r > 0,
                ),
            ]
        rec.add(setup, sink.run(setup))
        for k in (f"CreateAccount:{c}" for c in ("invalid_input",)):
            if rec.rejected.get(k):
                raise DataError("the population has invalid account ids", rejected=rec.rejected[k])
        if MM_ACCOUNT not in engine.state.accounts:
            raise InvariantViolation("the market maker could not be created")

        setup_seq = engine.state.seq
        tracker = _RiskTracker(engine, {MM_ACCOUNT, LIQUIDATOR_ACCOUNT})
        series: dict[str, Any] = {"ts_ms": np.zeros(n_steps, dtype=np.int64)}
        for s in symbols:
            for col in ("price", "observed", "mark", "open_interest", "depth_bid"):
                series[f"{col}.{s}"] = np.zeros(n_steps, dtype=np.int64 if col == "open_interest" else np.float64)
        for col in ("insurance_fund", "liq_notional", "bad_debt", "liquidations"):
            series[col] = np.zeros(n_steps, dtype=np.int64)
        for col in ("mr_p50", "mr_p90", "mr_p99"):
            series[col] = np.zeros(n_steps, dtype=np.float64)

        interval = min(venue.price_rules.market(s).funding.interval_ms for s in symbols)
        open_debt: dict[str, int] = {}
        prev_ts = t0
        for t in range(n_steps):
            ts = int(first.ts_ms[t]) + step_ms
            cmds: list[Command] = [
                FundingTick(ts_ms=b) for b in range(prev_ts - prev_ts % interval + interval, ts, interval)
            ]
            for s in symbols:
                mk = markets[s]
                data_px = dec(float(mk.path.close[t]))
                mk.model.advance(ts - prev_ts, data_px)
                obs = mk.model.observe(data_px)
                cmds += _price_commands(mk, t, ts, obs)
            for a, i in later.get(t, ()):
                sym = a.positions[i].symbol
                obs_px = _tick_str(markets[sym].model.observe(dec(float(markets[sym].path.close[t]))), markets[sym])
                cmds += _position_commands(a, i, ts, obs_px, done)
            evs = rec.add(cmds, sink.run(cmds))
            prev_ts = ts
            liq_q = n_liq = 0
            for e in evs:
                d = e.data
                if e.kind == "LiquidationFill":
                    liq_q += int(d["notional_q"])
                    if d.get("counterparty") == EXTERNAL:
                        mk = markets[d["symbol"]]
                        base = Decimal(int(d["size_sz"])).scaleb(-mk.size_decimals)
                        quote = Decimal(int(d["notional_q"])).scaleb(-mk.settle_decimals)
                        mk.model.consume("sell" if d["side"] == "sell" else "buy", base, quote)
                elif e.kind == "LiquidationStarted":
                    n_liq += 1
            bad_q = sum(
                f[1] for f in bad_debt_flows(({"kind": e.kind, "data": e.data} for e in evs), open_debt)
            )
            ids_t, everyone = _touched(evs)
            tracker.sync(ids_t, everyone)
            p50, p90, p99 = tracker.measure()
            st = engine.state
            series["ts_ms"][t] = ts
            for s in symbols:
                mk = markets[s]
                series[f"price.{s}"][t] = float(mk.path.close[t])
                series[f"observed.{s}"][t] = float(mk.model.observe(dec(float(mk.path.close[t]))))
                series[f"mark.{s}"][t] = st.mark_prices.get(s, 0) / 10**mk.price_decimals
                series[f"open_interest.{s}"][t] = st.long_oi_sz.get(s, 0)
                model = mk.model
                series[f"depth_bid.{s}"][t] = float(model.bid_depth) if isinstance(model, BookModel) else float(model.y)
            series["insurance_fund"][t] = engine.liquidation.fund_equity_q(INSURANCE)
            series["liq_notional"][t] = liq_q
            series["bad_debt"][t] = bad_q
            series["liquidations"][t] = n_liq
            series["mr_p50"][t], series["mr_p90"][t], series["mr_p99"][t] = p50, p90, p99
            if on_step is not None:
                on_step(t, engine)
            if progress is not None:
                progress(t + 1, n_steps)

        engine.state.ledger.check_conservation()
        live_hash = engine.state_hash()
        facts = RunFacts.from_engine(
            engine,
            n_accounts=len(accounts),
            excluded=(MM_ACCOUNT, LIQUIDATOR_ACCOUNT),
            initial_fund_q=int((fund * 10**settle_dec).to_integral_value(ROUND_FLOOR)),
            fund_asset=settle_asset,
            drawdowns=tracker.drawdowns(),
            rejected=rec.rejected,
        )
    finally:
        sink.close()
    metrics = compute_metrics(rec.events, series, facts)
    if cfg.journal is not None:
        replayed = replay(cfg.journal, venue).state_hash()
        metrics["journal"] = {
            "path": cfg.journal,
            "state_hash": live_hash,
            "replayed_state_hash": replayed,
            "identical": replayed == live_hash,
        }
    metrics["steps"] = n_steps
    metrics["setup_seq"] = setup_seq
    metrics["calibrated_depth_1pct"] = {
        s: str(calibrate_depth(paths[s], scale=depth_scale).quantize(Decimal(1))) for s in symbols
    }
    metrics["market_maker_capital"] = _fmt(mm_capital, 2)
    metrics["insurance_fund_initial"] = _fmt(fund, settle_dec) if fund > 0 else "0"
    return StressResult(
        metrics=metrics,
        series=series,
        events=rec.events,
        event_log_hash=event_log_hash(rec.events),
        state_hash=live_hash,
        config=dict(cfg.to_dict()),
    )
