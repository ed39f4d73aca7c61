"""Where Switchyard keeps its local state, and the two ways it writes shared files safely.

home_path("pki", "SWITCHYARD_PKI")   # $SWITCHYARD_PKI, else $SWITCHYARD_HOME/pki
with file_lock(path.with_suffix(".lock")): ...
atomic_write(path, data, mode=0o600)  # readers see the old file or the new, never half
WatchedJson(path, empty={...})        # a JSON file processes share, re-read when it changes
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

DEFAULT_HOME = "~/.cache/switchyard"


def home_path(name: str, env: str) -> Path:
    """`$env` if set, else `name` under $SWITCHYARD_HOME (default ~/.cache/switchyard)."""
    explicit = os.environ.get(env)
    if explicit:
        return Path(explicit).expanduser()
    return Path(os.environ.get("SWITCHYARD_HOME") or DEFAULT_HOME).expanduser() / name


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on `path` (created), held for the block, across processes."""
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def atomic_write(path: Path, data: str | bytes, mode: int = 0o600) -> None:
    """Write `path` through a temporary file moved into place, created with `mode` (so a
    secret is never readable by others, even for a moment)."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
    os.chmod(tmp, mode)  # O_CREAT's mode is masked by the umask; an existing file keeps its own
    tmp.replace(path)


class WatchedJson:
    """A JSON document in a file several processes share: read again (at most every
    `reload_seconds`) when its mtime or size changed; edited under the lock and replaced
    atomically, so every reader sees a change within `reload_seconds`.

        doc = WatchedJson(path, empty={"version": 1, "keys": {}})
        doc.data()                  # the current document (re-read when the file changed)
        with doc.edit() as data:    # locked read-modify-write
            data["keys"]["k"] = {...}
    """

    def __init__(
        self,
        path: Path,
        empty: dict[str, Any],
        *,
        reload_seconds: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path.expanduser()
        self._empty = empty
        self._reload = reload_seconds
        self._clock = clock
        self._data: dict[str, Any] = json.loads(json.dumps(empty))
        self._stamp: tuple[int, int] | None = None
        self._checked = float("-inf")
        self.version = 0  # bumped whenever the document read changed
        self.refresh(force=True)

    def refresh(self, force: bool = False) -> bool:
        """Re-read the file if it changed (or `force`); True when the document changed."""
        now = self._clock()
        if not force and now - self._checked < self._reload:
            return False
        self._checked = now
        try:
            st = self.path.stat()
        except FileNotFoundError:
            if self._stamp is None and not force:
                return False
            self._data, self._stamp = json.loads(json.dumps(self._empty)), None
            self.version += 1
            return True
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp == self._stamp and not force:
            return False
        try:
            self._data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return False
        except ValueError as e:
            raise ValueError(f"{self.path}: not valid JSON ({e})") from None
        self._stamp = stamp
        self.version += 1
        return True

    def data(self, force: bool = False) -> dict[str, Any]:
        self.refresh(force)
        return self._data

    @contextmanager
    def edit(self) -> Iterator[dict[str, Any]]:
        """The document, under an exclusive lock, written back atomically after the block."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with file_lock(self.path.with_name(self.path.name + ".lock")):
            data = json.loads(json.dumps(self._empty))
            if self.path.exists():
                data = json.loads(self.path.read_text())
            yield data
            atomic_write(self.path, json.dumps(data, indent=1, sort_keys=True), 0o600)
        self.refresh(force=True)
