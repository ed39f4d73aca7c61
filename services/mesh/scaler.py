"""`switchyard up`'s side of the autoscaling signal: engines started and stopped on one machine.

For each pool the mesh config's `autoscale.pools` names, `up` reads the router's desired
engines (services/router/autoscale.py, through `Admin.Status`) every few seconds and acts on it,
one engine at a time per pool: below it, it starts one more from the pool's first engine group
(supervised like the others once it serves); above it, it retires the newest engine it started
beyond the pool's minimum and sends it SIGTERM — an engine's own drain: it takes no new turn,
finishes those it has (within its drain grace) and exits; the supervisor does not bring it back.
Pools the section does not name keep the engines `up` started.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from services.mesh import procs

POLL_SECONDS = 2.0


@dataclass
class _Pool:
    name: str
    min_engines: int
    max_engines: int
    starting: threading.Thread | None = None
    stopping: list[procs.EngineProcess] = field(default_factory=list)


class EngineScaler:
    def __init__(
        self,
        mesh: Any,  # services.mesh.up.Mesh (its engines, starters and supervisor)
        say: Callable[[str], None],
        poll_seconds: float = POLL_SECONDS,
    ) -> None:
        self._mesh = mesh
        self._say = say
        self._poll = poll_seconds
        cfg = mesh.cfg
        self._pools = {
            name: _Pool(name, b.min_engines, b.max_engines)
            for name, b in cfg.autoscale.pools.items()
        }
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def active(self) -> bool:
        return bool(self._pools)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="scaler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self._poll):
            try:
                desired = asyncio.run(self._desired())
            except Exception as e:  # the router restarting: next time
                self._say(f"[up] autoscale: the router did not answer ({type(e).__name__})")
                continue
            for name, want in desired.items():
                pool = self._pools.get(name)
                if pool is not None:
                    self.act(pool, want)

    async def _desired(self) -> dict[str, int]:
        from services.common.tls import channel
        from switchyard.v1 import router_pb2, router_pb2_grpc

        async with channel(self._mesh.router_address, self._mesh.operator_tls()) as ch:
            status = await router_pb2_grpc.AdminStub(ch).Status(
                router_pb2.StatusRequest(), timeout=10
            )
        return {p.name: p.desired_engines for p in status.pools if p.scale_reason}

    def running(self, pool: _Pool) -> list[procs.EngineProcess]:
        """The pool's engines `up` runs and has not retired, oldest first."""
        retired = {e.name for e in pool.stopping}
        return [
            e
            for e in self._mesh.engines
            if self._mesh.pool_of(e.name) == pool.name and e.name not in retired
        ]

    def act(self, pool: _Pool, want: int) -> None:
        """One step toward `want` engines (never two at once for a pool)."""
        for e in [e for e in pool.stopping if e.poll() is not None]:
            self._say(f"[up] autoscale: engine {e.name} drained and stopped")
            self._mesh.forget_engine(e)
            pool.stopping.remove(e)
        if pool.starting is not None and pool.starting.is_alive():
            return
        pool.starting = None
        engines = self.running(pool)
        want = max(pool.min_engines, min(pool.max_engines, want))
        if want > len(engines):
            pool.starting = threading.Thread(
                target=self._grow, args=(pool,), name=f"scale-{pool.name}", daemon=True
            )
            pool.starting.start()
        elif want < len(engines) and not pool.stopping:
            self._shrink(pool, engines[-1], len(engines), want)

    def _grow(self, pool: _Pool) -> None:
        name, starter = self._mesh.add_engine(pool.name)
        n = len(self.running(pool))
        self._say(f"[up] autoscale: pool {pool.name} needs more engines: starting {name} ({n})")
        try:
            self._mesh.supervise_engine(name, starter)
        except Exception as e:
            self._say(f"[up] autoscale: engine {name} did not start: {e}")

    def _shrink(self, pool: _Pool, engine: procs.EngineProcess, have: int, want: int) -> None:
        self._say(
            f"[up] autoscale: pool {pool.name} has {have} engines, wants {want}: draining "
            f"{engine.name} (its turns finish, then it exits)"
        )
        pool.stopping.append(engine)
        self._mesh.retire_engine(engine)
