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


def test_allow_lists_add_up_and_are_checked() -> None:
    import pydantic
    import pytest

    from services.safety.config import SafetyConfig

    cfg = SafetyConfig.model_validate(
        {
            "default": {"allow": {"domains": ["Corp.Example"]}},
            "tenants": {"acme": {"allow": {"domains": ["acme.com"], "values": ["4111 1111"]}}},
        }
    )
    acme, other = cfg.policy("acme"), cfg.policy("other")
    assert acme.allow_domains == {"corp.example", "acme.com"} and acme.allow_values == {"41111111"}
    assert other.allow_domains == {"corp.example"} and not other.allow_values
    with pytest.raises(pydantic.ValidationError, match=r"allow\.domains"):
        SafetyConfig.model_validate({"default": {"allow": {"domains": ["bob@acme.com"]}}})
