"""The operator's whole-book risk snapshot comes from the batch kernel and agrees with the exact views."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import httpx

from perpmargin.service.process import Server


def ok(r: httpx.Response) -> Any:
    assert r.status_code == 200, r.text
    return r.json()


def test_the_risk_snapshot_lists_every_liquidatable_account_and_matches_the_exact_account_views(
    own_sqlite_server: Server,
) -> None:
    op = own_sqlite_server.client()
    ok(op.post("/v1/prices/mark", {"symbol": "BTCUSDT", "price": "50000"}))
    ok(op.post("/v1/prices/index", {"asset": "BTC", "price": "50000"}))
    ok(op.post("/v1/accounts", {"account_id": "mm"}))
    ok(op.post("/v1/accounts/mm/deposits", {"asset": "USDT", "amount": "10000000"}))
    # t1..t4: 1 BTC long each with 6,000 / 4,500 / 3,500 / 2,600 USDT; the mark then falls to 47,000.
    for i, cash in enumerate(("6000", "4500", "3500", "2600"), start=1):
        aid = f"t{i}"
        ok(op.post("/v1/accounts", {"account_id": aid}))
        ok(op.post(f"/v1/accounts/{aid}/deposits", {"asset": "USDT", "amount": cash}))
        ok(op.post(f"/v1/accounts/{aid}/leverage", {"symbol": "BTCUSDT", "leverage": "20"}))
        fill = {"symbol": "BTCUSDT", "price": "50000", "size": "1", "buyer": aid, "seller": "mm"}
        ok(op.post("/v1/fills", {"fills": [fill]}))
    ok(op.post("/v1/prices/mark", {"symbol": "BTCUSDT", "price": "47000"}))
    snap = ok(op.get("/v1/admin/risk-snapshot?top=10"))
    ids = ["mm", "t1", "t2", "t3", "t4"]
    full = {a: ok(op.get(f"/v1/accounts/{a}")) for a in ids}
    views = {a: v["cross"] for a, v in full.items()}
    assert snap["valuation_asset"] == "USDT"
    assert snap["accounts"] == len(ids)
    assert snap["positions"] == sum(len(v["positions"]) for v in full.values())
    # The flags are the exact path's: equity ≤ MM with positions open (t4's 2,600 USDT cannot carry a
    # 3,000 USDT loss; if the service's liquidation desk already closed it, nobody is left liquidatable).
    exact_liq = sorted(
        a for a, v in views.items()
        if full[a]["positions"] and Decimal(v["equity"]) <= Decimal(v["maintenance_margin"])
    )
    assert snap["liquidatable"] == exact_liq
    # Riskiest first: the survivors in the order of their exact margin ratio MM / equity.
    def exact_ratio(a: str) -> Decimal:
        return Decimal(views[a]["maintenance_margin"]) / Decimal(views[a]["equity"])

    survivors = sorted((a for a in ("t1", "t2", "t3") if full[a]["positions"]), key=exact_ratio, reverse=True)
    listed = [row["account_id"] for row in snap["riskiest"] if row["account_id"] in survivors]
    assert listed == survivors == ["t3", "t2", "t1"]
    for row in snap["riskiest"]:
        v = views[row["account_id"]]
        assert abs(row["equity"] - float(v["equity"])) < 1e-6
        assert abs(row["maintenance_margin"] - float(v["maintenance_margin"])) < 1e-6
        assert abs(row["margin_ratio"] - float(exact_ratio(row["account_id"]))) < 1e-9
    assert sum(snap["histogram_counts"]) == len(snap["riskiest"])
    assert snap["histogram_edges"][-1] is None
    denied = own_sqlite_server.client(*_account_key(op, "t1")).get("/v1/admin/risk-snapshot")
    assert denied.status_code == 403


def _account_key(op: Any, account: str) -> tuple[str, str]:
    r = ok(op.post("/v1/admin/keys", {"role": "account", "account_id": account}))
    return r["key_id"], r["token"]
