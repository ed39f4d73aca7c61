"""`switchyard.v1.Inference` served by one engine: validate, stream deltas, close with a Final.

Cancellation: when the client goes away grpc cancels this handler, and vLLM's `generate` aborts
the request inside the engine as the cancellation passes through it. Deadline: a timer aborts
the request shortly before the call's deadline so that the client still receives the partial
text and a Final with FINISH_REASON_DEADLINE instead of a bare DEADLINE_EXCEEDED.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.duration_pb2 import Duration
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from services.common import headers
from services.common.errors import Internal, InvalidArgument, SwitchyardError, Unavailable
from services.common.protoutil import Malformed, lenient_deserializer
from services.common.tokens import OFFLOAD_CHARS, input_chars
from services.common.tracing import extract, trace_id_hex
from services.engine import spans
from services.engine.admission import Admission
from services.engine.metrics import EngineMetrics
from services.engine.params import PreparedRequest, prepare
from services.engine.runtime import Runtime
from switchyard.v1 import engine_pb2, inference_pb2

log = logging.getLogger(__name__)

FinishReason = inference_pb2.FinishReason
SERVICE_NAME = "switchyard.v1.Inference"


def deadline_margin(remaining: float) -> float:
    """How long before the call's deadline to stop generating, leaving time for the Final."""
    return min(0.25, max(0.02, 0.1 * remaining))


def _duration(seconds: float) -> Duration:
    d = Duration()
    d.FromNanoseconds(int(max(0.0, seconds) * 1e9))
    return d


class _Stopper:
    """When to stop waiting for a turn's next output (None: not before it ends)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.at: float | None = None
        self.timeout: asyncio.Timeout | None = None  # the wait in progress
        self.drain_expired = False

    def drained(self) -> None:
        """The drain's grace ran out: stop now."""
        self.drain_expired = True
        self.at = self._loop.time()
        if self.timeout is not None:
            self.timeout.reschedule(self.at)


@dataclass
class _Turn:
    """What one turn has produced so far."""

    req: PreparedRequest
    arrived: float  # time.monotonic() at the handler's start
    first_text_at: float | None = None
    completion_tokens: int = 0
    cached_tokens: int = 0
    deadline_hit: bool = False
    last: Any = None  # the last RequestOutput
    span: trace.Span = trace.INVALID_SPAN  # switchyard.engine.generate
    arrived_ns: int = 0  # time.time_ns() at the handler's start
    route: tuple[str, str, str] = ("", "", "")  # the router's: (routed as, why, degraded why)


class InferenceService:
    def __init__(
        self,
        runtime_ref: list[Runtime | None],
        admission: Admission,
        metrics: EngineMetrics,
        served_by: inference_pb2.ServedBy,
        tracer: trace.Tracer | None = None,
        usage: Callable[[engine_pb2.TurnUsage], None] | None = None,
    ) -> None:
        # Where turn usage reports go (the registration stream to the router); None: nowhere.
        self._usage = usage
        # runtime_ref[0] is None while the engine loads; the server answers health meanwhile.
        self._runtime_ref = runtime_ref
        self._admission = admission
        self._metrics = metrics
        self._served_by = served_by
        self._accepted = ((headers.SERVED_BY, served_by.SerializeToString()),)
        self._tracer = tracer or trace.NoOpTracer()

    def add_to_server(self, server: grpc.aio.Server) -> None:
        handler = grpc.unary_stream_rpc_method_handler(
            self.Generate,
            request_deserializer=lenient_deserializer(inference_pb2.GenerateRequest),
            response_serializer=inference_pb2.GenerateResponse.SerializeToString,
        )
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE_NAME, {"Generate": handler}),)
        )

    async def Generate(
        self, request: inference_pb2.GenerateRequest | Malformed, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[inference_pb2.GenerateResponse]:
        arrived = time.monotonic()
        arrived_ns = time.time_ns()
        span = self._tracer.start_span(
            spans.GENERATE_SPAN,
            context=extract(context.invocation_metadata() or ()),
            kind=SpanKind.SERVER,
            start_time=arrived_ns,
        )
        trace_id = trace_id_hex(span)
        if trace_id:
            # In the trailers: they go out with the status anyway, so the id costs no extra
            # write before the first token (initial metadata would).
            context.set_trailing_metadata(((headers.TRACE_ID, trace_id),))
        # Closed here, not left to the garbage collector, when the call is cancelled: its
        # `finally` ends the turn in vLLM and reports its usage to the router at once.
        turn = self._generate(request, context, arrived, span, arrived_ns)
        try:
            async with contextlib.aclosing(turn):
                async for msg in turn:
                    yield msg
        except asyncio.CancelledError:
            self._metrics.finished("CANCELLED")
            span.set_status(Status(StatusCode.ERROR, "CANCELLED"))
            raise
        except SwitchyardError as e:
            self._metrics.finished(e.code.name)
            span.set_status(Status(StatusCode.ERROR, f"{e.code.name}: {e.message}"))
            raise
        finally:
            span.end()

    async def _generate(
        self,
        request: inference_pb2.GenerateRequest | Malformed,
        context: grpc.aio.ServicerContext,
        arrived: float,
        span: trace.Span,
        arrived_ns: int,
    ) -> AsyncGenerator[inference_pb2.GenerateResponse, None]:
        if isinstance(request, Malformed):
            raise request.error
        self._admission.check()
        reservation = salt = routed_as = route_reason = degraded = ""
        for key, value in context.invocation_metadata() or ():
            if key == headers.PRIORITY:  # set by the router from the caller's tier
                try:
                    request.priority = int(value)
                except ValueError:
                    raise InvalidArgument(f"{headers.PRIORITY} must be an integer") from None
            elif key == headers.RESERVATION:  # the router's quota reservation for the turn
                reservation = value
            elif key == headers.CACHE_SALT:  # the tenant's prefix-cache salt
                salt = value
            elif key == headers.ROUTED_AS:  # a tiered name chose this engine's model
                routed_as = value
            elif key == headers.ROUTE_REASON:
                route_reason = value
            elif key == headers.DEGRADED:  # a fallback for a saturated model
                degraded = value
        runtime = self._runtime_ref[0]
        if runtime is None:
            raise Unavailable("engine is not ready")
        if runtime.dead:
            raise Unavailable("the vLLM engine has died; this engine is being replaced")
        try:
            if input_chars(request) < OFFLOAD_CHARS:
                prepared = prepare(request, runtime.tokenizer, runtime.limits)
            else:  # a long prompt: tokenize it off the loop that streams everyone else's tokens
                prepared = await asyncio.to_thread(
                    prepare, request, runtime.tokenizer, runtime.limits
                )
        except SwitchyardError as e:
            # Refused for good (no other engine will take it): its reservation goes back at
            # once rather than when it expires unaccepted. UNAVAILABLE is retried elsewhere
            # by Envoy with the same reservation, so it is left to the engine that takes it.
            if reservation and self._usage is not None and e.code != grpc.StatusCode.UNAVAILABLE:
                self._usage(engine_pb2.TurnUsage(reservation_id=reservation, done=True))
            raise
        prepared.reservation_id, prepared.cache_salt = reservation, salt
        self._metrics.tokenized(prepared.tokenized_by)
        turn = _Turn(prepared, arrived)
        turn.span, turn.arrived_ns = span, arrived_ns
        turn.route = (routed_as, route_reason, degraded)
        if span.is_recording():
            self._annotate_request(span, request, turn)
        # The turn is taken: say so (and by whom) at once, before the first token. A client
        # may resume a stream that breaks after this; Envoy retries elsewhere one that does
        # not get this far within its per-try timeout (a frozen engine).
        reservation = prepared.reservation_id
        accepted = False  # the response headers went out: the turn is this engine's
        outcome = engine_pb2.TURN_OUTCOME_CANCELLED  # until it ends one way or another
        try:  # (a client gone while the headers go out still gets its reservation settled)
            await context.send_initial_metadata(self._accepted)
            accepted = True
            if reservation and self._usage is not None:
                self._usage(engine_pb2.TurnUsage(reservation_id=reservation))
            if prepared.exhausted:  # a resumed turn that had used its whole budget already
                outcome = engine_pb2.TURN_OUTCOME_OK
                yield inference_pb2.GenerateResponse(final=self._final(turn))
                return

            # The wait for vLLM's next output is cut short at the call's deadline (shortly
            # before it, so the Final still reaches the client) or when a drain's grace runs
            # out: cutting it aborts the request inside vLLM, and the Final goes out at once.
            loop = asyncio.get_running_loop()
            stopper = _Stopper(loop)
            remaining = context.time_remaining()
            if remaining is not None:
                stopper.at = loop.time() + remaining - deadline_margin(remaining)

            with self._admission.turn(turn.req.engine_request_id, stopper.drained):
                pending = 0  # tokens whose text has not been sent yet (partial UTF-8)
                outputs = self._outputs(runtime, turn)
                while True:
                    # Checked here too: when vLLM is ahead of the stream, the next output is ready
                    # at once and the wait below never suspends, so its timeout could never fire.
                    if stopper.at is not None and loop.time() >= stopper.at:
                        turn.deadline_hit = not stopper.drain_expired
                        await outputs.aclose()
                        break
                    try:
                        async with asyncio.timeout_at(stopper.at) as stopper.timeout:
                            out = await anext(outputs)
                    except StopAsyncIteration:
                        break
                    except TimeoutError:
                        turn.deadline_hit = not stopper.drain_expired
                        await outputs.aclose()
                        break
                    finally:
                        stopper.timeout = None
                    c = out.outputs[0]
                    turn.completion_tokens += len(c.token_ids)
                    pending += len(c.token_ids)
                    if c.text:
                        if turn.first_text_at is None:
                            turn.first_text_at = time.monotonic()
                            self._metrics.ttft.observe(turn.first_text_at - arrived)
                        yield inference_pb2.GenerateResponse(
                            delta=inference_pb2.Delta(text=c.text, token_count=pending)
                        )
                        pending = 0
                    turn.last = out
            cut = turn.deadline_hit or stopper.drain_expired
            # Cut before any text: the engine did not serve it (a stalled or overloaded one).
            failed = cut and turn.first_text_at is None
            outcome = engine_pb2.TURN_OUTCOME_FAILED if failed else engine_pb2.TURN_OUTCOME_OK
            yield inference_pb2.GenerateResponse(final=self._final(turn))
        except SwitchyardError as e:
            # A caller's mistake is no failure of the engine's; the rest are.
            caller = e.code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.CANCELLED)
            outcome = engine_pb2.TURN_OUTCOME_OK if caller else engine_pb2.TURN_OUTCOME_FAILED
            raise
        except Exception:  # (not a caller gone: CancelledError and GeneratorExit are not these)
            outcome = engine_pb2.TURN_OUTCOME_FAILED
            raise
        finally:
            if self._usage is not None and (accepted or reservation):
                # However the turn ended: what it used goes back to its tenant's ledger (a
                # resumed turn's prompt was charged by the turn it continues; one cancelled
                # before it was accepted, e.g. by Envoy's per-try timeout to retry it
                # elsewhere, used nothing here, and the router waits for that retry); and
                # for a turn it took, how it went (the router's per-version metrics).
                report = engine_pb2.TurnUsage(
                    reservation_id=reservation,
                    done=True,
                    prompt_tokens=0 if prepared.resumed or not accepted else prepared.prompt_tokens,
                    completion_tokens=turn.completion_tokens,
                )
                if accepted:
                    report.outcome = outcome
                    if turn.first_text_at is not None:
                        report.ttft.FromNanoseconds(int((turn.first_text_at - arrived) * 1e9))
                self._usage(report)

    async def _outputs(self, runtime: Runtime, turn: _Turn) -> AsyncGenerator[Any, None]:
        """vLLM's outputs, with its exceptions turned into gRPC-aware errors."""
        from vllm.exceptions import VLLMClientError
        from vllm.v1.engine.exceptions import EngineDeadError, EngineGenerateError

        try:
            async for out in runtime.generate(turn.req):
                yield out
        except (VLLMClientError, ValueError) as e:
            raise InvalidArgument(_client_error_message(turn.req, e)) from None
        except EngineDeadError:
            raise Unavailable("the vLLM engine has died; retry on another engine") from None
        except EngineGenerateError as e:
            log.error("turn %s failed: %r", turn.req.anon_repr(), e.__cause__)
            raise Internal(f"generation failed: {e.__cause__!r}") from None

    def _annotate_request(
        self, span: trace.Span, request: inference_pb2.GenerateRequest, turn: _Turn
    ) -> None:
        sb = self._served_by
        chat = request.WhichOneof("input") == "conversation"
        span.set_attributes(
            {
                "gen_ai.system": "vllm",
                "gen_ai.operation.name": "chat" if chat else "text_completion",
                "gen_ai.request.model": request.model or sb.model,
                "gen_ai.response.model": sb.model,
                "gen_ai.response.id": turn.req.request_id,
                "gen_ai.request.max_tokens": turn.req.sampling.max_tokens or 0,
                "gen_ai.request.temperature": turn.req.sampling.temperature,
                "switchyard.pool": sb.pool,
                "switchyard.engine": sb.engine,
                "switchyard.priority": request.priority,
            }
        )

    def _final(self, turn: _Turn) -> inference_pb2.Final:
        now = time.monotonic()
        out = turn.last
        c = out.outputs[0] if out is not None else None
        reason = c.finish_reason if c is not None else "abort"
        stop_sequence = ""
        if turn.req.exhausted:
            finish = FinishReason.FINISH_REASON_LENGTH
        elif reason == "stop":
            finish = FinishReason.FINISH_REASON_STOP
            if c is not None and isinstance(c.stop_reason, str):
                stop_sequence = c.stop_reason
        elif reason == "length":
            finish = FinishReason.FINISH_REASON_LENGTH
        elif turn.deadline_hit:
            finish = FinishReason.FINISH_REASON_DEADLINE
        else:
            finish = FinishReason.FINISH_REASON_ABORTED
        cached = int(out.num_cached_tokens or 0) if out is not None else 0
        prompt = len(turn.req.prompt_token_ids)  # prefilled (a resumed turn's text included)

        m = self._metrics
        m.finished(FinishReason.Name(finish).removeprefix("FINISH_REASON_"))
        m.prompt_tokens.inc(prompt)
        m.cached_prompt_tokens.inc(cached)
        m.generated_tokens.inc(turn.completion_tokens)
        m.e2e.observe(now - turn.arrived)

        first = turn.first_text_at
        queue = ttft = decode = 0.0
        stats = getattr(out, "metrics", None) if out is not None else None
        if stats is not None and getattr(stats, "scheduled_ts", None):
            queue = stats.scheduled_ts - stats.queued_ts
            if stats.first_token_ts:
                decode = stats.last_token_ts - stats.first_token_ts
        if first is not None:
            ttft = first - turn.arrived
            if not decode:
                decode = now - first
            if turn.completion_tokens > 1:
                m.inter_token.observe(decode / (turn.completion_tokens - 1))
        if turn.span.is_recording():
            reason_name = FinishReason.Name(finish).removeprefix("FINISH_REASON_").lower()
            turn.span.set_attributes(
                {
                    "gen_ai.response.finish_reasons": [reason_name],
                    "gen_ai.usage.input_tokens": prompt,
                    "gen_ai.usage.output_tokens": turn.completion_tokens,
                    "switchyard.cached_tokens": cached,
                }
            )
            spans.record_phases(
                self._tracer,
                turn.span,
                arrived_ns=turn.arrived_ns,
                end_ns=turn.arrived_ns + int((now - turn.arrived) * 1e9),
                queue_s=queue,
                ttft_s=ttft,
                prompt_tokens=prompt,
                cached_tokens=cached,
                completion_tokens=turn.completion_tokens,
            )
        req = turn.req
        return inference_pb2.Final(
            finish_reason=finish,
            usage=inference_pb2.Usage(
                prompt_tokens=req.prompt_tokens,
                cached_prompt_tokens=min(cached, req.prompt_tokens),
                completion_tokens=req.resumed_completion_tokens + turn.completion_tokens,
            ),
            timing=inference_pb2.Timing(
                queue=_duration(queue),
                ttft=_duration(ttft),
                decode=_duration(decode),
                total=_duration(now - turn.arrived),
            ),
            served_by=self._served_by_of(turn),
            request_id=req.request_id,
            stop_sequence=stop_sequence,
            resumed=req.resumed,
        )

    def _served_by_of(self, turn: _Turn) -> inference_pb2.ServedBy:
        if not any(turn.route):
            return self._served_by
        sb = inference_pb2.ServedBy()
        sb.CopyFrom(self._served_by)
        sb.routed_as, sb.route_reason, sb.degraded_reason = turn.route
        return sb


def _client_error_message(req: PreparedRequest, e: Exception) -> str:
    text = str(e) or type(e).__name__
    if req.sampling.structured_outputs is not None and any(
        w in text.lower() for w in ("regex", "grammar", "schema", "json", "structured", "choice")
    ):
        return f"structured_output: {text}"
    if "priority" in text.lower():
        return f"priority: {text}"
    return text
