"""`up`'s engine scaler (services/mesh/scaler.py) against a fake mesh: one step at a time per
pool, within the bounds, the newest engine drained first, a retired engine forgotten once it
has exited."""

from __future__ import annotations

import threading
from types import SimpleNamespace

from services.mesh.scaler import EngineScaler, _Pool


class FakeEngine:
    def __init__(self, name: str) -> None:
        self.name = name
        self.exit: int | None = None

    def poll(self) -> int | None:
        return self.exit


class FakeMesh:
    def __init__(self, n: int) -> None:
        self.cfg = SimpleNamespace(autoscale=SimpleNamespace(pools={}))
        self.engines = [FakeEngine(f"small-{i}") for i in range(n)]
        self.retired: list[str] = []
        self.started = threading.Event()

    def pool_of(self, name: str) -> str:
        return name.rsplit("-", 1)[0]

    def add_engine(self, pool: str):  # type: ignore[no-untyped-def]
        name = f"{pool}-{len(self.engines)}"
        return name, lambda: FakeEngine(name)

    def supervise_engine(self, name, starter) -> None:  # type: ignore[no-untyped-def]
        self.engines.append(starter())
        self.started.set()

    def retire_engine(self, engine: FakeEngine) -> None:
        self.retired.append(engine.name)

    def forget_engine(self, engine: FakeEngine) -> None:
        self.engines.remove(engine)


def scaler(n: int) -> tuple[EngineScaler, FakeMesh, _Pool]:
    mesh = FakeMesh(n)
    return EngineScaler(mesh, say=lambda m: None), mesh, _Pool("small", 1, 3)


def test_it_grows_one_engine_at_a_time_within_the_bounds():
    s, mesh, pool = scaler(1)
    s.act(pool, 5)
    assert pool.starting is not None
    pool.starting.join(5)
    assert [e.name for e in mesh.engines] == ["small-0", "small-1"]
    s.act(pool, 5)
    pool.starting.join(5)
    s.act(pool, 5)  # at max_engines (3): nothing more
    assert len(mesh.engines) == 3 and pool.starting is None


def test_it_drains_the_newest_first_and_forgets_it_once_it_exited():
    s, mesh, pool = scaler(3)
    s.act(pool, 1)
    assert mesh.retired == ["small-2"]
    s.act(pool, 1)  # one drain at a time
    assert mesh.retired == ["small-2"]
    mesh.engines[2].exit = 0
    s.act(pool, 1)
    assert mesh.retired == ["small-2", "small-1"]
    assert [e.name for e in mesh.engines] == ["small-0", "small-1"]
    mesh.engines[1].exit = 0
    s.act(pool, 0)  # never below min_engines (1)
    assert [e.name for e in mesh.engines] == ["small-0"] and mesh.retired[-1] == "small-1"
