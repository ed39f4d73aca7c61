"""Keep the local mesh's processes running: restart what dies, with backoff and a crash-loop limit.

Kubernetes' semantics on one machine (restartPolicy Always, CrashLoopBackOff): `switchyard up`
registers every process it starts (router, safety, engines, Envoy) as a `Child` with how to
start it and how to tell it serves. A thread polls them; one that exits without being asked to
(killed, crashed, an engine whose vLLM core died) has what it left behind in its process group
killed (a killed engine's vLLM core and workers would run on, orphaned) and is started again
after a backoff that doubles
with each recent exit (`RestartPolicy`), and given up on — left down, said loudly — after too
many exits in a short window. Restarts run on threads of their own, so an engine that takes a
minute to load its model does not hold up the others. Every change is said on the console and
handed to `on_change` (`up` keeps a state file that `switchyard status` reads).

A child stopped on purpose is `retire`d first (the autoscaler's scale-down, later): it is not
restarted. `stop()` ends supervision before the mesh shuts down, so SIGTERM and Ctrl-C stop
everything without anything coming back.
"""

from __future__ import annotations

import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol


class Process(Protocol):
    """What the supervisor needs of a running process."""

    @property
    def pid(self) -> int: ...

    def poll(self) -> int | None: ...


@dataclass(frozen=True)
class RestartPolicy:
    backoff_initial: float = 1.0  # seconds before the first restart
    backoff_max: float = 30.0  # the backoff doubles with each recent exit, up to this
    max_exits: int = 5  # this many unplanned exits within `window` is a crash loop
    window: float = 300.0


# What a child is doing, as `switchyard status` shows it.
RUNNING = "running"
BACKOFF = "backoff"  # exited; waiting to be restarted
RESTARTING = "restarting"  # started again, not serving yet
CRASH_LOOP = "crash-loop"  # exited too often: left down
RETIRED = "retired"  # stopped on purpose: not restarted


@dataclass(eq=False)
class Child:
    """One supervised process and how to bring it back."""

    name: str  # "router", "safety", "envoy", "l4-small-0"
    kind: str  # "router", "safety", "envoy", "engine"
    proc: Process
    start: Callable[[], Process]  # starts a fresh process (returns at once)
    wait_ready: Callable[[Process], None]  # blocks until it serves; raises if it cannot
    log_path: str = ""
    state: str = RUNNING
    restarts: int = 0
    started_at: float = field(default_factory=time.time)  # wall clock, for uptime
    last_exit: str = ""  # how the last process ended, e.g. "killed by SIGKILL"
    exits: deque[float] = field(default_factory=deque)  # monotonic times of recent exits
    retry_at: float = 0.0

    def describe(self) -> dict[str, Any]:
        """The child as `switchyard status` reads it."""
        return {
            "name": self.name,
            "kind": self.kind,
            "pid": self.proc.pid,
            "state": self.state,
            "restarts": self.restarts,
            "started_at": self.started_at,
            "last_exit": self.last_exit,
        }


def exit_description(code: int) -> str:
    """A process's exit status as a person says it."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with status {code}"


class Supervisor:
    def __init__(
        self,
        say: Callable[[str], None],
        *,
        policy: RestartPolicy | None = None,
        on_change: Callable[[], None] | None = None,
        poll_seconds: float = 0.25,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._say = say
        self.policy = policy or RestartPolicy()
        self._on_change = on_change or (lambda: None)
        self._poll = poll_seconds
        self._clock = clock
        self._children: list[Child] = []
        self._lock = threading.RLock()  # held to change a child, and to start a process
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    # -- setup ----------------------------------------------------------------------------

    def add(self, child: Child) -> Child:
        with self._lock:
            self._children.append(child)
        self._on_change()
        return child

    def start(self) -> None:
        """Watch the children from a daemon thread until `stop()`."""
        self._thread = threading.Thread(target=self._run, name="supervisor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop supervising: nothing is restarted (or started) after this returns."""
        with self._lock:
            self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def retire(self, name: str) -> None:
        """`name` is about to be stopped on purpose: do not restart it."""
        with self._lock:
            for c in self._children:
                if c.name == name:
                    c.state = RETIRED
        self._on_change()

    # -- queries --------------------------------------------------------------------------

    def children(self) -> list[Child]:
        with self._lock:
            return list(self._children)

    def child(self, name: str) -> Child | None:
        with self._lock:
            return next((c for c in self._children if c.name == name), None)

    # -- the loop -------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stopping.wait(self._poll):
            self.check()

    def check(self) -> None:
        """One pass: notice exits, start restarts whose backoff is over (tests call it)."""
        for c in self.children():
            with self._lock:
                if self._stopping.is_set():
                    return
                if c.state == RUNNING:
                    code = c.proc.poll()
                    if code is not None:
                        self._exited(c, code)
                elif c.state == BACKOFF and self._clock() >= c.retry_at:
                    c.state = RESTARTING
                    threading.Thread(
                        target=self._restart, args=(c,), name=f"restart-{c.name}", daemon=True
                    ).start()

    def _exited(self, c: Child, code: int) -> None:
        """Called with the lock held: a child's process ended without being asked to."""
        reap = getattr(c.proc, "reap", None)
        if reap is not None:
            reap()  # what it leaves behind (vLLM's engine core, its workers) goes too
        now = self._clock()
        c.last_exit = exit_description(code)
        c.exits.append(now)
        while c.exits and c.exits[0] < now - self.policy.window:
            c.exits.popleft()
        where = f" (log: {c.log_path})" if c.log_path else ""
        if len(c.exits) >= self.policy.max_exits:
            c.state = CRASH_LOOP
            self._say(
                f"[up] {c.kind} {c.name} {c.last_exit}: {len(c.exits)} exits in "
                f"{self.policy.window:g}s, crash-looping; it stays down{where}"
            )
        else:
            delay = min(
                self.policy.backoff_max, self.policy.backoff_initial * 2 ** (len(c.exits) - 1)
            )
            c.state = BACKOFF
            c.retry_at = now + delay
            self._say(
                f"[up] {c.kind} {c.name} {c.last_exit}; restarting it in {delay:g}s "
                f"(restart {c.restarts + 1}){where}"
            )
        self._on_change()

    def _restart(self, c: Child) -> None:
        began = self._clock()
        with self._lock:
            if self._stopping.is_set() or c.state != RESTARTING:
                return
            try:
                c.proc = c.start()
                c.started_at = time.time()
            except Exception as e:
                self._say(f"[up] {c.kind} {c.name} could not be started: {e}")
                self._exited(c, 1)
                return
        self._on_change()
        try:
            c.wait_ready(c.proc)
        except Exception as e:
            with self._lock:
                if self._stopping.is_set():
                    return
                self._say(f"[up] {c.kind} {c.name} did not come back: {str(e).splitlines()[0]}")
                code = c.proc.poll()
                self._exited(c, 1 if code is None else code)
            return
        with self._lock:
            c.restarts += 1
            c.state = RUNNING
        self._say(f"[up] {c.kind} {c.name} is back after {self._clock() - began:.0f}s")
        self._on_change()
