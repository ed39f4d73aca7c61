"""`GET /v1/models`: the models and aliases a caller may use, as OpenAI lists them."""

from __future__ import annotations

import json
from collections.abc import Iterable

OWNER = "switchyard"


def listing(ids: Iterable[tuple[str, str]], created: int) -> bytes:
    """The list object for (id, owned_by) pairs: served model names and their aliases."""
    data = [
        {"id": model_id, "object": "model", "created": created, "owned_by": owner}
        for model_id, owner in ids
    ]
    return json.dumps({"object": "list", "data": data}, separators=(",", ":")).encode()


def one(model_id: str, created: int) -> bytes:
    """The model object of `GET /v1/models/{id}`."""
    obj = {"id": model_id, "object": "model", "created": created, "owned_by": OWNER}
    return json.dumps(obj, separators=(",", ":")).encode()
