"""Live model-routing config (services/router/reload.py): what reloads live, what needs a
restart, and an invalid file refused with the running config kept."""

from pathlib import Path

import pytest
import yaml

from services.common.config import parse_config
from services.common.errors import FailedPrecondition, InvalidArgument
from services.router.config import MeshConfig
from services.router.reload import ConfigReloader, live_changes, needs_restart, pool_changes

BASE = {
    "aliases": {"chat": "small"},
    "pools": [
        {"name": "big", "accelerator": "h100", "models": [{"name": "large", "tokenizer": "/t"}]},
        {"name": "little", "accelerator": "l4", "models": [{"name": "small", "tokenizer": "/t"}]},
    ],
}


def write(path: Path, data: dict) -> None:  # type: ignore[type-arg]
    path.write_text(yaml.safe_dump(data))


def parsed(data: dict) -> MeshConfig:  # type: ignore[type-arg]
    return parse_config(data, MeshConfig)


def test_what_reloads_live_and_what_needs_a_restart():
    new = yaml.safe_load(yaml.safe_dump(BASE))
    new["aliases"]["fast"] = "small"
    new["tiers"] = {"auto": ["small", "large"]}
    new["pools"][0]["cost"] = {"usd_per_million_tokens": 8}
    new["pools"][1]["models"][0]["handles"] = "easy"
    assert needs_restart(BASE, new) == []
    assert live_changes(BASE, new) == ["aliases", "tiers"]
    assert pool_changes(parsed(BASE), parsed(new)) == ["pools.big.cost", "pools.little.models"]
    new["pools"][1]["accelerator"] = "a100"
    new["envoy"] = {"listen": "0.0.0.0:8080"}
    assert needs_restart(BASE, new) == ["envoy"]
    assert "pools.little.accelerator" in pool_changes(parsed(BASE), parsed(new))
    extra = {"name": "extra", "accelerator": "l4", "models": [{"name": "tiny", "tokenizer": "/t"}]}
    changed = {**BASE, "pools": [BASE["pools"][1], extra]}
    assert pool_changes(parsed(BASE), parsed(changed)) == ["pools.extra added", "pools.big removed"]


def test_a_reload_applies_a_valid_file_and_refuses_others_keeping_the_running_config(tmp_path):
    path = tmp_path / "mesh.yaml"
    write(path, BASE)
    applied: list[MeshConfig] = []
    r = ConfigReloader(path, applied.append)
    assert r.reload() == [] and applied == []  # nothing changed
    write(path, {**BASE, "aliases": {"chat": "small", "deep": "large"}})
    assert r.reload() == ["aliases"]
    assert applied[-1].aliases == {"chat": "small", "deep": "large"}
    write(path, {**BASE, "aliases": {"deep": "huge"}})
    with pytest.raises(InvalidArgument, match=r"aliases\.deep: 'huge' is not a model of any pool"):
        r.reload()
    write(path, {**BASE, "aliases": {"deep": "large"}, "router": {"listen": "127.0.0.1:1"}})
    with pytest.raises(FailedPrecondition, match="changes router, which need a restart"):
        r.reload()
    path.write_text("aliases: [unclosed")
    with pytest.raises(InvalidArgument, match="mesh config is invalid"):
        r.reload()
    assert len(applied) == 1  # none of the refused ones reached the router
    extra = {"name": "extra", "accelerator": "l4", "models": [{"name": "tiny", "tokenizer": "/t"}]}
    aliases = {"chat": "small", "deep": "large"}
    write(path, {**BASE, "aliases": aliases, "pools": [*BASE["pools"], extra]})
    assert r.reload() == ["pools.extra added"]
    assert [p.name for p in applied[-1].pools] == ["big", "little", "extra"]


def test_a_reload_the_router_refuses_changes_nothing(tmp_path):
    path = tmp_path / "mesh.yaml"
    write(path, BASE)

    def refuse(cfg: MeshConfig) -> None:
        raise FailedPrecondition("pools big still have engines registered")

    r = ConfigReloader(path, refuse)
    write(path, {**BASE, "pools": BASE["pools"][1:], "aliases": {"chat": "small"}})
    with pytest.raises(FailedPrecondition, match="still have engines"):
        r.reload()
    with pytest.raises(FailedPrecondition):  # still to apply: the baseline did not move
        r.reload()


async def test_the_router_notices_an_edited_file_by_itself(tmp_path):
    import asyncio

    path = tmp_path / "mesh.yaml"
    write(path, BASE)
    applied: list[MeshConfig] = []
    r = ConfigReloader(path, applied.append)
    watching = asyncio.create_task(r.watch(0.01))
    try:
        await asyncio.sleep(0.05)
        write(path, {**BASE, "default_model": "large"})
        import os

        os.utime(path, (1, 1))  # (a new mtime even within the file system's resolution)
        for _ in range(100):
            if applied:
                break
            await asyncio.sleep(0.01)
        assert applied and applied[-1].default_model == "large"
    finally:
        watching.cancel()


def test_a_router_started_on_a_rendered_copy_applies_what_the_watched_file_changed_since(
    tmp_path,
):
    # `up` runs the router on a copy rendered at its start; the router restarted after an edit
    # of the file `up` was given still runs that copy: its first reload applies the edit.
    path = tmp_path / "mesh.yaml"
    write(path, {**BASE, "aliases": {"chat": "small", "deep": "large"}})
    rendered = tmp_path / "rendered.yaml"  # ports, paths filled in
    write(rendered, {**BASE, "router": {"listen": "127.0.0.1:4242"}})
    applied: list[MeshConfig] = []
    r = ConfigReloader(path, applied.append, rendered)
    assert r.reload() == ["aliases"]
    assert applied[-1].aliases == {"chat": "small", "deep": "large"}
    assert r.reload() == []
