"""WebSocket fan-out: per-account and per-market topics, fed by the sequencer's committed events.

The sequencer thread hands each committed batch to :meth:`Hub.publish_threadsafe`; on the
event loop every event is serialised once per topic and put on each subscriber's bounded
queue. A subscriber whose queue is full is disconnected (close code 4008, ``too slow``)
rather than buffered without bound or allowed to slow anyone else.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterable

from perpmargin.commands import Event
from perpmargin.service.readmodel import event_accounts, event_json, event_symbols

__all__ = ["Hub", "Subscriber"]

log = logging.getLogger("perpmargin.service")


class Subscriber:
    """One WebSocket's queue of serialised messages; ``overflowed`` once it fell behind."""

    def __init__(self, topic: str, maxsize: int) -> None:
        self.topic = topic
        self.queue: asyncio.Queue[str] = asyncio.Queue(maxsize=maxsize)
        self.overflowed = asyncio.Event()


class Hub:
    """Topics ``account:<id>`` and ``market:<symbol>`` → subscribers."""

    def __init__(self, queue_max: int) -> None:
        self.queue_max = queue_max
        self.loop: asyncio.AbstractEventLoop | None = None
        self.topics: dict[str, set[Subscriber]] = {}
        self.published = 0

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Attach to the running event loop (at start-up)."""
        self.loop = loop

    def subscribe(self, topic: str) -> Subscriber:
        """A new subscriber on ``topic``."""
        sub = Subscriber(topic, self.queue_max)
        self.topics.setdefault(topic, set()).add(sub)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        """Forget a subscriber (idempotent)."""
        subs = self.topics.get(sub.topic)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self.topics[sub.topic]

    def subscribers(self) -> int:
        """How many subscribers, all topics."""
        return sum(len(s) for s in self.topics.values())

    def publish_threadsafe(self, events: list[Event]) -> None:
        """Called from the sequencer thread."""
        loop = self.loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self.publish, events)

    def publish(self, events: Iterable[Event]) -> None:
        """Fan events out to their topics (event loop only)."""
        for ev in events:
            topics = [f"account:{a}" for a in sorted(event_accounts(ev))]
            topics += [f"market:{s}" for s in sorted(event_symbols(ev))]
            text: str | None = None
            for t in topics:
                subs = self.topics.get(t)
                if not subs:
                    continue
                if text is None:
                    text = json.dumps(
                        {"type": "event", **event_json(ev)}, sort_keys=True, separators=(",", ":"), default=str
                    )
                for sub in list(subs):
                    try:
                        sub.queue.put_nowait(text)
                    except asyncio.QueueFull:
                        sub.overflowed.set()
                        self.unsubscribe(sub)
                self.published += 1
