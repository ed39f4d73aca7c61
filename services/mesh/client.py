"""A small gRPC client of `switchyard.v1.Inference`, used by the CLI, tests and benchmarks."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import TextIO

import grpc

from services.common import headers
from services.common.server import MAX_MESSAGE_BYTES
from switchyard.v1 import inference_pb2, inference_pb2_grpc

CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
]


def channel(target: str) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS)


def make_request(
    prompt: str | None = None,
    *,
    messages: Sequence[tuple[str, str]] = (),
    model: str = "",
    max_tokens: int | None = None,
    temperature: float | None = None,
    regex: str | None = None,
    session_id: str = "",
    priority: int = 0,
    ignore_eos: bool = False,
    seed: int | None = None,
) -> inference_pb2.GenerateRequest:
    """A GenerateRequest from plain arguments: a prompt, or chat `messages` as (role, text)."""
    req = inference_pb2.GenerateRequest(model=model, session_id=session_id, priority=priority)
    if messages:
        req.conversation.messages.extend(
            inference_pb2.ChatMessage(role=r, content=t) for r, t in messages
        )
    elif prompt is not None:
        req.prompt = prompt
    if max_tokens is not None:
        req.sampling.max_tokens = max_tokens
    if temperature is not None:
        req.sampling.temperature = temperature
    if seed is not None:
        req.sampling.seed = seed
    req.sampling.ignore_eos = ignore_eos
    if regex is not None:
        req.structured_output.regex = regex
    return req


@dataclass
class Reply:
    """A whole streamed reply, collected."""

    text: str = ""
    deltas: list[str] = field(default_factory=list)
    final: inference_pb2.Final | None = None
    trace_id: str = ""  # the turn's trace (response metadata), when it was traced


async def generate(
    stub: inference_pb2_grpc.InferenceStub,
    request: inference_pb2.GenerateRequest,
    *,
    timeout: float | None = None,
    metadata: Sequence[tuple[str, str]] = (),
    out: TextIO | None = None,
) -> Reply:
    """Stream one turn; write deltas to `out` as they arrive; return the collected reply."""
    reply = Reply()
    call = stub.Generate(request, timeout=timeout, metadata=tuple(metadata))
    async for msg in call:
        if msg.HasField("delta"):
            reply.deltas.append(msg.delta.text)
            if out is not None:
                out.write(msg.delta.text)
                out.flush()
        else:
            if reply.final is not None:
                raise RuntimeError("stream carried more than one Final")
            reply.final = msg.final
    trailing = await call.trailing_metadata()
    reply.trace_id = str((trailing and trailing.get(headers.TRACE_ID)) or "")
    reply.text = "".join(reply.deltas)
    return reply


async def stream(
    stub: inference_pb2_grpc.InferenceStub,
    request: inference_pb2.GenerateRequest,
    *,
    timeout: float | None = None,
    metadata: Sequence[tuple[str, str]] = (),
) -> AsyncIterator[inference_pb2.GenerateResponse]:
    call = stub.Generate(request, timeout=timeout, metadata=tuple(metadata))
    async for msg in call:
        yield msg


def describe_final(final: inference_pb2.Final) -> str:
    """One human line: finish reason, who served it, usage and timing."""
    sb, u, t = final.served_by, final.usage, final.timing
    reason = inference_pb2.FinishReason.Name(final.finish_reason).removeprefix("FINISH_REASON_")
    return (
        f"[{reason.lower()}] served by {sb.engine} (pool {sb.pool}, {sb.accelerator}, "
        f"model {sb.model}@{sb.model_version}) | tokens: prompt {u.prompt_tokens} "
        f"(cached {u.cached_prompt_tokens}), completion {u.completion_tokens} | "
        f"queue {t.queue.ToMilliseconds()} ms, ttft {t.ttft.ToMilliseconds()} ms, "
        f"decode {t.decode.ToMilliseconds()} ms"
    )


def print_final(
    final: inference_pb2.Final | None, err: TextIO = sys.stderr, trace_id: str = ""
) -> None:
    print(file=err)
    print(describe_final(final) if final is not None else "(no Final received)", file=err)
    if final is not None and final.HasField("safety") and final.safety.findings:
        found = ", ".join(f"{f.type} {f.action} x{f.count}" for f in final.safety.findings)
        print(f"safety: {found}", file=err)
    if trace_id:
        print(f"trace {trace_id}  (switchyard trace {trace_id[:12]})", file=err)
