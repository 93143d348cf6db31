"""End to end against a real server process (SQLite and PostgreSQL): accounts, deposits, leverage,
a fill batch, oracle and trusted prices, risk, history pagination, both WebSocket streams, and a
liquidation seen on the account stream. Expected figures come from an in-process engine fed the
same commands, so the service is checked against the library, not against constants."""

from __future__ import annotations

import json
import threading
import time
from decimal import Decimal
from typing import Any

import pytest
from tests.service.support import Server
from websockets.sync.client import ClientConnection, connect

from perpmargin.commands import (
    Command,
    CreateAccount,
    Deposit,
    Fill,
    OracleUpdate,
    SetIndexPrice,
    SetLeverage,
    SetMarkPrice,
)
from perpmargin.engine import Engine
from perpmargin.liquidation import configure_command
from perpmargin.presets import load_venue
from perpmargin.service.auth import signing_key
from perpmargin.service.client import SignedClient, signed_headers


def ws_connect(srv: Server, path: str, key_id: str, token: str) -> ClientConnection:
    headers = signed_headers(key_id, signing_key(token), "GET", path)
    ws = connect(f"ws://127.0.0.1:{srv.port}{path}", additional_headers=headers, open_timeout=10).__enter__()
    hello = json.loads(ws.recv(timeout=10))
    assert hello["type"] == "subscribed"
    return ws


class Collector:
    """Reads a WebSocket in a thread until closed."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.messages: list[dict[str, Any]] = []
        self.got = threading.Condition()
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _run(self) -> None:
        try:
            for raw in self.ws:
                with self.got:
                    self.messages.append(json.loads(raw))
                    self.got.notify_all()
        except Exception:
            return

    def wait_for(self, pred: Any, timeout: float = 10.0) -> list[dict[str, Any]]:
        with self.got:
            self.got.wait_for(lambda: any(pred(m) for m in self.messages), timeout)
            return [m for m in self.messages if pred(m)]

    def close(self) -> None:
        self.ws.close()
        self.t.join(5)


def new_key(op: SignedClient, role: str, account: str | None = None) -> tuple[str, str]:
    r = op.post("/v1/admin/keys", {"role": role, "account_id": account})
    assert r.status_code == 200, r.text
    return r.json()["key_id"], r.json()["token"]


def ok(r: Any) -> dict[str, Any]:
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    return out


def test_a_trading_day_through_the_api_matches_the_library(server: Server) -> None:
    op = server.client()
    ok(op.post("/v1/accounts", {"account_id": "alice"}))
    ok(op.post("/v1/accounts", {"account_id": "bob", "position_mode": "one_way"}))
    ak, at = new_key(op, "account", "alice")
    ik, it = new_key(op, "ingest")
    alice, ingest = server.client(ak, at), server.client(ik, it)
    ws_acc = Collector(ws_connect(server, "/v1/ws/account/alice", ak, at))
    ws_mkt = Collector(ws_connect(server, "/v1/ws/market/BTCUSDT", ik, it))
    try:
        ok(alice.post("/v1/accounts/alice/deposits", {"asset": "USDT", "amount": "10000"}))
        ok(op.post("/v1/accounts/bob/deposits", {"asset": "USDT", "amount": "20000"}))
        ok(alice.post("/v1/accounts/alice/leverage", {"symbol": "BTCUSDT", "leverage": "20"}))
        ok(ingest.post("/v1/prices/mark", {"symbol": "BTCUSDT", "price": "50000"}))
        ok(ingest.post("/v1/prices/index", {"asset": "BTC", "price": "50000"}))
        fills = [{"symbol": "BTCUSDT", "price": "50000", "size": "0.1", "buyer": "alice", "seller": "bob"}] * 3
        fills.append({"symbol": "BTCUSDT", "price": "50000", "size": "0.1", "buyer": "nobody"})
        res = ok(ingest.post("/v1/fills", {"fills": fills}))
        assert (res["accepted"], res["rejected"]) == (3, 1)
        assert res["results"][3]["error"]["code"] == "unknown_account"
        now = int(time.time() * 1000)
        quotes = [["s1", "50010", now], ["s2", "50020", now], ["s3", "50030", now]]
        orc = ok(ingest.post("/v1/prices/oracle", {"updates": [{"symbol": "BTCUSDT", "quotes": quotes}]}))
        assert orc["accepted"] == 1

        venue = load_venue("binance-usdm")
        eng = Engine.from_venue(venue)
        cmds: list[Command] = [
            configure_command(venue),
            CreateAccount(account_id="alice"),
            CreateAccount(account_id="bob"),
            Deposit(account_id="alice", asset="USDT", amount="10000"),
            Deposit(account_id="bob", asset="USDT", amount="20000"),
            SetLeverage(account_id="alice", symbol="BTCUSDT", leverage="20"),
            SetMarkPrice(symbol="BTCUSDT", price="50000"),
            SetIndexPrice(asset="BTC", price="50000"),
            *[Fill(symbol="BTCUSDT", price="50000", size="0.1", buyer="alice", seller="bob")] * 3,
            OracleUpdate(ts_ms=now, symbol="BTCUSDT", quotes=tuple(tuple(q) for q in quotes)),
        ]
        for c in cmds:
            eng.apply(c)
        risk = eng.risk("alice").cross
        view = ok(alice.get("/v1/accounts/alice"))
        vdec = venue.rules.valuation_decimals
        assert Decimal(view["cross"]["equity"]) == Decimal(risk.equity_q).scaleb(-vdec)
        assert Decimal(view["cross"]["initial_margin"]) == Decimal(risk.im_q).scaleb(-vdec)
        assert Decimal(view["cross"]["maintenance_margin"]) == Decimal(risk.mm_q).scaleb(-vdec)
        (pos,) = view["positions"]
        assert Decimal(pos["size"]) == Decimal("0.3")
        lp = eng.liquidation_price("alice", "BTCUSDT")
        assert (None if pos["liquidation_price"] is None else Decimal(pos["liquidation_price"])) == lp
        assert pos["adl_quintile"] in (1, 2, 3, 4, 5)
        mkt = ok(alice.get("/v1/markets/BTCUSDT"))
        assert Decimal(mkt["index_price"]) == Decimal("50020")
        assert mkt["status"] == "open"

        page1 = ok(alice.get("/v1/accounts/alice/history/fills?limit=2"))
        assert len(page1["items"]) == 2
        assert page1["next_cursor"] is not None
        page2 = ok(alice.get(f"/v1/accounts/alice/history/fills?limit=2&cursor={page1['next_cursor']}"))
        assert len(page2["items"]) == 1
        assert page2["next_cursor"] is None
        seqs = [i["seq"] for i in page1["items"] + page2["items"]]
        assert seqs == sorted(seqs)
        assert len(set(seqs)) == 3

        fills_seen = ws_acc.wait_for(lambda m: m.get("kind") == "FillApplied" and m.get("account_id") == "alice")
        assert len(fills_seen) == 3
        marks = ws_mkt.wait_for(lambda m: m.get("kind") in ("MarkPriceSet", "MarkUpdated"))
        assert {m["kind"] for m in marks} == {"MarkPriceSet", "MarkUpdated"}
        assert ws_mkt.wait_for(lambda m: m.get("kind") == "IndexUpdated")
        assert not [m for m in ws_acc.messages if m.get("account_id") == "bob"]
    finally:
        ws_acc.close()
        ws_mkt.close()


def test_a_price_crash_liquidates_and_the_account_stream_says_so(server: Server) -> None:
    op = server.client()
    ok(op.post("/v1/accounts", {"account_id": "carol"}))
    ck, ct = new_key(op, "account", "carol")
    ws = Collector(ws_connect(server, "/v1/ws/account/carol", ck, ct))
    try:
        ok(op.post("/v1/prices/mark", {"symbol": "BTCUSDT", "price": "50000"}))
        ok(op.post("/v1/accounts/carol/deposits", {"asset": "USDT", "amount": "300"}))
        ok(op.post("/v1/accounts/carol/leverage", {"symbol": "BTCUSDT", "leverage": "50"}))
        ok(op.post("/v1/admin/insurance", {"asset": "USDT", "amount": "100000"}))
        res = ok(
            op.post("/v1/fills", {"fills": [{"symbol": "BTCUSDT", "price": "50000", "size": "0.1", "buyer": "carol"}]})
        )
        assert res["accepted"] == 1, res
        ok(op.post("/v1/prices/mark", {"symbol": "BTCUSDT", "price": "47000"}))
        started = ws.wait_for(lambda m: m.get("kind") == "LiquidationStarted")
        assert started
        assert started[0]["account_id"] == "carol"
        hist = ok(op.get("/v1/accounts/carol/history/liquidations"))
        assert "LiquidationStarted" in {i["kind"] for i in hist["items"]}
        metrics = op.get("/metrics").text
        line = next(x for x in metrics.splitlines() if x.startswith("perpmargin_liquidations_total"))
        assert float(line.split()[-1]) >= 1
        fund = ok(op.get("/v1/insurance"))
        assert "@insurance" in fund["funds"]
    finally:
        ws.close()


@pytest.mark.parametrize("topic", ["/v1/ws/account/alice", "/v1/ws/market/BTCUSDT"], ids=["account", "market"])
def test_an_unsigned_websocket_handshake_is_refused(sqlite_server: Server, topic: str) -> None:
    from websockets.exceptions import InvalidStatus

    with pytest.raises(InvalidStatus), connect(f"ws://127.0.0.1:{sqlite_server.port}{topic}", open_timeout=10):
        pass
