"""Progress for long start-up work: a line per phase, and a heartbeat while one runs long.

    with Progress("engine l4-small-0") as p:
        with p.phase("loading model small"):
            ...

prints to stderr:
    [engine l4-small-0] loading model small ...
    [engine l4-small-0] loading model small ... 10s
    [engine l4-small-0] loading model small: done in 41.2s
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import TextIO


class Progress:
    def __init__(self, name: str, *, stream: TextIO | None = None, every: float = 10.0) -> None:
        self.name = name
        self._stream = stream or sys.stderr
        self._every = every
        self._started = time.monotonic()

    def say(self, text: str) -> None:
        print(f"[{self.name}] {text}", file=self._stream, flush=True)

    @contextmanager
    def phase(self, what: str) -> Iterator[None]:
        self.say(f"{what} ...")
        start = time.monotonic()
        done = threading.Event()

        def tick() -> None:
            while not done.wait(self._every):
                self.say(f"{what} ... {time.monotonic() - start:.0f}s")

        ticker = threading.Thread(target=tick, name=f"progress:{what}", daemon=True)
        ticker.start()
        try:
            yield
        except BaseException:
            self.say(f"{what}: failed after {time.monotonic() - start:.1f}s")
            raise
        finally:
            done.set()
            ticker.join()
        self.say(f"{what}: done in {time.monotonic() - start:.1f}s")

    def elapsed(self) -> float:
        return time.monotonic() - self._started

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None
