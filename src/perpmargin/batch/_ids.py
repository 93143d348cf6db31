"""A compact account-id → row index for the columnar book.

A Python ``dict[str, int]`` costs about 80-100 bytes per account (hash-table slot, a boxed
``int`` per value); at 10^6-10^7 positions that alone breaks the book's memory budget. This
index keeps **12 bytes per account**: the sorted 64-bit ``hash(id)`` values (``int64``) and
the row each belongs to (``int32``); the id strings themselves are the caller's list
(shared with :class:`~perpmargin.state.EngineState`, not copied).

* Lookup: ``np.searchsorted`` on the sorted hashes, then the candidates with an equal hash are
  compared by string (so a hash collision costs a comparison, never a wrong answer).
* Insert: new ids go to a small ``dict``; when it holds more than ``max(4096, n/8)`` ids it is
  merged into the sorted arrays (one ``O(n)`` merge per ``n/8`` inserts: amortised ``O(1)``).

``hash(str)`` is salted per process (``PYTHONHASHSEED``): the index lives in memory only and
is rebuilt on load, so that never matters, and no result depends on hash order.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["IdIndex"]


class IdIndex:
    """Maps an account id to its row in ``ids`` (see the module docstring)."""

    __slots__ = ("_hashes", "_ids", "_recent", "_rows")

    def __init__(self, ids: list[str]) -> None:
        self._ids = ids
        hashes = np.fromiter((hash(i) for i in ids), dtype=np.int64, count=len(ids))
        order = np.argsort(hashes, kind="stable")
        self._hashes: npt.NDArray[np.int64] = hashes[order]
        self._rows: npt.NDArray[np.int32] = order.astype(np.int32)
        self._recent: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._hashes) + len(self._recent)

    def get(self, account_id: str) -> int | None:
        """Row of ``account_id``, or ``None`` if unknown."""
        row = self._recent.get(account_id)
        if row is not None:
            return row
        h = hash(account_id)
        hashes = self._hashes
        i = int(np.searchsorted(hashes, h, side="left"))
        while i < len(hashes) and int(hashes[i]) == h:
            r = int(self._rows[i])
            if self._ids[r] == account_id:
                return r
            i += 1
        return None

    def add(self, account_id: str, row: int) -> None:
        """Record that ``ids[row] == account_id`` (the caller appended it)."""
        self._recent[account_id] = row
        if len(self._recent) > max(4096, len(self._hashes) // 8):
            self._merge()

    def _merge(self) -> None:
        ids = list(self._recent)
        new_h = np.fromiter((hash(i) for i in ids), dtype=np.int64, count=len(ids))
        new_r = np.fromiter((self._recent[i] for i in ids), dtype=np.int32, count=len(ids))
        hashes = np.concatenate([self._hashes, new_h])
        rows = np.concatenate([self._rows, new_r])
        order = np.argsort(hashes, kind="stable")
        self._hashes, self._rows = hashes[order], rows[order]
        self._recent = {}

    @property
    def nbytes(self) -> int:
        """Bytes held by the sorted arrays (the recent-ids dict is bounded and not counted)."""
        return int(self._hashes.nbytes + self._rows.nbytes)
