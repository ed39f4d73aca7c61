"""The Python client of `switchyard.v1.Inference`: `MeshClient` for applications (it resumes a
turn whose engine dies mid-stream), and plain one-call helpers for tests and benchmarks.

    async with MeshClient.connect("127.0.0.1:8080", key=API_KEY) as mesh:
        reply = await mesh.generate(make_request("Hello", max_tokens=64), out=sys.stdout)
        print(reply.final.resumed)               # times the turn moved to another engine

    async for msg in mesh.stream(request):       # or message by message
        ...

How a turn resumes (the protocol any client can follow, see `Continuation` in
protos/switchyard/v1/inference.proto): an engine sends its response headers, with
`x-switchyard-served-by-bin`, as soon as it takes a turn. If the stream then breaks — the
engine's process died (Envoy can only reset the stream: INTERNAL "RST_STREAM"), its vLLM core
died (UNAVAILABLE), the safety filter or Envoy restarted — the client sends the same request
again with `continuation` set to the text it has received and the tokens that text came from.
The mesh routes it like any turn (prefix-aware, so onto an engine that holds the prompt's cache
when it can) and the engine streams only what follows, so the caller reads one stream with
nothing repeated or lost; the Final counts usage for the whole turn and says how often it was
resumed. A continuation that finds no place yet (UNAVAILABLE: the mesh is restarting an engine,
the router or the safety filter) is offered again with backoff for `ResumePolicy.retry_for`
seconds; a turn is resumed at most `ResumePolicy.max_resumes` times. A turn with structured output
is never resumed (it could not continue exactly): its error reaches the caller as it came, as
does any error before an engine took the turn (Envoy already retries those on other engines).
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import TextIO

import grpc

from services.common import headers
from services.common.server import MAX_MESSAGE_BYTES
from services.common.tls import TlsFiles
from services.common.tls import channel as tls_channel
from switchyard.v1 import inference_pb2, inference_pb2_grpc

log = logging.getLogger(__name__)

CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
]


def channel(target: str, tls: TlsFiles | None = None) -> grpc.aio.Channel:
    """A channel to the mesh (Envoy: plaintext, an API key per call) or, with `tls` (the
    operator identity), straight to one of its services, e.g. an engine."""
    return tls_channel(target, tls, CHANNEL_OPTIONS)


def bearer(key: str) -> tuple[tuple[str, str], ...]:
    """The call metadata that presents an API key (or a JWT)."""
    return ((headers.AUTHORIZATION, f"Bearer {key}"),) if key else ()


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
    # The continuation sent after each break, in order (what was received up to it).
    resumes: list[inference_pb2.Continuation] = field(default_factory=list)

    def _add(self, msg: inference_pb2.GenerateResponse, out: TextIO | None) -> None:
        if msg.HasField("delta"):
            self.deltas.append(msg.delta.text)
            if out is not None:
                out.write(msg.delta.text)
                out.flush()
        else:
            if self.final is not None:
                raise RuntimeError("stream carried more than one Final")
            self.final = msg.final


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
        reply._add(msg, out)
    reply.trace_id = await _trace_id(call)
    reply.text = "".join(reply.deltas)
    return reply


async def _trace_id(call: grpc.aio.UnaryStreamCall) -> str:
    trailing = await call.trailing_metadata()
    return str((trailing and trailing.get(headers.TRACE_ID)) or "")


@dataclass(frozen=True)
class ResumePolicy:
    """How hard `MeshClient` tries to finish a turn whose stream broke."""

    max_resumes: int = 3  # breaks resumed per turn, at most
    # After a break, how long to keep offering the continuation while the mesh has no place
    # for it yet (UNAVAILABLE: the safety filter, the router or every engine restarting).
    retry_for: float = 15.0
    backoff: float = 0.25  # seconds between those tries, doubling
    max_backoff: float = 2.0


# After an engine took the turn, these mean the stream broke (engine, Envoy or safety gone),
# not that the request was wrong.
BROKEN_STREAM = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.INTERNAL,  # Envoy resets the stream: "RST_STREAM with error code 2"
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.ABORTED,
    }
)


def continuation_of(
    request: inference_pb2.GenerateRequest,
    received: str,
    tokens: int,
    resumed: int,
    model_version: str = "",
) -> inference_pb2.GenerateRequest:
    """`request`, resumed after `received` (the text of `tokens` completion tokens), on
    `model_version` (the arm that served the stream) while it serves."""
    out = inference_pb2.GenerateRequest()
    out.CopyFrom(request)
    out.continuation.received_text = received
    out.continuation.completion_tokens = tokens
    out.continuation.resumed = resumed
    out.continuation.model_version = model_version
    return out


class MeshClient:
    """Streams turns from the mesh and resumes one whose stream breaks once an engine took it.

    `resume=None` turns resuming off (errors reach the caller as they come)."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        *,
        resume: ResumePolicy | None = ResumePolicy(),
        metadata: Sequence[tuple[str, str]] = (),
    ) -> None:
        self._channel = channel
        self._stub = inference_pb2_grpc.InferenceStub(channel)
        self._resume = resume
        self._metadata = tuple(metadata)
        self._owned = False

    @classmethod
    def connect(
        cls, target: str, *, key: str = "", tls: TlsFiles | None = None, **kwargs: object
    ) -> MeshClient:
        """A client with a channel of its own to `target` (closed with the client) that
        presents the API key `key` on every call."""
        metadata = (*bearer(key), *kwargs.pop("metadata", ()))  # type: ignore[misc]
        client = cls(channel(target, tls), metadata=metadata, **kwargs)  # type: ignore[arg-type]
        client._owned = True
        return client

    async def close(self) -> None:
        if self._owned:
            await self._channel.close()

    async def __aenter__(self) -> MeshClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def generate(
        self,
        request: inference_pb2.GenerateRequest,
        *,
        timeout: float | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        out: TextIO | None = None,
    ) -> Reply:
        """Stream one turn (resuming it if it breaks); write deltas to `out` as they arrive."""
        reply = Reply()
        async for msg in self.stream(request, timeout=timeout, metadata=metadata, reply=reply):
            reply._add(msg, out)
        reply.text = "".join(reply.deltas)
        return reply

    async def stream(
        self,
        request: inference_pb2.GenerateRequest,
        *,
        timeout: float | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        reply: Reply | None = None,
    ) -> AsyncIterator[inference_pb2.GenerateResponse]:
        """The turn's messages (deltas, then one Final), as one stream across resumes. `reply`,
        when given, gets the trace id and the continuations sent (not the messages)."""
        md = self._metadata + tuple(metadata)
        deadline = None if timeout is None else time.monotonic() + timeout
        received: list[str] = []
        tokens = resumed = 0
        version = ""  # the model version (arm) that took the turn, once one has
        broke_at = 0.0  # when the last break happened (monotonic)
        wait = self._resume.backoff if self._resume else 0.0
        req = request
        finished = False  # the Final arrived: the turn is whole whatever happens to the stream
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            call = self._stub.Generate(req, timeout=left, metadata=md)
            try:
                async for msg in call:
                    if msg.HasField("delta"):
                        received.append(msg.delta.text)
                        tokens += msg.delta.token_count
                    else:
                        finished = True
                    yield msg
                if reply is not None:
                    reply.trace_id = await _trace_id(call)
                return
            except GeneratorExit:  # the caller stopped reading: the turn is cancelled
                call.cancel()
                raise
            except grpc.aio.AioRpcError as e:
                if finished:
                    # Broken after its Final (a hop died before the trailers): nothing was lost,
                    # and resuming would add a second Final.
                    log.info("turn complete, its stream then broke (%s); not resumed", e.code())
                    return
                initial = await call.initial_metadata()
                accepted = _accepted(initial)
                policy = self._resume
                now = time.monotonic()
                placing = resumed > 0 and e.code() == grpc.StatusCode.UNAVAILABLE
                if (
                    policy is None
                    or request.structured_output.WhichOneof("kind") is not None
                    or e.code() not in BROKEN_STREAM
                    or not (accepted or placing)
                    or (accepted and resumed >= policy.max_resumes)
                    or (not accepted and now - broke_at + wait > policy.retry_for)
                    or (deadline is not None and now + wait >= deadline)
                ):
                    raise
                if accepted:
                    resumed += 1
                    broke_at, wait = now, policy.backoff
                    # The continuation stays with the model that took the turn (a tiered name
                    # such as "auto" could choose another).
                    served = inference_pb2.ServedBy.FromString(initial[headers.SERVED_BY])
                    if served.model and served.model != request.model:
                        request = _with_model(request, served.model)
                    version = served.model_version  # and with its version (a canary arm)
                else:  # the continuation found no place yet: wait, then offer it again
                    await asyncio.sleep(wait)
                    wait = min(policy.max_backoff, wait * 2)
                req = continuation_of(request, "".join(received), tokens, resumed, version)
                if accepted and reply is not None:
                    reply.resumes.append(req.continuation)


def _with_model(
    request: inference_pb2.GenerateRequest, model: str
) -> inference_pb2.GenerateRequest:
    out = inference_pb2.GenerateRequest()
    out.CopyFrom(request)
    out.model = model
    return out


def _accepted(initial: grpc.aio.Metadata | None) -> bool:
    """Whether an engine took the turn (its response headers arrived)."""
    return bool(initial) and initial.get(headers.SERVED_BY) is not None  # type: ignore[union-attr]


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
    if final is not None and final.resumed:
        times = "once" if final.resumed == 1 else f"{final.resumed} times"
        print(f"resumed {times} on another engine after its stream broke", file=err)
    if final is not None and final.HasField("safety") and final.safety.findings:
        found = ", ".join(f"{f.type} {f.action} x{f.count}" for f in final.safety.findings)
        print(f"safety: {found}", file=err)
    if trace_id:
        print(f"trace {trace_id}  (switchyard trace {trace_id[:12]})", file=err)
