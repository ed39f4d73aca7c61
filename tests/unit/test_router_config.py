import pytest

from services.common.config import parse_config
from services.common.errors import ConfigError, NotFound
from services.router.config import MeshConfig, ModelResolver


def mesh(**kw):
    base = {
        "pools": [
            {
                "name": "h100-large",
                "accelerator": "h100",
                "models": [{"name": "large", "tokenizer": "/m/large"}],
            },
            {
                "name": "l4-small",
                "accelerator": "l4",
                "models": [{"name": "small", "tokenizer": "/m/small"}],
            },
        ],
        "aliases": {"chat": "small", "reasoning": "large"},
    }
    return {**base, **kw}


def test_resolve_names_aliases_and_auto():
    r = ModelResolver(parse_config(mesh(default_model="small"), MeshConfig))
    assert r.resolve("large") == ("h100-large", "large")
    assert r.resolve("chat") == ("l4-small", "small")
    assert r.resolve("") == ("l4-small", "small")
    assert r.resolve("auto") == ("l4-small", "small")
    assert r.aliases_of("small") == ["chat"]


def test_default_model_defaults_to_the_first_pool():
    assert ModelResolver(parse_config(mesh(), MeshConfig)).resolve("auto") == (
        "h100-large",
        "large",
    )


def test_unknown_model_lists_what_exists():
    r = ModelResolver(parse_config(mesh(), MeshConfig))
    with pytest.raises(NotFound, match=r"model 'gpt-9' is unknown \(models: large, small"):
        r.resolve("gpt-9")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"aliases": {"chat": "nope"}}, "aliases.chat: 'nope' is not a model of any pool"),
        ({"aliases": {"small": "large"}}, "aliases.small: an alias may not shadow a model name"),
        ({"default_model": "x"}, "default_model: 'x' is not a model of any pool"),
        ({"pools": []}, "pools"),
        (
            {
                "pools": [
                    {
                        "name": "Bad Name",
                        "accelerator": "x",
                        "models": [{"name": "m", "tokenizer": "/t"}],
                    }
                ]
            },
            "pools.0.name",
        ),
    ],
)
def test_bad_mesh_config_names_the_field(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_config(mesh(**override), MeshConfig, "pools.yaml")


def test_model_in_two_pools_is_rejected():
    cfg = mesh()
    cfg["pools"][1]["models"].append({"name": "large", "tokenizer": "/m/large"})
    with pytest.raises(ConfigError, match="already served by pool 'h100-large'"):
        parse_config(cfg, MeshConfig, "pools.yaml")


def test_local_pools_yaml_is_valid(monkeypatch):
    from pathlib import Path

    from services.router.config import load_mesh_config

    monkeypatch.setenv("SWITCHYARD_MODELS", "/models")
    root = Path(__file__).resolve().parents[2]
    cfg = load_mesh_config(root / "deploy" / "local" / "pools.yaml")
    assert {p.name for p in cfg.pools} == {"h100-large", "l4-small"}
    assert all(g.config.is_file() for p in cfg.pools for g in p.engines)


def test_the_router_stops_on_a_bad_safety_policy_naming_the_field(tmp_path, capsys):
    import yaml

    from services.mesh.cli import main

    (tmp_path / "safety.yaml").write_text("default: {prompt: scrub}\n")
    cfg = mesh(safety={"config": "safety.yaml"})
    (tmp_path / "mesh.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["router", "--config", str(tmp_path / "mesh.yaml")]) == 2
    err = capsys.readouterr().err
    assert "safety.yaml" in err and "default.prompt" in err
