"""API keys, request signatures and replay protection.

Keys
----
A key is ``(key_id, role, account_id)`` plus a secret. The client is given a *token*
``salt_hex.secret`` once; the server stores ``salt`` and ``derived = HMAC-SHA256(salt, secret)``
(hex), never the secret itself. The client signs with ``derived``
(:func:`signing_key`), so a leaked token row does not reveal the issued secret; the stored
derived key is still a shared signing secret (as with every HMAC scheme), so the key table
must be protected like the journal.

Roles: ``account`` (only its own account), ``ingest`` (fills and prices), ``operator``
(accounts, markets, overrides, halts, keys).

Signature
---------
Headers ``X-PM-Key`` (key id), ``X-PM-Timestamp`` (ms since the epoch), ``X-PM-Nonce``
(8–64 characters of ``[A-Za-z0-9_-]``) and ``X-PM-Signature``::

    canonical = METHOD + "\\n" + path[?query] + "\\n" + timestamp_ms + "\\n" + nonce + "\\n" + sha256_hex(body)
    signature = hex(HMAC-SHA256(derived_key, canonical))

A request is accepted when the key exists and is not revoked, ``|now − timestamp| ≤ window``,
the signature matches (constant-time compare) and the ``(key, nonce)`` pair was not seen in
the window. Nonces are remembered until their timestamp leaves the window, at most
``nonce_cache_max`` of them (beyond that the request is refused with ``nonce_cache_full``
rather than forgetting a nonce that could still be replayed).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass

from perpmargin.service.sidestore import KeyRow, SideStore

__all__ = [
    "ROLES",
    "AuthError",
    "Authenticator",
    "NonceCache",
    "Principal",
    "canonical_request",
    "new_key",
    "sign",
    "signing_key",
]

ROLES = ("account", "ingest", "operator")
_NONCE_RE = re.compile(r"^[A-Za-z0-9_-]{8,64}$")
_KEY_ID_RE = re.compile(r"^[A-Za-z0-9_-]{4,64}$")


class AuthError(Exception):
    """Authentication (401) or authorisation (403) failure with a stable code."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class Principal:
    """Who signed the request."""

    key_id: str
    role: str
    account_id: str | None


def signing_key(token: str) -> bytes:
    """``HMAC-SHA256(salt, secret)`` from the token ``salt_hex.secret`` the client was given."""
    salt_hex, _, secret = token.partition(".")
    if not secret:
        raise ValueError("a key token is 'salt_hex.secret'")
    return hmac.new(bytes.fromhex(salt_hex), secret.encode(), hashlib.sha256).digest()


def new_key(role: str, account_id: str | None, *, now_ms: int | None = None) -> tuple[KeyRow, str]:
    """A fresh key row and the token to hand out once (the secret is 32 random bytes)."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}")
    if (role == "account") != (account_id is not None):
        raise ValueError("an account key needs an account id, other roles none")
    salt = secrets.token_bytes(16)
    secret = secrets.token_urlsafe(32)
    token = f"{salt.hex()}.{secret}"
    row = KeyRow(
        key_id="pmk_" + secrets.token_hex(8),
        role=role,
        account_id=account_id,
        salt=salt.hex(),
        derived_key=signing_key(token).hex(),
        created_ms=int(time.time() * 1000) if now_ms is None else now_ms,
        revoked=False,
    )
    return row, token


def canonical_request(method: str, path_qs: str, timestamp_ms: str, nonce: str, body: bytes) -> bytes:
    """The signed string (see the module docstring)."""
    return "\n".join((method.upper(), path_qs, timestamp_ms, nonce, hashlib.sha256(body).hexdigest())).encode()


def sign(key: bytes, method: str, path_qs: str, timestamp_ms: str, nonce: str, body: bytes) -> str:
    """Hex HMAC-SHA256 signature of a request."""
    return hmac.new(key, canonical_request(method, path_qs, timestamp_ms, nonce, body), hashlib.sha256).hexdigest()


class NonceCache:
    """``(key_id, nonce)`` pairs seen in the window, oldest first, at most ``max_size``."""

    def __init__(self, window_ms: int, max_size: int) -> None:
        self.window_ms = window_ms
        self.max_size = max_size
        self._seen: OrderedDict[tuple[str, str], int] = OrderedDict()
        self._lock = threading.Lock()

    def check_and_add(self, key_id: str, nonce: str, ts_ms: int, now_ms: int) -> None:
        """Record the nonce or raise ``AuthError`` (replayed, or cache full)."""
        with self._lock:
            horizon = now_ms - 2 * self.window_ms  # a nonce older than this can no longer pass the time check
            while self._seen:
                t = next(iter(self._seen.values()))
                if t >= horizon:
                    break
                self._seen.popitem(last=False)
            pair = (key_id, nonce)
            if pair in self._seen:
                raise AuthError(401, "replayed_nonce", "this nonce was already used with this key")
            if len(self._seen) >= self.max_size:
                raise AuthError(429, "nonce_cache_full", "too many signed requests in the window; retry later")
            self._seen[pair] = now_ms

    def __len__(self) -> int:
        return len(self._seen)


class Authenticator:
    """Verifies signed requests against the key table (cached in memory, refreshed on change)."""

    def __init__(self, side: SideStore, *, window_ms: int, nonce_cache_max: int) -> None:
        self.side = side
        self.window_ms = window_ms
        self.nonces = NonceCache(window_ms, nonce_cache_max)
        self._keys: dict[str, KeyRow] = {}
        self.reload()

    def reload(self) -> None:
        """Re-read the key table."""
        self._keys = {k.key_id: k for k in self.side.list_keys()}

    def add_key(self, row: KeyRow) -> None:
        """Persist a key and make it usable at once."""
        self.side.put_key(row)
        self.reload()

    def revoke(self, key_id: str) -> bool:
        """Revoke a key in the table and refuse it from now on; False when no such key exists."""
        found = self.side.revoke_key(key_id)
        self.reload()
        return found

    def verify(
        self, method: str, path_qs: str, headers: Mapping[str, str], body: bytes, now_ms: int | None = None
    ) -> Principal:
        """The signing principal, or ``AuthError`` (401 for every authentication failure)."""
        key_id = headers.get("x-pm-key")
        ts = headers.get("x-pm-timestamp")
        nonce = headers.get("x-pm-nonce")
        sig = headers.get("x-pm-signature")
        if not key_id or not ts or not nonce or not sig:
            raise AuthError(
                401, "missing_credentials", "X-PM-Key, X-PM-Timestamp, X-PM-Nonce and X-PM-Signature are required"
            )
        if not _KEY_ID_RE.match(key_id) or not _NONCE_RE.match(nonce) or not ts.isdigit() or len(ts) > 15:
            raise AuthError(401, "malformed_credentials", "malformed key id, timestamp or nonce")
        row = self._keys.get(key_id)
        if row is None or row.revoked:
            # same work as a real check, so that unknown and known keys take the same time
            hmac.compare_digest(sig, sign(b"\0" * 32, method, path_qs, ts, nonce, body))
            raise AuthError(401, "invalid_signature", "unknown key or bad signature")
        expected = sign(bytes.fromhex(row.derived_key), method, path_qs, ts, nonce, body)
        if not hmac.compare_digest(sig.encode(), expected.encode()):
            raise AuthError(401, "invalid_signature", "unknown key or bad signature")
        now = int(time.time() * 1000) if now_ms is None else now_ms
        if abs(now - int(ts)) > self.window_ms:
            raise AuthError(
                401, "expired_timestamp", f"X-PM-Timestamp is more than {self.window_ms} ms from the server clock"
            )
        self.nonces.check_and_add(key_id, nonce, int(ts), now)
        return Principal(row.key_id, row.role, row.account_id)


def require_role(p: Principal, *roles: str) -> None:
    """403 ``forbidden`` unless the principal has one of ``roles``."""
    if p.role not in roles:
        raise AuthError(403, "forbidden", f"this endpoint needs the role {' or '.join(roles)}")


def require_account(p: Principal, account_id: str, *also: str) -> None:
    """403 unless the principal is the account's own key or has one of the roles ``also``."""
    if p.role in also:
        return
    if p.role == "account" and p.account_id == account_id:
        return
    raise AuthError(403, "forbidden", "this key may not read or act on this account")
