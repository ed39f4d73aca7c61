"""Session affinity table: session id → the engine that served the session's last turn.

Bounded: at most `max_sessions` entries, least recently routed evicted first, and an entry not
routed for `ttl` seconds is gone. Reads never extend a session; only a routed turn (`set`) does.
Not thread-safe: the router uses it from one event loop.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable


class SessionTable:
    """LRU + TTL map session_id → engine_id."""

    def __init__(
        self,
        *,
        max_sessions: int = 100_000,
        ttl: float = 1800.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_sessions < 1:
            raise ValueError(f"max_sessions must be >= 1, got {max_sessions}")
        if ttl <= 0:
            raise ValueError(f"ttl must be > 0, got {ttl}")
        self.max_sessions = max_sessions
        self.ttl = ttl
        self._clock = clock
        # session_id → (engine_id, last routed at), least recently routed first.
        self._entries: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self.evicted = 0  # entries dropped by the size bound
        self.expired = 0  # entries dropped by the TTL

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, session_id: str) -> str | None:
        """The session's engine, or None (unknown or expired)."""
        entry = self._entries.get(session_id)
        if entry is None:
            return None
        if self._clock() - entry[1] > self.ttl:
            del self._entries[session_id]
            self.expired += 1
            return None
        return entry[0]

    def set(self, session_id: str, engine_id: str) -> None:
        """The session's latest turn went to `engine_id`."""
        entries = self._entries
        now = self._clock()
        entries[session_id] = (engine_id, now)
        entries.move_to_end(session_id)
        if len(entries) > self.max_sessions:
            entries.popitem(last=False)
            self.evicted += 1
        self._expire_front(now)

    def forget(self, session_id: str) -> None:
        self._entries.pop(session_id, None)

    def expire(self) -> int:
        """Drop every entry past its TTL; returns how many."""
        return self._expire_front(self._clock())

    def _expire_front(self, now: float) -> int:
        entries = self._entries
        cutoff = now - self.ttl
        n = 0
        while entries:
            sid, (_eid, t) = next(iter(entries.items()))
            if t >= cutoff:
                break
            del entries[sid]
            n += 1
        self.expired += n
        return n
