"""What every test shares: the mesh's local state (PKI, API keys, the development key, `up`'s
state file) lives in a directory of this test session, never in the user's ~/.cache."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.redis_server import RedisServer


@pytest.fixture(scope="session", autouse=True)
def switchyard_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    home = tmp_path_factory.mktemp("switchyard-home")
    env = {
        "SWITCHYARD_PKI": str(home / "pki"),
        "SWITCHYARD_KEYS": str(home / "keys.json"),
        "SWITCHYARD_DEV_KEY": str(home / "dev-key"),
        "SWITCHYARD_STATE": str(home / "up-state.json"),
        "SWITCHYARD_TENANTS": str(home / "tenants.json"),
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # subprocesses (engines, the router, `switchyard up`) inherit it
    yield home
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def operator_tls(switchyard_home: Path):  # type: ignore[no-untyped-def]
    """The operator identity from the session's PKI: how tests call engines and the router."""
    from services.common.pki import OPERATOR
    from services.common.tls import TlsConfig

    return TlsConfig.model_validate({}).files(OPERATOR)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A real redis-server (Debian's package) on loopback for this test session."""
    server = RedisServer.start(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()
