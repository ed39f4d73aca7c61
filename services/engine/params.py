"""GenerateRequest → what vLLM runs: validated token ids, SamplingParams and priority.

Every rule a request can break lives here and raises `InvalidArgument` with a message that names
the field, so the servicer stays a thin streaming loop and these rules have unit tests of their own.
"""

from __future__ import annotations

import json
import math
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from vllm.sampling_params import RequestOutputKind, SamplingParams, StructuredOutputsParams

from services.common.errors import InvalidArgument
from services.common.tokens import (
    Tokenizer,
    continuation_token_ids,
    fit_context,
    handed_off,
    prompt_token_ids,
)
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

    request_id: str  # the client's id (echoed in the Final), or a generated one
    prompt_token_ids: list[int]  # what vLLM prefills: the prompt, then any resumed text
    sampling: SamplingParams
    priority: int  # vLLM priority: lower runs first (the API's priority, negated)
    truncated_tokens: int = 0  # prompt tokens dropped because truncate_prompt was set
    labels: dict[str, str] = field(default_factory=dict)
    # vLLM's id for the turn: unique even when clients reuse a request_id.
    engine_request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    # Tokens of the prompt proper (usage.prompt_tokens): a resumed turn's received text is
    # prefilled too, but it was generated, so it counts as completion.
    prompt_tokens: int = 0
    # A resumed turn (Continuation): completion tokens already received, and resumes so far.
    resumed_completion_tokens: int = 0
    resumed: int = 0
    # The resumed turn had already used its whole budget: it ends at once (LENGTH), unrun.
    exhausted: bool = False
    # vLLM's prefix-cache salt (the router's, per tenant): blocks are shared only within it.
    cache_salt: str = ""
    # The router's quota reservation for the turn, reported against when the turn ends.
    reservation_id: str = ""
    # Who tokenized the input: "router" (its ids handed over), or "engine".
    tokenized_by: str = "engine"

    def anon_repr(self) -> str:
        """A log line that carries no prompt text."""
        return (
            f"PreparedRequest(id={self.request_id}, prompt_tokens={len(self.prompt_token_ids)}, "
            f"max_tokens={self.sampling.max_tokens}, priority={self.priority}, "
            f"truncated={self.truncated_tokens}, resumed={self.resumed})"
        )


def _check_range(
    name: str,
    value: float,
    lo: float | None,
    hi: float | None,
    lo_open: bool = False,
    hi_open: bool = False,
) -> None:
    if not math.isfinite(value):
        raise InvalidArgument(f"{name} must be a finite number, got {value}")
    low_bad = lo is not None and (value <= lo if lo_open else value < lo)
    high_bad = hi is not None and (value >= hi if hi_open else value > hi)
    if low_bad or high_bad:
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
    resumed_tokens, resumed = _check_continuation(req)

    handed = handed_off(req, tokenizer)  # the router's ids, when they are this tokenizer's
    if handed is not None:
        tokens, prompt_count = handed
    else:
        prompt = prompt_token_ids(req, tokenizer)
        tokens = prompt + continuation_token_ids(req, tokenizer)
        prompt_count = len(prompt)
    by = "engine" if handed is None else "router"
    context = limits.max_model_len
    requested = s.max_tokens if s.HasField("max_tokens") else None
    budget = (requested or limits.default_max_tokens) - resumed_tokens
    if budget <= 0:  # a resumed turn whose stream broke after its last token
        return PreparedRequest(
            request_id=req.request_id or uuid.uuid4().hex,
            prompt_token_ids=tokens,
            sampling=SamplingParams(max_tokens=1),
            priority=-req.priority,
            labels=dict(req.labels),
            prompt_tokens=prompt_count,
            resumed_completion_tokens=resumed_tokens,
            resumed=resumed,
            exhausted=True,
            tokenized_by=by,
        )
    max_tokens, truncated = fit_context(
        len(tokens),
        budget if requested is not None else None,
        context,
        default_max_tokens=budget,
        truncate=req.truncate_prompt,
    )
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
    try:
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
    except ValueError as e:  # a combination vLLM refuses that the checks above let through
        raise InvalidArgument(f"sampling: {e}") from None
    return PreparedRequest(
        request_id=req.request_id or uuid.uuid4().hex,
        prompt_token_ids=tokens,
        sampling=sampling,
        priority=-req.priority,
        truncated_tokens=truncated,
        labels=dict(req.labels),
        prompt_tokens=max(0, prompt_count - truncated),
        resumed_completion_tokens=resumed_tokens,
        resumed=resumed,
        tokenized_by=by,
    )


def _check_continuation(req: inference_pb2.GenerateRequest) -> tuple[int, int]:
    """(completion tokens already received, resumes) of a resumed turn; (0, 0) otherwise."""
    if not req.HasField("continuation"):
        return 0, 0
    c = req.continuation
    kind = req.structured_output.WhichOneof("kind")
    if kind is not None:
        raise InvalidArgument(
            f"continuation: a turn constrained by structured_output.{kind} cannot be resumed "
            "exactly (the constraint would restart after the received text); send the turn "
            "again from the start instead"
        )
    if c.resumed < 1:
        raise InvalidArgument(f"continuation.resumed must be at least 1, got {c.resumed}")
    return c.completion_tokens, c.resumed
