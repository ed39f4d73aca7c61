import pytest

from services.common.config import parse_config
from services.common.errors import ConfigError
from services.safety.config import SafetyConfig


def test_tenant_beats_model_beats_default():
    cfg = parse_config(
        {
            "default": {"actions": {"EMAIL": "redact", "IPV4": "allow"}},
            "models": {"large": {"actions": {"EMAIL": "mask"}, "default_action": "mask"}},
            "tenants": {"acme": {"actions": {"EMAIL": "block"}}},
        },
        SafetyConfig,
    )
    assert cfg.policy().action("EMAIL") == "redact"
    assert cfg.policy(model="large").action("EMAIL") == "mask"
    assert cfg.policy(model="large").action("PHONE") == "mask"
    assert cfg.policy(tenant="acme", model="large").action("EMAIL") == "block"
    assert cfg.policy(tenant="acme").action("IPV4") == "allow"


def test_tenant_keys_differ_and_stay_out_of_repr():
    cfg = SafetyConfig()
    a, b = cfg.policy(tenant="a"), cfg.policy(tenant="b")
    assert a.tenant_key != b.tenant_key and a.tenant_key == cfg.policy(tenant="a").tenant_key
    assert "tenant_key" not in repr(a)


def test_unknown_action_names_the_field():
    with pytest.raises(ConfigError, match=r"safety.yaml: tenants.acme.actions.EMAIL"):
        parse_config(
            {"tenants": {"acme": {"actions": {"EMAIL": "shred"}}}}, SafetyConfig, "safety.yaml"
        )
