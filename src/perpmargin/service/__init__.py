"""The margin engine as a service: FastAPI HTTP + WebSocket API over the journal.

* :func:`perpmargin.service.app.create_app` — the ASGI app (``perpmargin serve`` runs it);
* :mod:`perpmargin.service.sequencer` — the single writer and group commit;
* :mod:`perpmargin.service.auth` — API keys, HMAC request signatures, nonces, roles;
* :class:`perpmargin.service.client.SignedClient` — a signing HTTP client (httpx).

See ``docs/service.md``.
"""
