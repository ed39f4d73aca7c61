"""Session affinity: which conversation a turn belongs to, and the engine that served its last
turn.

A turn's affinity key is the caller's session id when it sends one (`session_id` or the
`x-session-id` header), scoped to its tenant. Without one, a chat turn's conversation is
recognised by what every later turn of it resends unchanged: its system prompt and its first
user message (`conversation_key`). Either way the turn is routed the same: a client that sends
no ids keeps its conversations on their engines (and their prefix caches) as one that does.
Completions (a bare prompt) have no conversation: prefix affinity alone places them.

`SessionTable` is bounded: at most `max_sessions` entries, least recently routed evicted first,
and an entry not routed for `ttl` seconds is gone. Reads never extend a session; only a routed
turn (`set`) does. Not thread-safe: the router uses it from one event loop.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable

from switchyard.v1 import inference_pb2

# Derived keys never collide with a tenant's own ids ("<tenant>/<id>").
CONVERSATION_PREFIX = "~conv:"


def affinity_key(tenant: str, session_id: str, req: inference_pb2.GenerateRequest) -> str:
    """The key a turn's session affinity goes by: the caller's session id scoped to its tenant,
    else its conversation's (`conversation_key`), else "" (no affinity)."""
    if session_id:
        # Sessions are the tenant's own: another tenant naming the same id is not steered.
        return f"{tenant}/{session_id}"
    return conversation_key(tenant, req)


def conversation_key(tenant: str, req: inference_pb2.GenerateRequest) -> str:
    """A chat turn's conversation, from its system messages and first user message (what every
    turn of one conversation starts with, unchanged), scoped to the tenant; "" for a bare
    prompt or a conversation without a user message. Two conversations that open alike share a
    key, which is what their shared prefix would ask for anyway."""
    if req.WhichOneof("input") != "conversation":
        return ""
    h = hashlib.blake2b(tenant.encode(), digest_size=12)
    for m in req.conversation.messages:
        role, content = m.role.encode(), m.content.encode()
        h.update(b"%d:%s%d:%s" % (len(role), role, len(content), content))  # unambiguous
        if m.role == "user":
            return CONVERSATION_PREFIX + h.hexdigest()
    return ""


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
