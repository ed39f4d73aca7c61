from pathlib import Path

import pytest

from services.common.config import expand_env, parse_config
from services.common.errors import ConfigError
from services.engine.config import EngineConfig, load_engine_config


def config(**kw):
    base = {
        "pool": "l4-small",
        "accelerator": "cpu",
        "model": {"path": "/models/small", "served_name": "small"},
    }
    return {**base, **kw}


def test_minimal_config_has_defaults():
    cfg = parse_config(config(), EngineConfig, "engine.yaml")
    assert cfg.listen == "127.0.0.1:50061"
    assert cfg.kv_events and cfg.warmup
    assert cfg.vllm_args()["scheduling_policy"] == "priority"


def test_vllm_args_pass_through_and_override_defaults():
    cfg = parse_config(
        config(vllm={"tensor_parallel_size": 8, "scheduling_policy": "fcfs"}), EngineConfig
    )
    args = cfg.vllm_args()
    assert args == {"tensor_parallel_size": 8, "scheduling_policy": "fcfs"}


def test_unknown_vllm_arg_names_the_field():
    cfg = parse_config(config(vllm={"tensor_paralel_size": 8}), EngineConfig)
    with pytest.raises(ConfigError, match=r"vllm.tensor_paralel_size: not a vLLM engine argument"):
        cfg.vllm_args()


def test_reserved_vllm_arg_is_rejected():
    with pytest.raises(ConfigError, match=r"engine.yaml: vllm: .*enable_prefix_caching"):
        parse_config(config(vllm={"enable_prefix_caching": False}), EngineConfig, "engine.yaml")


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ({"pool": ""}, "pool"),
        ({"drain_grace_seconds": -1}, "drain_grace_seconds"),
        ({"typo_field": 1}, "typo_field"),
        ({"model": {"path": "/m"}}, "model.served_name"),
    ],
)
def test_errors_name_the_field(override, field):
    with pytest.raises(ConfigError, match=rf"engine.yaml: {field}:"):
        parse_config(config(**override), EngineConfig, "engine.yaml")


def test_env_expansion():
    assert expand_env({"a": ["${X}/m", "${Y:-def}"]}, {"X": "/x"}) == {"a": ["/x/m", "def"]}
    with pytest.raises(ConfigError, match="environment variable NOPE is not set"):
        expand_env("${NOPE}", {})


def test_load_resolves_relative_model_path_and_checks_it(tmp_path: Path):
    (tmp_path / "m").mkdir()
    f = tmp_path / "engine.yaml"
    f.write_text("pool: p\naccelerator: cpu\nmodel: {path: m, served_name: s}\n")
    with pytest.raises(ConfigError, match="not a model directory"):
        load_engine_config(f)
    (tmp_path / "m" / "config.json").write_text("{}")
    assert load_engine_config(f).model.path == (tmp_path / "m").resolve()


def test_model_version_from_manifest(tmp_path: Path):
    (tmp_path / "switchyard-model.json").write_text('{"version": "abc123"}')
    cfg = parse_config(config(model={"path": str(tmp_path), "served_name": "s"}), EngineConfig)
    assert cfg.model_version() == "abc123"
    cfg = parse_config(
        config(model={"path": str(tmp_path), "served_name": "s", "version": "v2"}), EngineConfig
    )
    assert cfg.model_version() == "v2"
