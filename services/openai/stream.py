"""Scrubbed `GenerateResponse` events → what an OpenAI client reads.

The safety filter's `ResponseFilter` hands each encoder the text it lets through and the Final;
an encoder returns the bytes to send:

- streamed (`stream: true`): one `data: {chunk}\\n\\n` Server-Sent Event per text delta
  (`choices[0].delta.content` for chat, `choices[0].text` for completions; the first chat chunk
  carries the role), a last chunk with the finish reason, with `include_usage` a chunk with
  `choices: []` and the usage, then `data: [DONE]`; an error after the stream started is one
  `data: {"error": {…}}` event (OpenAI's SDKs raise it);
- not streamed: nothing until the Final, then one JSON object with the whole text and usage.

Finish reasons: stop → "stop", length and deadline → "length", a safety block →
"content_filter".
"""

from __future__ import annotations

import json
from typing import Any

from services.openai import errors
from services.openai.request import Wire
from switchyard.v1 import inference_pb2

EVENT_STREAM = "text/event-stream"
DONE = b"data: [DONE]\n\n"

_FR = inference_pb2.FinishReason
FINISH_REASONS = {
    _FR.FINISH_REASON_STOP: "stop",
    _FR.FINISH_REASON_LENGTH: "length",
    _FR.FINISH_REASON_DEADLINE: "length",
    _FR.FINISH_REASON_BLOCKED: "content_filter",
    _FR.FINISH_REASON_ABORTED: "stop",
}


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def usage(u: inference_pb2.Usage) -> dict[str, Any]:
    return {
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens + u.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": u.cached_prompt_tokens},
    }


class Encoder:
    """One HTTP turn's answer, built from the events the safety filter lets through."""

    def __init__(self, wire: Wire) -> None:
        self.wire = wire
        self.chat = wire.api == "chat"
        self._text: list[str] = []  # not streamed: the whole reply, sent with the Final
        self._started = False  # streamed: the role chunk went out
        self.finished = False  # the Final (or an error) was encoded: nothing more to send
        self._head = (
            b'{"id":' + _dumps(wire.id)
            + b',"object":' + (b'"chat.completion.chunk"' if self.chat else b'"text_completion"')
            + b',"created":' + str(wire.created).encode()
            + b',"model":' + _dumps(wire.model)
            + b',"choices":[{"index":0,'
        )  # fmt: skip
        self._tail = b',"logprobs":null,"finish_reason":null}]' + (
            b',"usage":null}' if wire.include_usage else b"}"
        )

    @property
    def content_type(self) -> str:
        return EVENT_STREAM if self.wire.stream else errors.JSON

    def _event(self, payload: bytes) -> bytes:
        return b"data: " + payload + b"\n\n"

    def delta(self, text: str, token_count: int = 0) -> bytes:
        """A piece of reply text (already scrubbed)."""
        if not self.wire.stream:
            self._text.append(text)
            return b""
        # The hot path: one event per token, written without building dicts.
        if self.chat:
            role = b'"role":"assistant",' if not self._started else b""
            choice = b'"delta":{' + role + b'"content":' + _dumps(text) + b"}"
        else:
            choice = b'"text":' + _dumps(text)
        self._started = True
        return self._event(self._head + choice + self._tail)

    def final(self, msg: inference_pb2.GenerateResponse) -> bytes:
        """The turn's end: the finish reason and usage (the Final, possibly a blocking one)."""
        self.finished = True
        final = msg.final
        reason = FINISH_REASONS.get(final.finish_reason, "stop")
        if self.wire.stream:
            return self._last_chunks(reason, final.usage)
        text = "".join(self._text)
        choice: dict[str, Any] = {"index": 0}
        if self.chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        choice.update(logprobs=None, finish_reason=reason)
        return _dumps(
            {
                "id": self.wire.id,
                "object": "chat.completion" if self.chat else "text_completion",
                "created": self.wire.created,
                "model": self.wire.model,
                "choices": [choice],
                "usage": usage(final.usage),
            }
        )

    def _chunk(self, choices: list[dict[str, Any]], **extra: Any) -> bytes:
        return self._event(
            _dumps(
                {
                    "id": self.wire.id,
                    "object": "chat.completion.chunk" if self.chat else "text_completion",
                    "created": self.wire.created,
                    "model": self.wire.model,
                    "choices": choices,
                    **extra,
                }
            )
        )

    def _last_chunks(self, reason: str, u: inference_pb2.Usage) -> bytes:
        choice: dict[str, Any] = {"index": 0}
        if self.chat:
            choice["delta"] = {} if self._started else {"role": "assistant", "content": ""}
        else:
            choice["text"] = ""
        choice.update(logprobs=None, finish_reason=reason)
        out = [self._chunk([choice], **({"usage": None} if self.wire.include_usage else {}))]
        if self.wire.include_usage:
            out.append(self._chunk([], usage=usage(u)))
        out.append(DONE)
        return b"".join(out)

    def error(self, grpc_code: int, message: str) -> bytes:
        """A failure after the turn started: an error event (streamed) or the error object."""
        self.finished = True
        _, error_type = errors.http_status(grpc_code)
        payload = errors.body(
            message, error_type, code="stream_error" if self.wire.stream else None
        )
        return self._event(payload) if self.wire.stream else payload
