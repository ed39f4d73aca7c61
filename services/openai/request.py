"""OpenAI request bodies → `GenerateRequest`, and the `Wire` that says how to answer.

    wire, req = translate("/v1/chat/completions", b'{"model": "small", "messages": [...]}')

Every field OpenAI documents for chat completions and completions is either translated or
refused with an `InvalidArgument` naming it (param set): a client never gets silently
different behaviour. Translated: `messages` (string content, or an array of text parts) or
`prompt`, `max_tokens`/`max_completion_tokens`, `temperature`, `top_p`, `stop`, `seed`,
`presence_penalty`, `frequency_penalty`, `user` (a label), `response_format` (`json_schema`,
`json_object`, `text`), `stream` and `stream_options.include_usage`. Switchyard's extensions:
`session_id`, `regex`, `priority`, `truncate_prompt`, and vLLM's `top_k`, `min_p`,
`repetition_penalty`, `ignore_eos`.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode

from services.common.errors import InvalidArgument, NotFound
from switchyard.v1 import inference_pb2

CHAT_PATH = "/v1/chat/completions"
COMPLETIONS_PATH = "/v1/completions"
MODELS_PATH = "/v1/models"
PATHS = (CHAT_PATH, COMPLETIONS_PATH, MODELS_PATH)
PREFIX = "/v1/"

# Refused with a reason: the feature is not served here.
_UNSUPPORTED = {
    "tools": "tool calling is not supported",
    "tool_choice": "tool calling is not supported",
    "functions": "function calling is not supported",
    "function_call": "function calling is not supported",
    "audio": "audio output is not supported",
    "prediction": "predicted outputs are not supported",
    "web_search_options": "web search is not supported",
    "suffix": "suffix is not supported",
}
# Accepted and ignored: they change nothing about how a turn is generated.
_IGNORED = {"store", "metadata", "service_tier", "parallel_tool_calls", "reasoning_effort"}
_COMMON = {
    "model",
    "stream",
    "stream_options",
    "max_tokens",
    "temperature",
    "top_p",
    "stop",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "user",
    "n",
    "logprobs",
    "logit_bias",
    "response_format",
    # Switchyard's and vLLM's extensions
    "session_id",
    "regex",
    "priority",
    "truncate_prompt",
    "top_k",
    "min_p",
    "repetition_penalty",
    "ignore_eos",
}
_CHAT = _COMMON | {"messages", "max_completion_tokens", "top_logprobs", "modalities"}
_COMPLETIONS = _COMMON | {"prompt", "echo", "best_of"}
_ROLES = {"system", "developer", "user", "assistant"}
MAX_STOP = 4


@dataclass(frozen=True)
class Wire:
    """How an HTTP turn is answered; travels from the router to the safety filter in the
    `x-switchyard-openai` request header (clients cannot set it: Envoy strips it)."""

    api: str  # "chat" or "completions"
    stream: bool  # SSE events, or one JSON object
    include_usage: bool  # stream_options.include_usage: a last chunk with the usage
    id: str  # "chatcmpl-…" / "cmpl-…"
    created: int  # Unix seconds
    model: str = ""  # what answers (the served model the router resolved)

    def encode(self) -> str:
        return urlencode(
            {
                "api": self.api,
                "stream": int(self.stream),
                "usage": int(self.include_usage),
                "id": self.id,
                "created": self.created,
                "model": self.model,
            }
        )

    @classmethod
    def decode(cls, value: str) -> Wire:
        f = dict(parse_qsl(value, keep_blank_values=True))
        return cls(
            api=f.get("api", "chat"),
            stream=f.get("stream") == "1",
            include_usage=f.get("usage") == "1",
            id=f.get("id", ""),
            created=int(f.get("created") or 0),
            model=f.get("model", ""),
        )

    def serving(self, model: str) -> Wire:
        return replace(self, model=model)


def api_of(path: str) -> str | None:
    """The API an HTTP path names ("chat", "completions", "models", "model" for
    `/v1/models/{id}`); None for gRPC paths. An unknown `/v1/` path raises NotFound."""
    if not path.startswith(PREFIX):
        return None
    path = path.partition("?")[0].rstrip("/")
    if path == CHAT_PATH:
        return "chat"
    if path == COMPLETIONS_PATH:
        return "completions"
    if path == MODELS_PATH:
        return "models"
    if path.startswith(MODELS_PATH + "/"):
        return "model"
    raise NotFound(
        f"{path} is not served (the mesh serves POST {CHAT_PATH}, POST {COMPLETIONS_PATH} "
        f"and GET {MODELS_PATH}[/{{model}}])"
    )


def model_id(path: str) -> str:
    """The model a `/v1/models/{id}` path names."""
    return unquote(path.partition("?")[0].rstrip("/")[len(MODELS_PATH) + 1 :])


def _bad(message: str, param: str) -> InvalidArgument:
    return InvalidArgument(message, param=param)


def _number(
    body: dict[str, Any], key: str, lo: float | None = None, hi: float | None = None
) -> float | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _bad(f"{key} must be a number, got {json.dumps(value)}", key)
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise _bad(f"{key} must be in [{lo}, {hi}], got {value}", key)
    return float(value)


def _integer(body: dict[str, Any], key: str, lo: int | None = None) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(f"{key} must be an integer, got {json.dumps(value)}", key)
    if lo is not None and value < lo:
        raise _bad(f"{key} must be at least {lo}, got {value}", key)
    return value


def _string(body: dict[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise _bad(f"{key} must be a string, got {json.dumps(value)[:80]}", key)
    return value


def _boolean(body: dict[str, Any], key: str) -> bool:
    value = body.get(key, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise _bad(f"{key} must be true or false, got {json.dumps(value)[:80]}", key)
    return value


def _content(content: Any, where: str) -> str:
    """A message's content: a string, or an array of text parts (joined)."""
    if isinstance(content, str):
        return content
    if content is None:
        return ""
    if not isinstance(content, list):
        raise _bad(f"{where} must be a string or an array of content parts", where)
    texts = []
    for j, part in enumerate(content):
        at = f"{where}[{j}]"
        if not isinstance(part, dict):
            raise _bad(f"{at} must be an object with a type", at)
        kind = part.get("type")
        if kind != "text":
            raise _bad(
                f"{at}.type {json.dumps(kind)} is not supported: the mesh serves text only "
                "(image, audio and file parts are refused)",
                f"{at}.type",
            )
        text = part.get("text")
        if not isinstance(text, str):
            raise _bad(f"{at}.text must be a string", f"{at}.text")
        texts.append(text)
    return "".join(texts)


def _messages(body: dict[str, Any]) -> inference_pb2.Conversation:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _bad("messages must be a non-empty array of {role, content}", "messages")
    conversation = inference_pb2.Conversation()
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise _bad(f"{where} must be an object with role and content", where)
        role = m.get("role")
        if role == "tool" or m.get("tool_calls") or m.get("function_call"):
            raise _bad(f"{where}: tool calling is not supported", f"{where}.role")
        if role not in _ROLES:
            raise _bad(
                f"{where}.role must be one of {', '.join(sorted(_ROLES))}, got {json.dumps(role)}",
                f"{where}.role",
            )
        text = _content(m.get("content"), f"{where}.content")
        # "developer" is OpenAI's newer name for system instructions.
        conversation.messages.add(role="system" if role == "developer" else role, content=text)
    return conversation


def _prompt(body: dict[str, Any]) -> str:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and all(isinstance(p, str) for p in prompt):
        if len(prompt) != 1:
            raise _bad("prompt: one prompt per request is supported (got a batch)", "prompt")
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise _bad("prompt must be a string (token-id prompts are not supported)", "prompt")
    return prompt


def _stop(body: dict[str, Any]) -> list[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        raise _bad("stop must be a non-empty string or an array of them", "stop")
    if len(stops) > MAX_STOP:
        raise _bad(f"stop takes at most {MAX_STOP} sequences, got {len(stops)}", "stop")
    return stops


def _response_format(body: dict[str, Any], out: inference_pb2.StructuredOutput) -> None:
    rf = body.get("response_format")
    if rf is None:
        return
    kind = rf.get("type") if isinstance(rf, dict) else None
    if kind == "text":
        return
    if kind == "json_object":
        out.json_schema = '{"type": "object"}'
        return
    if kind == "json_schema":
        spec = rf.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise _bad(
                "response_format.json_schema.schema must be a JSON schema object",
                "response_format.json_schema.schema",
            )
        out.json_schema = json.dumps(schema)
        return
    raise _bad(
        "response_format.type must be text, json_object or json_schema, "
        f"got {json.dumps(kind)[:80]}",
        "response_format.type",
    )


def _refuse_unsupported(body: dict[str, Any], allowed: set[str]) -> None:
    for key in body:
        if key in _UNSUPPORTED and body[key] not in (None, [], {}):
            raise _bad(f"{key}: {_UNSUPPORTED[key]}", key)
        if key not in allowed and key not in _IGNORED and key not in _UNSUPPORTED:
            raise _bad(f"{key} is not a supported field", key)
    if _integer(body, "n", lo=1) not in (None, 1):
        raise _bad("n: one choice per request is supported (n must be 1)", "n")
    if _integer(body, "best_of", lo=1) not in (None, 1):
        raise _bad("best_of must be 1", "best_of")
    logprobs = body.get("logprobs")
    if logprobs not in (None, False, 0):
        raise _bad("logprobs are not served", "logprobs")
    if body.get("top_logprobs") not in (None, 0):
        raise _bad("top_logprobs are not served", "top_logprobs")
    if body.get("logit_bias"):
        raise _bad("logit_bias is not supported", "logit_bias")
    if _boolean(body, "echo"):
        raise _bad("echo is not supported", "echo")
    modalities = body.get("modalities")
    if modalities not in (None, ["text"]):
        raise _bad('modalities: only ["text"] is served', "modalities")


def parse_json(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as e:
        raise InvalidArgument(f"the request body is not valid JSON ({e})") from None
    if not isinstance(body, dict):
        raise InvalidArgument("the request body must be a JSON object")
    return body


def translate(
    api: str, raw: bytes, now: float | None = None
) -> tuple[Wire, inference_pb2.GenerateRequest]:
    """The turn an OpenAI request body asks for (`api` "chat" or "completions"); raises
    InvalidArgument naming the field at fault."""
    body = parse_json(raw)
    _refuse_unsupported(body, _CHAT if api == "chat" else _COMPLETIONS)
    req = inference_pb2.GenerateRequest(model=_string(body, "model") or "auto")
    if api == "chat":
        req.conversation.CopyFrom(_messages(body))
    else:
        req.prompt = _prompt(body)
    s = req.sampling
    max_tokens = _integer(body, "max_completion_tokens", lo=1) if api == "chat" else None
    if max_tokens is None:
        max_tokens = _integer(body, "max_tokens", lo=1)
    if max_tokens is not None:
        s.max_tokens = max_tokens
    if (v := _number(body, "temperature", 0.0, 2.0)) is not None:
        s.temperature = v
    if (v := _number(body, "top_p", 0.0, 1.0)) is not None:
        if v == 0.0:
            raise _bad("top_p must be greater than 0", "top_p")
        s.top_p = v
    if (v := _number(body, "presence_penalty", -2.0, 2.0)) is not None:
        s.presence_penalty = v
    if (v := _number(body, "frequency_penalty", -2.0, 2.0)) is not None:
        s.frequency_penalty = v
    if (v := _number(body, "repetition_penalty", 0.0)) is not None:
        s.repetition_penalty = v
    if (v := _number(body, "min_p", 0.0, 1.0)) is not None:
        s.min_p = v
    if (k := _integer(body, "top_k", lo=-1)) is not None:
        s.top_k = k
    if (seed := _integer(body, "seed")) is not None:
        s.seed = seed
    s.stop.extend(_stop(body))
    s.ignore_eos = _boolean(body, "ignore_eos")
    _response_format(body, req.structured_output)
    if (regex := _string(body, "regex")) is not None:
        if req.structured_output.WhichOneof("kind"):
            raise _bad("regex and response_format cannot both constrain the output", "regex")
        req.structured_output.regex = regex
    req.session_id = _string(body, "session_id") or ""
    if (user := _string(body, "user")) is not None:
        req.labels["user"] = user
    if (priority := _integer(body, "priority", lo=0)) is not None:
        req.priority = priority
    req.truncate_prompt = _boolean(body, "truncate_prompt")
    stream = _boolean(body, "stream")
    options = body.get("stream_options")
    include_usage = False
    if options is not None:
        if not stream:
            raise _bad("stream_options is only allowed when stream is true", "stream_options")
        if not isinstance(options, dict):
            raise _bad("stream_options must be an object", "stream_options")
        include_usage = _boolean(options, "include_usage")
    wire = Wire(
        api=api,
        stream=stream,
        include_usage=include_usage,
        id=f"{'chatcmpl' if api == 'chat' else 'cmpl'}-{uuid.uuid4().hex}",
        created=int(time.time() if now is None else now),
    )
    return wire, req
