"""Where Switchyard keeps its local state, and the two ways it writes shared files safely.

home_path("pki", "SWITCHYARD_PKI")   # $SWITCHYARD_PKI, else $SWITCHYARD_HOME/pki
with file_lock(path.with_suffix(".lock")): ...
atomic_write(path, data, mode=0o600)  # readers see the old file or the new, never half
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

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
