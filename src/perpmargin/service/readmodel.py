"""Read model: what the API's GET endpoints serve, built by the sequencer, read without any lock.

After each group commit the sequencer (the only thread touching the engine) recomputes the
views the batch may have changed — accounts named by its events, every account holding a
position when a price moved, the markets it touched, the insurance fund — and publishes
them by *replacing* dictionary entries with new immutable (never again mutated) dicts.
History lists only grow. Readers on the event loop therefore never see a half-written view,
never wait for the writer and never make it wait (C26).

Amounts are decimal strings: cross-bucket amounts in the valuation asset, isolated ones in
the settle asset, exact (``from_quanta``); a margin ratio ``MM / equity`` is rounded **up**
to 1e-9 (the riskier side); entry prices are rounded half-even to 1e-12 for display.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from decimal import Decimal
from fractions import Fraction
from typing import Any

from perpmargin.commands import Event
from perpmargin.engine import Engine
from perpmargin.errors import PerpmarginError
from perpmargin.ledger import INSURANCE
from perpmargin.numbers import Rounding, fraction_to_decimal, from_quanta
from perpmargin.risk import BucketRisk

__all__ = ["CATEGORIES", "ReadModel", "event_accounts", "event_category", "event_json", "event_symbols", "jsonable"]

CATEGORIES: dict[str, frozenset[str]] = {
    "fills": frozenset({"FillApplied", "LiquidationFill", "AdlFill", "AuctionBidFilled", "PositionSettled"}),
    "funding": frozenset({"FundingSettled", "FundingRateSet", "FundingSkipped"}),
    "liquidations": frozenset(
        {
            "MarginCall",
            "MarginCallCleared",
            "LiquidationStarted",
            "LiquidationFill",
            "LiquidationEnded",
            "LiquidationFee",
            "BadDebt",
            "AuctionStarted",
            "AuctionEnded",
            "SocializedLoss",
        }
    ),
    "adl": frozenset({"AdlFill", "AdlSummary"}),
    "transfers": frozenset({"Deposited", "Withdrawn", "MarginTransferred"}),
}
"""History categories and the event kinds each one lists."""

_PRICE_KINDS = frozenset(
    {
        "MarkPriceSet",
        "MarkUpdated",
        "IndexPriceSet",
        "IndexUpdated",
        "FundingSettled",
        "FundingIndexUpdated",
        "SettlementPriceSet",
        "MarketDelisted",
    }
)
_MARKET_KINDS = frozenset(
    {
        "MarkPriceSet",
        "MarkUpdated",
        "IndexPriceSet",
        "IndexUpdated",
        "FundingRateSet",
        "FundingSkipped",
        "FundingIndexUpdated",
        "MarketHalted",
        "MarketResumed",
        "MarketDelisted",
        "SettlementPriceSet",
        "PriceBandsSet",
        "PriceBandsDisabled",
        "OracleDegraded",
        "OracleRecovered",
        "MarkDivergence",
        "MarkDivergenceCleared",
        "Alarm",
    }
)
_ACCOUNT_FIELDS = ("account_id", "buyer", "seller", "counterparty", "liquidator")


def event_accounts(ev: Event) -> set[str]:
    """User accounts an event concerns (ids in ``account_id``/``buyer``/``seller``/``counterparty``
    fields or the account part of a ``bucket``); system holders (``@…``) excluded."""
    out: set[str] = set()
    for f in _ACCOUNT_FIELDS:
        v = ev.data.get(f)
        if isinstance(v, str) and v and not v.startswith("@"):
            out.add(v.split("#", 1)[0])
    b = ev.data.get("bucket")
    if isinstance(b, str) and b and not b.startswith("@"):
        out.add(b.split("#", 1)[0])
    return out


def event_symbols(ev: Event) -> set[str]:
    """Markets a market-stream event concerns (``symbol``, or ``target`` of a market index update;
    index events of a collateral asset give no market)."""
    if ev.kind not in _MARKET_KINDS:
        return set()
    s = ev.data.get("symbol")
    if s is None and ev.data.get("kind") == "market":
        s = ev.data.get("target")
    return {s} if isinstance(s, str) else set()


def jsonable(v: Any) -> Any:
    """Plain JSON data (dict keys as strings, tuples and sets as lists, anything else exotic as str)."""
    if isinstance(v, dict):
        return {str(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, list | tuple | set | frozenset):
        return [jsonable(x) for x in v]
    if v is None or isinstance(v, bool | int | str):
        return v
    return str(v)


def event_json(ev: Event) -> dict[str, Any]:
    """JSON-ready event: ``kind``, ``seq``, ``ts_ms`` and its fields (a field named ``kind``, as in
    ``IndexUpdated``, is renamed ``target_kind`` so that it cannot hide the event's kind)."""
    data = dict(ev.data)
    if "kind" in data:
        data["target_kind"] = data.pop("kind")
    out: dict[str, Any] = jsonable({**data, "kind": ev.kind, "seq": ev.seq, "ts_ms": ev.ts_ms})
    return out


def event_category(ev: Event) -> list[str]:
    """History categories of an event."""
    return [c for c, kinds in CATEGORIES.items() if ev.kind in kinds]


def _ratio(b: BucketRisk) -> str | None:
    r = b.margin_ratio
    return None if r is None else format(fraction_to_decimal(r, 9, Rounding.CEIL), "f")


def _fmt(x: int | Fraction, decimals: int) -> str:
    """Quanta as a decimal string; an exact fraction of quanta rounds down to a quantum (display)."""
    if isinstance(x, Fraction):
        return format(fraction_to_decimal(x / 10**decimals, decimals, Rounding.FLOOR), "f")
    return format(from_quanta(x, decimals), "f")


def _num(d: Decimal) -> str:
    return format(d, "f")


class ReadModel:
    """Published views (see the module docstring). Written by one thread, read by any."""

    def __init__(self) -> None:
        self.accounts: dict[str, dict[str, Any]] = {}
        self.markets: dict[str, dict[str, Any]] = {}
        self.insurance: dict[str, Any] = {"balances": {}, "seq": 0}
        self.history: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self.seq = 0
        self.state_hash = ""
        self.venue = ""
        self.presets: list[str] = []
        self.dirty: set[str] = set()
        """Accounts whose published liquidation prices are not recomputed yet (see :meth:`publish`)."""
        self.liq_cache: dict[str, dict[tuple[str, str], str | None]] = {}

    # -- writing (sequencer thread) --------------------------------------------------------------

    def record_events(self, events: Iterable[Event]) -> tuple[set[str], set[str], bool]:
        """Append events to the histories; return (accounts touched, markets touched, prices moved)."""
        accounts: set[str] = set()
        symbols: set[str] = set()
        moved = False
        for ev in events:
            acc = event_accounts(ev)
            accounts |= acc
            symbols |= event_symbols(ev)
            s = ev.data.get("symbol")
            if isinstance(s, str):
                symbols.add(s)
            if ev.kind in _PRICE_KINDS:
                moved = True
            cats = event_category(ev)
            if cats and acc:
                item = event_json(ev)
                for a in acc:
                    for c in cats:
                        self.history.setdefault((a, c), []).append(item)
        return accounts, symbols, moved

    def publish(
        self,
        engine: Engine,
        accounts: set[str],
        symbols: set[str],
        moved: bool,
        *,
        full: bool = False,
        touched: set[str] | None = None,
    ) -> None:
        """Recompute the views a batch may have changed and publish them.

        Liquidation prices (an exact search, the costliest figure) go stale for the
        accounts the batch's events name (``touched``, default ``accounts``) and, after a price
        move, for accounts whose liquidation price depends on more than their own position's
        mark (several positions, or collateral other than the valuation asset). Those accounts
        are marked *dirty* and their views say ``liquidation_price_fresh: false`` until the
        first read of the account has the sequencer recompute them (:meth:`refresh`, once per
        change, between batches), so the write path never pays for a figure nobody reads.
        """
        st = engine.state
        named = set(accounts if touched is None else touched)
        if full or moved:
            users = {a for a, acc in st.accounts.items() if not a.startswith("@") and (full or acc.positions)}
            accounts = accounts | users
            symbols = symbols | set(st.markets)
            if full:
                named |= users
            else:
                vasset = st.rules.valuation_asset
                for a in users:
                    acc = st.accounts[a]
                    if len(acc.positions) > 1 or any(x != vasset for x in st.ledger.holder_balances(a)):
                        named.add(a)
        for a in named:
            if a in st.accounts and not a.startswith("@") and st.accounts[a].positions:
                self.dirty.add(a)
            else:
                self.liq_cache.pop(a, None)
        for a in sorted(accounts):
            if a in st.accounts and not a.startswith("@"):
                self.accounts[a] = self.account_view(engine, a)
        for s in sorted(symbols):
            if s in st.markets:
                self.markets[s] = self.market_view(engine, s)
        self.insurance = self.insurance_view(engine)
        self.seq = st.seq
        self.state_hash = ""  # computed on demand by the sequencer (costly); see Sequencer.state_hash

    def refresh(self, engine: Engine, account_id: str) -> dict[str, Any] | None:
        """Recompute a dirty account's liquidation prices and publish its view (sequencer thread)."""
        st = engine.state
        if account_id not in st.accounts:
            self.dirty.discard(account_id)
            return None
        if account_id in self.dirty:
            cache: dict[tuple[str, str], str | None] = {}
            for (symbol, leg), pos in sorted(
                st.accounts[account_id].positions.items(), key=lambda kv: (kv[0][0], kv[0][1].value)
            ):
                if pos.size_sz:
                    try:
                        lp = engine.liquidation_price(account_id, symbol, leg.value)
                    except PerpmarginError:
                        lp = None
                    cache[(symbol, leg.value)] = None if lp is None else _num(lp)
            self.liq_cache[account_id] = cache
            self.dirty.discard(account_id)
            self.accounts[account_id] = self.account_view(engine, account_id)
        return self.accounts.get(account_id)

    def account_view(self, engine: Engine, account_id: str) -> dict[str, Any]:
        """Balances, buckets, positions (with liquidation price and ADL quintile) of one account."""
        st = engine.state
        acc = st.accounts[account_id]
        risk = engine.risk(account_id)
        vdec = st.rules.valuation_decimals
        balances = {
            asset: _fmt(q, st.assets[asset].decimals) for asset, q in st.ledger.holder_balances(account_id).items()
        }

        def bucket(b: BucketRisk, dec: int) -> dict[str, Any]:
            return {
                "holder": b.holder,
                "asset": b.asset,
                "equity": _fmt(b.equity_q, dec),
                "initial_margin": _fmt(b.im_q, dec),
                "maintenance_margin": _fmt(b.mm_q, dec),
                "unrealized_pnl": _fmt(b.upnl_q, dec),
                "notional": _fmt(b.notional_q, dec),
                "margin_ratio": _ratio(b),
                "liquidatable": b.is_liquidatable,
            }

        positions: list[dict[str, Any]] = []
        for b in (risk.cross, *risk.isolated):
            for p in b.positions:
                m = st.markets[p.symbol]
                sdec = st.assets[m.settle_asset].decimals
                fresh = account_id not in self.dirty
                lp = self.liq_cache.get(account_id, {}).get((p.symbol, p.leg)) if fresh else None
                adl: int | None
                try:
                    ind = engine.liquidation.adl_quintile(account_id, p.symbol, p.leg)
                    adl = None if ind is None else ind.quintile
                except PerpmarginError:
                    adl = None
                pos = acc.position(p.symbol, _leg(p.leg))
                positions.append(
                    {
                        "symbol": p.symbol,
                        "leg": p.leg,
                        "size": _fmt(p.size_sz, m.size_decimals),
                        "entry_price": None
                        if p.entry_price is None
                        else format(fraction_to_decimal(p.entry_price, 12, Rounding.HALF_EVEN), "f"),
                        "mark_price": _fmt(p.mark_px, m.price_decimals),
                        "notional": _fmt(p.notional_q, sdec),
                        "unrealized_pnl": _fmt(p.upnl_q, sdec),
                        "initial_margin": _fmt(p.im_q, sdec),
                        "maintenance_margin": _fmt(p.mm_q, sdec),
                        "margin_mode": p.margin_mode.value,
                        "leverage": None
                        if pos is None
                        else _num(Decimal(pos.leverage.numerator) / pos.leverage.denominator),
                        "liquidation_price": lp,
                        "liquidation_price_fresh": fresh,
                        "adl_quintile": adl,
                    }
                )
        return {
            "account_id": account_id,
            "position_mode": acc.position_mode.value,
            "balances": balances,
            "cross": bucket(risk.cross, vdec),
            "isolated": [bucket(b, st.assets[b.asset].decimals) for b in risk.isolated],
            "positions": positions,
            "liquidatable": risk.is_liquidatable,
            "seq": st.seq,
        }

    def market_view(self, engine: Engine, symbol: str) -> dict[str, Any]:
        """Index, mark, funding, status of one market."""
        st = engine.state
        m = st.markets[symbol]
        mps = st.prices.markets.get(symbol)
        mark = st.mark_prices.get(symbol)
        index = engine.prices.index_price(symbol)
        rate = None if mps is None or mps.last_rate_r is None else _num(from_quanta(mps.last_rate_r, 9))
        status = engine.prices.market_status(symbol).value
        return {
            "symbol": symbol,
            "settle_asset": m.settle_asset,
            "mark_price": None if mark is None else _num(from_quanta(mark, m.price_decimals)),
            "index_price": None if index is None else _num(from_quanta(index, m.price_decimals)),
            "funding_rate": rate,
            "status": status,
            "halted": status != "open",
            "status_reason": "" if mps is None else mps.status_reason,
            "status_actor": "" if mps is None else mps.status_actor,
            "validity": engine.prices.price_validity(symbol).value,
            "seq": st.seq,
        }

    def insurance_view(self, engine: Engine) -> dict[str, Any]:
        """Balances of every insurance fund holder (``@insurance``, per-market funds) by asset."""
        st = engine.state
        out: dict[str, dict[str, str]] = {}
        for holder in sorted(st.ledger.assets_of):
            if holder == INSURANCE or holder.startswith(INSURANCE + "#"):
                out[holder] = {a: _fmt(q, st.assets[a].decimals) for a, q in st.ledger.holder_balances(holder).items()}
        return {"funds": out, "seq": st.seq}

    # -- reading (any thread) --------------------------------------------------------------------

    def page(
        self, account_id: str, category: str, cursor: int, limit: int
    ) -> tuple[Sequence[dict[str, Any]], int | None]:
        """Items ``[cursor, cursor + limit)`` of a history and the next cursor (None at the end)."""
        items = self.history.get((account_id, category), [])
        n = len(items)  # a list only grows: this prefix is stable
        chunk = items[cursor : min(cursor + limit, n)]
        nxt = cursor + len(chunk)
        return chunk, (nxt if nxt < n else None)


def _leg(value: str) -> Any:
    from perpmargin.state import Leg

    return Leg(value)
