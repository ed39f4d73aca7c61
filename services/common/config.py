"""Typed YAML configuration: `${VAR}` / `${VAR:-default}` expansion, then pydantic validation.

Errors name the file and the field, e.g.
`engine.yaml: vllm.max_model_len: Input should be a valid integer (got 'big')`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import pydantic
import yaml

from services.common.errors import ConfigError

ModelT = TypeVar("ModelT", bound=pydantic.BaseModel)

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_env(value: Any, env: Mapping[str, str] | None = None) -> Any:
    """Expand `${VAR}` and `${VAR:-default}` in every string of a YAML document."""
    environ = os.environ if env is None else env
    if isinstance(value, str):

        def sub(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            if name in environ:
                return environ[name]
            if default is not None:
                return default
            raise ConfigError(f"environment variable {name} is not set (used as ${{{name}}})")

        return _VAR.sub(sub, value)
    if isinstance(value, list):
        return [expand_env(v, environ) for v in value]
    if isinstance(value, dict):
        return {k: expand_env(v, environ) for k, v in value.items()}
    return value


def format_validation_error(source: str, err: pydantic.ValidationError) -> str:
    lines = []
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "(root)"
        got = f" (got {e['input']!r})" if e["type"] not in {"missing", "extra_forbidden"} else ""
        lines.append(f"{source}: {where}: {e['msg']}{got}")
    return "\n".join(lines)


def parse_config(data: Any, model: type[ModelT], source: str = "config") -> ModelT:
    """Validate an already-loaded document against `model`; raises ConfigError naming fields."""
    try:
        return model.model_validate(expand_env(data if data is not None else {}))
    except pydantic.ValidationError as e:
        raise ConfigError(format_validation_error(source, e)) from None


def load_config(path: str | Path, model: type[ModelT]) -> ModelT:
    """Load a YAML file into `model`. Relative paths inside stay relative to the caller."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise ConfigError(f"cannot read config {p}: {e.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{p.name}: invalid YAML: {e}") from None
    return parse_config(data, model, p.name)


class StrictModel(pydantic.BaseModel):
    """Base for config models: unknown fields are errors, not silently ignored."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)
