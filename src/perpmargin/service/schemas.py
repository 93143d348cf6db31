"""Request and response bodies of the HTTP API (pydantic, strict: no coercion, no extra fields).

Amounts, prices, sizes and leverages are **decimal strings** (``"1000.5"``); a JSON number is
refused with 422 ``invalid_number`` so that no value ever passes through a binary float.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "DECIMAL_PATTERN",
    "AccountCreate",
    "AccountView",
    "AmountBody",
    "BucketView",
    "CommandResult",
    "Dec",
    "ErrorBody",
    "ErrorInfo",
    "EventOut",
    "FillIn",
    "FillItemResult",
    "FillsBody",
    "FillsResult",
    "HaltBody",
    "HealthOut",
    "HistoryPage",
    "IndexPriceBody",
    "InsuranceView",
    "KeyCreate",
    "KeyCreated",
    "LeverageBody",
    "LiquidationConfigBody",
    "MarginModeBody",
    "MarketInfo",
    "MarketView",
    "OperatorBody",
    "OracleBody",
    "OrderCheckBody",
    "OrderCheckOut",
    "PositionModeBody",
    "PositionView",
    "PresetList",
    "PriceBandsBody",
    "PriceBody",
    "SettlementBody",
    "StateOut",
    "TransferBody",
]

DECIMAL_PATTERN = r"^-?[0-9]{1,30}(\.[0-9]{1,30})?$"
Dec = Annotated[str, Field(pattern=DECIMAL_PATTERN, max_length=62, examples=["1000.5"])]
PosDec = Annotated[str, Field(pattern=r"^[0-9]{1,30}(\.[0-9]{1,30})?$", max_length=61, examples=["0.5"])]
Ident = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:-]{1,64}$", examples=["alice"])]
Symbol = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,32}$", examples=["BTCUSDT"])]
Text = Annotated[str, Field(min_length=1, max_length=500)]
TsMs = Annotated[int, Field(ge=0, le=10**15)]


class _In(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


# -- errors -----------------------------------------------------------------------------------


class ErrorInfo(_Out):
    """A stable ``code`` (snake_case), a readable ``message`` and the values that explain it."""

    code: str
    message: str
    details: dict[str, Any] = Field(default_factory=dict)


class ErrorBody(_Out):
    """Every error response: ``{"error": {...}}``."""

    error: ErrorInfo


# -- requests ---------------------------------------------------------------------------------


class AccountCreate(_In):
    account_id: Ident
    position_mode: Literal["one_way", "hedge"] = "one_way"


class AmountBody(_In):
    asset: Symbol
    amount: PosDec


class TransferBody(_In):
    symbol: Symbol
    amount: Dec = Field(description="> 0 into the isolated position, < 0 out of it")
    leg: Literal["BOTH", "LONG", "SHORT"] = "BOTH"


class LeverageBody(_In):
    symbol: Symbol
    leverage: PosDec


class MarginModeBody(_In):
    symbol: Symbol
    mode: Literal["cross", "isolated"]


class PositionModeBody(_In):
    mode: Literal["one_way", "hedge"]


class OrderCheckBody(_In):
    symbol: Symbol
    side: Literal["buy", "sell"]
    size: PosDec
    price: PosDec
    reduce_only: bool = False
    leg: Literal["BOTH", "LONG", "SHORT"] = "BOTH"


class FillIn(_In):
    symbol: Symbol
    price: PosDec
    size: PosDec
    buyer: Ident | None = None
    seller: Ident | None = None
    aggressor: Literal["buy", "sell"] = "buy"
    buyer_leg: Literal["BOTH", "LONG", "SHORT"] = "BOTH"
    seller_leg: Literal["BOTH", "LONG", "SHORT"] = "BOTH"
    buyer_reduce_only: bool = False
    seller_reduce_only: bool = False
    trade_id: Annotated[str, Field(max_length=64)] = ""


class FillsBody(_In):
    fills: list[FillIn] = Field(min_length=1)


Quote = Annotated[list[str | int], Field(min_length=3, max_length=4)]


class OracleUpdateIn(_In):
    symbol: Symbol | None = None
    asset: Symbol | None = None
    quotes: list[Quote] = Field(
        min_length=1,
        max_length=64,
        description="[source, price (decimal string), source_ts_ms (int)] or with a 4th confidence (decimal string)",
    )


class OracleBody(_In):
    updates: list[OracleUpdateIn] = Field(min_length=1, max_length=1000)


class PriceBody(_In):
    symbol: Symbol
    price: PosDec


class IndexPriceBody(_In):
    asset: Symbol
    price: PosDec


class OperatorBody(_In):
    reason: Text


class HaltBody(_In):
    reason: Text
    mode: Literal["halted", "reduce_only"] = "halted"
    until_ms: TsMs | None = None


class SettlementBody(_In):
    reason: Text
    price: PosDec


class DelistBody(_In):
    reason: Text
    price: PosDec | None = None


class PriceBandsBody(_In):
    reason: Text
    max_move: PosDec
    window_ms: Annotated[int, Field(ge=1, le=86_400_000)]
    action: Literal["halt", "reduce_only"] = "reduce_only"
    cooloff_ms: Annotated[int, Field(ge=0, le=86_400_000)] = 300_000


class LiquidationConfigBody(_In):
    reason: Text
    params: dict[Annotated[str, Field(max_length=64)], Annotated[str, Field(max_length=200)]] = Field(
        default_factory=dict, description="overrides of the preset's [venue.liquidation] keys (strings)"
    )


class InsuranceBody(_In):
    asset: Symbol
    amount: PosDec
    symbol: Symbol | None = None


class KeyCreate(_In):
    role: Literal["account", "ingest", "operator"]
    account_id: Ident | None = None


# -- responses --------------------------------------------------------------------------------


class EventOut(BaseModel):
    """An engine event: ``kind``, ``seq``, ``ts_ms`` and its own fields."""

    model_config = ConfigDict(extra="allow")
    kind: str
    seq: int
    ts_ms: int


class CommandResult(_Out):
    request_id: str
    seq: int
    events: list[EventOut]


class FillItemResult(_Out):
    index: int
    accepted: bool
    seq: int | None = None
    events: list[EventOut] = Field(default_factory=list)
    error: ErrorInfo | None = None


class FillsResult(_Out):
    request_id: str
    accepted: int
    rejected: int
    results: list[FillItemResult]


class OrderCheckOut(_Out):
    accepted: bool
    code: str | None = None
    reason: str | None = None
    equity_after: str | None = None
    initial_margin_after: str | None = None


class KeyCreated(_Out):
    key_id: str
    role: str
    account_id: str | None
    token: str = Field(description="shown once: the client signs with HMAC-SHA256(salt, secret) of 'salt_hex.secret'")


class BucketView(_Out):
    holder: str
    asset: str
    equity: str
    initial_margin: str
    maintenance_margin: str
    unrealized_pnl: str
    notional: str
    margin_ratio: str | None
    liquidatable: bool


class PositionView(_Out):
    symbol: str
    leg: str
    size: str
    entry_price: str | None
    mark_price: str
    notional: str
    unrealized_pnl: str
    initial_margin: str
    maintenance_margin: str
    margin_mode: str
    leverage: str | None
    liquidation_price: str | None = Field(description="null: none in range, or not recomputed yet (see _fresh)")
    liquidation_price_fresh: bool = Field(description="false while the liquidation price awaits recomputation")
    adl_quintile: int | None


class AccountView(_Out):
    account_id: str
    position_mode: str
    balances: dict[str, str]
    cross: BucketView
    isolated: list[BucketView]
    positions: list[PositionView]
    liquidatable: bool
    seq: int


class MarketView(_Out):
    symbol: str
    settle_asset: str
    mark_price: str | None
    index_price: str | None
    funding_rate: str | None
    status: str
    halted: bool
    status_reason: str
    status_actor: str
    validity: str
    seq: int


class MarketInfo(_Out):
    venue: str
    markets: list[MarketView]


class PresetList(_Out):
    presets: list[str]
    active: str


class InsuranceView(_Out):
    funds: dict[str, dict[str, str]]
    seq: int


class HistoryPage(_Out):
    account_id: str
    category: str
    items: list[EventOut]
    next_cursor: str | None


class StateOut(_Out):
    seq: int
    head_hash: str
    state_hash: str


class KeyRevoked(_Out):
    key_id: str
    revoked: bool


class RiskRow(_Out):
    account_id: str
    margin_ratio: float | None = Field(description="MM / equity of the cross bucket; null when infinite")
    equity: float
    maintenance_margin: float
    liquidatable: bool
    exact: bool = Field(description="amounts re-decided by the exact path (else float screen within its bound)")


class RiskSnapshotOut(_Out):
    seq: int
    valuation_asset: str
    accounts: int
    positions: int
    liquidatable: list[str]
    margin_ratio_quantiles: dict[str, float | None]
    histogram_edges: list[float | None] = Field(description="bin edges of the margin ratio; the last is +inf (null)")
    histogram_counts: list[int]
    riskiest: list[RiskRow]


class HealthOut(_Out):
    status: str
    seq: int
    detail: str = ""
