"""GenerateRequest → what vLLM runs: validated token ids, SamplingParams and priority.

Every rule a request can break lives here and raises `InvalidArgument` with a message that names
the field, so the servicer stays a thin streaming loop and these rules have unit tests of their own.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from vllm.sampling_params import RequestOutputKind, SamplingParams, StructuredOutputsParams

from services.common.errors import InvalidArgument
from services.common.tokens import Tokenizer, prompt_token_ids
from switchyard.v1 import inference_pb2


@dataclass(frozen=True)
class Limits:
    """What this engine accepts; built once from the engine config and the loaded model."""

    served_name: str  # the model name requests must use ("" and "auto" are accepted too)
    max_model_len: int  # context window: prompt + generated tokens
    default_max_tokens: int  # used when the request leaves sampling.max_tokens unset
    max_tokens_limit: int  # hard ceiling on sampling.max_tokens


@dataclass
class PreparedRequest:
    """A validated turn, ready for vLLM."""

    request_id: str
    prompt_token_ids: list[int]
    sampling: SamplingParams
    priority: int  # vLLM priority: lower runs first (the API's priority, negated)
    truncated_tokens: int = 0  # prompt tokens dropped because truncate_prompt was set
    labels: dict[str, str] = field(default_factory=dict)

    def anon_repr(self) -> str:
        """A log line that carries no prompt text."""
        return (
            f"PreparedRequest(id={self.request_id}, prompt_tokens={len(self.prompt_token_ids)}, "
            f"max_tokens={self.sampling.max_tokens}, priority={self.priority}, "
            f"truncated={self.truncated_tokens})"
        )


def _check_range(
    name: str,
    value: float,
    lo: float | None,
    hi: float | None,
    lo_open: bool = False,
    hi_open: bool = False,
) -> None:
    low_bad = lo is not None and (value <= lo if lo_open else value < lo)
    high_bad = hi is not None and (value >= hi if hi_open else value > hi)
    if low_bad or high_bad or value != value:  # value != value: NaN
        lb = "(" if lo_open else "["
        hb = ")" if hi_open else "]"
        low = "-inf" if lo is None else f"{lo:g}"
        high = "inf" if hi is None else f"{hi:g}"
        interval = f"{lb}{low}, {high}{hb}"
        raise InvalidArgument(f"{name} must be in {interval}, got {value:g}")


def _structured(so: inference_pb2.StructuredOutput) -> StructuredOutputsParams | None:
    kind = so.WhichOneof("kind")
    if kind is None:
        return None
    if kind == "regex":
        if not so.regex:
            raise InvalidArgument("structured_output.regex must not be empty")
        try:
            re.compile(so.regex)
        except re.error as e:
            raise InvalidArgument(f"structured_output.regex is not a valid regex: {e}") from None
        return StructuredOutputsParams(regex=so.regex)
    if kind == "json_schema":
        try:
            schema = json.loads(so.json_schema)
        except json.JSONDecodeError as e:
            raise InvalidArgument(f"structured_output.json_schema is not valid JSON: {e}") from None
        if not isinstance(schema, dict):
            raise InvalidArgument("structured_output.json_schema must be a JSON object")
        _check_json_schema(schema)
        return StructuredOutputsParams(json=schema)
    choices = list(so.choice.choices)
    if not choices or any(not c for c in choices):
        raise InvalidArgument("structured_output.choice.choices must be non-empty strings")
    return StructuredOutputsParams(choice=choices)


def _check_json_schema(schema: dict[str, Any]) -> None:
    import jsonschema  # installed with vLLM; imported lazily, only schema requests need it

    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as e:
        raise InvalidArgument(
            f"structured_output.json_schema is not a valid schema: {e.message}"
        ) from None


def prepare(
    req: inference_pb2.GenerateRequest, tokenizer: Tokenizer, limits: Limits
) -> PreparedRequest:
    """Validate `req` against `limits` and build the vLLM inputs; raises InvalidArgument."""
    if req.model not in ("", "auto", limits.served_name):
        raise InvalidArgument(
            f"model {req.model!r} is not served here (this engine serves {limits.served_name!r})"
        )
    s = req.sampling
    if s.HasField("max_tokens"):
        if s.max_tokens == 0:
            raise InvalidArgument("sampling.max_tokens must be at least 1, got 0")
        if s.max_tokens > limits.max_tokens_limit:
            raise InvalidArgument(
                f"sampling.max_tokens must be at most {limits.max_tokens_limit}, got {s.max_tokens}"
            )
    if s.HasField("temperature"):
        _check_range("sampling.temperature", s.temperature, 0.0, None)
    if s.HasField("top_p"):
        _check_range("sampling.top_p", s.top_p, 0.0, 1.0, lo_open=True)
    if s.HasField("top_k") and s.top_k not in (0, -1) and s.top_k < 1:
        raise InvalidArgument(f"sampling.top_k must be -1, 0 or at least 1, got {s.top_k}")
    if s.HasField("repetition_penalty"):
        _check_range("sampling.repetition_penalty", s.repetition_penalty, 0.0, None, lo_open=True)
    if s.HasField("presence_penalty"):
        _check_range("sampling.presence_penalty", s.presence_penalty, -2.0, 2.0)
    if s.HasField("frequency_penalty"):
        _check_range("sampling.frequency_penalty", s.frequency_penalty, -2.0, 2.0)
    if s.HasField("min_p"):
        _check_range("sampling.min_p", s.min_p, 0.0, 1.0)
    for i, stop in enumerate(s.stop):
        if not stop:
            raise InvalidArgument(f"sampling.stop[{i}] must not be empty")
    structured = _structured(req.structured_output)

    tokens = prompt_token_ids(req, tokenizer)
    context = limits.max_model_len
    if s.HasField("max_tokens"):
        max_tokens = s.max_tokens
    else:
        max_tokens = min(limits.default_max_tokens, max(1, context - len(tokens)))
    truncated = 0
    if len(tokens) + max_tokens > context:
        room = context - max_tokens
        if not req.truncate_prompt or room < 1:
            raise InvalidArgument(
                f"prompt is {len(tokens)} tokens and sampling.max_tokens is {max_tokens}: together "
                f"they exceed the model's context of {context} tokens (shorten the prompt, lower "
                f"sampling.max_tokens, or set truncate_prompt)"
            )
        truncated = len(tokens) - room
        tokens = tokens[truncated:]

    kwargs: dict[str, Any] = {}
    for name in (
        "temperature",
        "top_p",
        "top_k",
        "repetition_penalty",
        "seed",
        "presence_penalty",
        "frequency_penalty",
        "min_p",
    ):
        if s.HasField(name):
            kwargs[name] = getattr(s, name)
    if kwargs.get("top_k") == 0:
        kwargs["top_k"] = -1
    sampling = SamplingParams(
        n=1,
        max_tokens=max_tokens,
        stop=list(s.stop) or None,
        ignore_eos=s.ignore_eos,
        structured_outputs=structured,
        output_kind=RequestOutputKind.DELTA,
        skip_special_tokens=True,
        **kwargs,
    )
    return PreparedRequest(
        request_id=req.request_id or uuid.uuid4().hex,
        prompt_token_ids=tokens,
        sampling=sampling,
        priority=-req.priority,
        truncated_tokens=truncated,
        labels=dict(req.labels),
    )
