"""Signing HTTP clients for the service (httpx), used by the tests, the benchmark and integrators.

Every request is signed as :mod:`perpmargin.service.auth` describes; mutating calls send an
``X-PM-Request-Id`` (a fresh one unless given, so a caller that wants retries to be
idempotent passes its own and reuses it).
"""

from __future__ import annotations

import json
import secrets
import time
from typing import Any

import httpx

from perpmargin.service.auth import sign, signing_key

__all__ = ["AsyncSignedClient", "SignedClient", "signed_headers"]


def signed_headers(
    key_id: str,
    key: bytes,
    method: str,
    path_qs: str,
    body: bytes = b"",
    *,
    ts_ms: int | None = None,
    nonce: str | None = None,
) -> dict[str, str]:
    """The four authentication headers for one request."""
    ts = str(int(time.time() * 1000) if ts_ms is None else ts_ms)
    n = nonce or secrets.token_hex(12)
    return {
        "X-PM-Key": key_id,
        "X-PM-Timestamp": ts,
        "X-PM-Nonce": n,
        "X-PM-Signature": sign(key, method, path_qs, ts, n, body),
    }


def _encode(body: Any) -> bytes:
    return b"" if body is None else json.dumps(body, separators=(",", ":")).encode()


class SignedClient:
    """Synchronous client: ``get(path)``, ``post(path, body, request_id=...)`` → :class:`httpx.Response`."""

    def __init__(
        self, base_url: str, key_id: str, token: str, *, timeout: float = 30.0, http: httpx.Client | None = None
    ) -> None:
        self.key_id = key_id
        self.key = signing_key(token)
        self.http = http if http is not None else httpx.Client(base_url=base_url, timeout=timeout)
        """The transport (``http`` may be e.g. FastAPI's ``TestClient`` for an in-process app)."""

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        request_id: str | None = None,
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        """Sign and send. ``raw`` sends exact bytes instead of JSON-encoding ``body``."""
        data = raw if raw is not None else _encode(body)
        h = signed_headers(self.key_id, self.key, method, path, data)
        if data:
            h["Content-Type"] = "application/json"
        if method != "GET":
            h["X-PM-Request-Id"] = request_id or secrets.token_hex(12)
        h.update(headers or {})
        return self.http.request(method, path, content=data, headers=h)

    def get(self, path: str) -> httpx.Response:
        """Signed GET (``path`` may carry a query string, signed as sent)."""
        return self.request("GET", path)

    def post(self, path: str, body: Any = None, *, request_id: str | None = None) -> httpx.Response:
        """Signed POST with a request id."""
        return self.request("POST", path, body, request_id=request_id)

    def close(self) -> None:
        """Close the connection pool."""
        self.http.close()

    def __enter__(self) -> SignedClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncSignedClient:
    """Asynchronous twin of :class:`SignedClient`."""

    def __init__(
        self, base_url: str, key_id: str, token: str, *, timeout: float = 30.0, limits: httpx.Limits | None = None
    ) -> None:
        self.key_id = key_id
        self.key = signing_key(token)
        self.http = httpx.AsyncClient(base_url=base_url, timeout=timeout, limits=limits or httpx.Limits())

    async def request(
        self, method: str, path: str, body: Any = None, *, request_id: str | None = None
    ) -> httpx.Response:
        """Sign and send."""
        data = _encode(body)
        h = signed_headers(self.key_id, self.key, method, path, data)
        if data:
            h["Content-Type"] = "application/json"
        if method != "GET":
            h["X-PM-Request-Id"] = request_id or secrets.token_hex(12)
        return await self.http.request(method, path, content=data, headers=h)

    async def get(self, path: str) -> httpx.Response:
        """Signed GET."""
        return await self.request("GET", path)

    async def post(self, path: str, body: Any = None, *, request_id: str | None = None) -> httpx.Response:
        """Signed POST with a request id."""
        return await self.request("POST", path, body, request_id=request_id)

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self.http.aclose()
