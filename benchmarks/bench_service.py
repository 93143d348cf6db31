"""Service benchmark (not a test): durable fills through HTTP, WebSocket fan-out, liquidation latency
under a read flood. Each figure runs against a real ``perpmargin serve`` process on 127.0.0.1.

* **fills** — durable fills per second through ``POST /v1/fills`` (acknowledged = journaled by
  group commit), unbatched (one fill per request, 16 concurrent clients) and batched (100 fills
  per request, 4 concurrent clients), with per-request p50/p99 latency; SQLite, and PostgreSQL
  when ``postgresql://postgres@127.0.0.1:5432/test`` answers (else the rows are absent).
* **ws** — one mark-price update fanned out to 1 000 market-stream subscribers (200 with
  ``--quick``): time from sending the update until every subscriber has the event.
* **liquidation** — latency of the liquidation loop: a mark update that makes one account
  liquidatable, until its durable acknowledgement carrying ``LiquidationStarted`` (the
  liquidation runs in the same command, so this is the oracle→liquidation path end to end).
  Idle, and during a read flood from a separate process (10 concurrent readers hammering account
  and history endpoints; its read rate is reported). Target: flood p99 ≤ 2× idle p99 (C26).

Run: ``python -m benchmarks.bench_service [--quick] [--json]``.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing as mp
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import websockets

from benchmarks._harness import Row, main, row
from perpmargin.service.client import AsyncSignedClient, signed_headers
from perpmargin.service.process import Server

PG_URL = "postgresql://postgres@127.0.0.1:5432/test"


def _pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, round(p * (len(s) - 1)))]


def _pg_available() -> bool:
    try:
        import psycopg

        with psycopg.connect(PG_URL, connect_timeout=3) as c:
            c.execute("SELECT 1")
        import perpmargin.storage  # noqa: F401
    except Exception:
        return False
    return True


async def _setup_traders(c: AsyncSignedClient, n: int) -> None:
    assert (await c.post("/v1/prices/mark", {"symbol": "BTCUSDT", "price": "50000"})).status_code == 200
    for i in range(n):
        aid = f"t{i}"
        assert (await c.post("/v1/accounts", {"account_id": aid})).status_code == 200
        assert (
            await c.post(f"/v1/accounts/{aid}/deposits", {"asset": "USDT", "amount": "100000000"})
        ).status_code == 200


def _fill(i: int, traders: int) -> dict[str, str]:
    a, b = f"t{i % traders}", f"t{(i + 1) % traders}"
    return {"symbol": "BTCUSDT", "price": "50000", "size": "0.001", "buyer": a, "seller": b}


async def _fills(
    c: AsyncSignedClient, total: int, per_request: int, concurrency: int, traders: int
) -> tuple[float, list[float]]:
    lat: list[float] = []
    counter = iter(range(10**9))

    async def worker(n_requests: int) -> None:
        for _ in range(n_requests):
            fills = [_fill(next(counter), traders) for _ in range(per_request)]
            t0 = time.perf_counter()
            r = await c.post("/v1/fills", {"fills": fills})
            lat.append(time.perf_counter() - t0)
            body = r.json()
            assert r.status_code == 200, body
            assert body["accepted"] == per_request, body

    requests = total // per_request
    per_worker = max(1, requests // concurrency)
    t0 = time.perf_counter()
    await asyncio.gather(*(worker(per_worker) for _ in range(concurrency)))
    elapsed = time.perf_counter() - t0
    return per_worker * concurrency * per_request / elapsed, lat


async def _bench_fills(srv: Server, backend: str, quick: bool) -> list[Row]:
    c = AsyncSignedClient(srv.url, srv.key_id, srv.token, limits=httpx.Limits(max_connections=64))
    try:
        await _setup_traders(c, 8)
        out: list[Row] = []
        n_single = 400 if quick else 1000
        rate, lat = await _fills(c, n_single, 1, 16, 8)
        out += [
            row(f"fills {backend}", "unbatched fills/s (1 per request, 16 clients)", rate, "fills/s"),
            row(f"fills {backend}", "unbatched p50 latency", _pct(lat, 0.5) * 1e3, "ms"),
            row(f"fills {backend}", "unbatched p99 latency", _pct(lat, 0.99) * 1e3, "ms"),
        ]
        n_batch = 4000 if quick else 10000
        rate_b, lat_b = await _fills(c, n_batch, 100, 4, 8)
        out += [
            row(
                f"fills {backend}",
                "batched fills/s (100 per request, 4 clients)",
                rate_b,
                "fills/s",
                "unbatched fills/s (1 per request, 16 clients)",
            ),
            row(f"fills {backend}", "batched p50 latency (per request)", _pct(lat_b, 0.5) * 1e3, "ms"),
            row(f"fills {backend}", "batched p99 latency (per request)", _pct(lat_b, 0.99) * 1e3, "ms"),
        ]
        return out
    finally:
        await c.aclose()


async def _bench_ws(srv: Server, n: int) -> list[Row]:
    c = AsyncSignedClient(srv.url, srv.key_id, srv.token)
    path = "/v1/ws/market/BTCUSDT"
    conns: list[Any] = []
    try:
        for i in range(0, n, 50):
            batch = [
                websockets.connect(
                    f"ws://127.0.0.1:{srv.port}{path}",
                    additional_headers=signed_headers(srv.key_id, c.key, "GET", path),
                    open_timeout=60,
                )
                for _ in range(min(50, n - i))
            ]
            conns += await asyncio.gather(*batch)
        for ws in conns:
            assert json.loads(await ws.recv())["type"] == "subscribed"

        async def wait_one(ws: Any) -> float:
            while True:
                m = json.loads(await ws.recv())
                if m.get("kind") == "MarkPriceSet":
                    return time.perf_counter()

        waiters = [asyncio.ensure_future(wait_one(ws)) for ws in conns]
        await asyncio.sleep(0.2)
        t0 = time.perf_counter()
        r = await c.post("/v1/prices/mark", {"symbol": "BTCUSDT", "price": "50001"})
        assert r.status_code == 200
        done = await asyncio.gather(*waiters)
        return [
            row("ws fan-out", f"all {n} subscribers received the event", (max(done) - t0) * 1e3, "ms"),
            row("ws fan-out", "median subscriber", (statistics.median(done) - t0) * 1e3, "ms"),
        ]
    finally:
        await asyncio.gather(*(ws.close() for ws in conns), return_exceptions=True)
        await c.aclose()


def _flood(url: str, key_id: str, token: str, readers: int, stop_at: float, out: Any) -> None:
    async def go() -> tuple[int, float]:
        c = AsyncSignedClient(url, key_id, token, limits=httpx.Limits(max_connections=readers))
        count = 0
        t0 = time.time()

        async def reader(i: int) -> None:
            nonlocal count
            paths = [f"/v1/accounts/t{i % 8}", f"/v1/accounts/t{i % 8}/history/fills?limit=100", "/v1/markets"]
            k = 0
            while time.time() < stop_at:
                r = await c.get(paths[k % len(paths)])
                k += 1
                if r.status_code == 200:
                    count += 1

        await asyncio.gather(*(reader(i) for i in range(readers)))
        await c.aclose()
        return count, time.time() - t0

    out.put(asyncio.run(go()))


async def _liq_round(c: AsyncSignedClient, i: int) -> float:
    aid = f"liq-{uuid.uuid4().hex[:8]}-{i}"
    assert (await c.post("/v1/prices/mark", {"symbol": "BTCUSDT", "price": "50000"})).status_code == 200
    assert (await c.post("/v1/accounts", {"account_id": aid})).status_code == 200
    assert (await c.post(f"/v1/accounts/{aid}/deposits", {"asset": "USDT", "amount": "300"})).status_code == 200
    assert (await c.post(f"/v1/accounts/{aid}/leverage", {"symbol": "BTCUSDT", "leverage": "50"})).status_code == 200
    r = await c.post("/v1/fills", {"fills": [{"symbol": "BTCUSDT", "price": "50000", "size": "0.1", "buyer": aid}]})
    assert r.json()["accepted"] == 1, r.text
    t0 = time.perf_counter()
    r = await c.post("/v1/prices/mark", {"symbol": "BTCUSDT", "price": "47000"})
    dt = time.perf_counter() - t0
    kinds = {(e["kind"], e.get("account_id")) for e in r.json()["events"]}
    assert ("LiquidationStarted", aid) in kinds, r.text
    return dt


async def _bench_liq(srv: Server, quick: bool) -> list[Row]:
    c = AsyncSignedClient(srv.url, srv.key_id, srv.token)
    rounds = 15 if quick else 300  # enough rounds that p99 is a percentile, not the maximum
    try:
        assert (await c.post("/v1/admin/insurance", {"asset": "USDT", "amount": "100000000"})).status_code == 200
        await _setup_traders(c, 8)  # what the flood reads: 8 accounts with positions and fill history
        await _fills(c, 200, 100, 1, 8)
        idle = [await _liq_round(c, i) for i in range(rounds)]
        q: Any = mp.get_context("spawn").Queue()
        duration = 6.0 if quick else 90.0  # the flood outlasts the rounds (each ≈ 30–60 ms)
        stop_at = time.time() + duration + 3.0
        p = mp.get_context("spawn").Process(target=_flood, args=(srv.url, srv.key_id, srv.token, 10, stop_at, q))
        p.start()
        await asyncio.sleep(2.5)  # the flood is running
        flood: list[float] = []
        while time.time() < stop_at - 0.5 and len(flood) < rounds:
            flood.append(await _liq_round(c, 1000 + len(flood)))
        reads, flood_s = q.get(timeout=120)
        p.join(30)
        read_rate = reads / max(1e-9, flood_s)
        return [
            row("liquidation loop", "idle p50", _pct(idle, 0.5) * 1e3, "ms"),
            row("liquidation loop", "idle p99", _pct(idle, 0.99) * 1e3, "ms"),
            row("liquidation loop", "read flood p50", _pct(flood, 0.5) * 1e3, "ms", "idle p50"),
            row("liquidation loop", "read flood p99", _pct(flood, 0.99) * 1e3, "ms", "idle p99"),
            row("liquidation loop", "reads served during the flood", read_rate, "reads/s"),
        ]
    finally:
        await c.aclose()


def run(quick: bool) -> list[Row]:
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as d:
        srv = Server(db=str(Path(d) / "bench.sqlite")).start()
        try:
            rows += asyncio.run(_bench_fills(srv, "SQLite", quick))
            rows += asyncio.run(_bench_ws(srv, 200 if quick else 1000))
        finally:
            srv.stop()
        srv = Server(db=str(Path(d) / "liq.sqlite")).start()
        try:
            rows += asyncio.run(_bench_liq(srv, quick))
        finally:
            srv.stop()
    if _pg_available():
        srv = Server(db=f"{PG_URL}?schema=pm_bench_{uuid.uuid4().hex[:10]}").start()
        try:
            rows += asyncio.run(_bench_fills(srv, "PostgreSQL", quick))
        finally:
            srv.stop()
    else:
        print("PostgreSQL not reachable: PostgreSQL rows skipped", file=sys.stderr)
    return rows


if __name__ == "__main__":
    main(run)
