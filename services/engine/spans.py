"""A turn's spans on the engine: `switchyard.engine.generate` (the gRPC call, a child of Envoy's
upstream span through the W3C `traceparent` Envoy sends) and its phases `switchyard.engine.queue`
(waiting for vLLM's scheduler), `switchyard.engine.prefill` (to the first token) and
`switchyard.engine.decode` (the rest), with gen_ai.* semantic-convention attributes.

The phases are recorded when the turn ends, from the times the turn measured (vLLM's own queue
time, the first and last token), so nothing on the token path touches tracing.
"""

from __future__ import annotations

from typing import Any

from opentelemetry import trace

GENERATE_SPAN = "switchyard.engine.generate"
QUEUE_SPAN = "switchyard.engine.queue"
PREFILL_SPAN = "switchyard.engine.prefill"
DECODE_SPAN = "switchyard.engine.decode"


def record_phases(
    tracer: trace.Tracer,
    parent: trace.Span,
    *,
    arrived_ns: int,
    end_ns: int,
    queue_s: float,
    ttft_s: float,
    prompt_tokens: int,
    cached_tokens: int,
    completion_tokens: int,
) -> None:
    """The queue, prefill and decode spans of a finished turn, as children of `parent`."""
    ctx = trace.set_span_in_context(parent)
    queue_end = min(end_ns, arrived_ns + int(queue_s * 1e9))
    first_ns = min(end_ns, arrived_ns + int(ttft_s * 1e9)) if ttft_s > 0 else end_ns
    first_ns = max(first_ns, queue_end)
    phases: tuple[tuple[str, int, int, dict[str, Any]], ...] = (
        (QUEUE_SPAN, arrived_ns, queue_end, {}),
        (
            PREFILL_SPAN,
            queue_end,
            first_ns,
            {"gen_ai.usage.input_tokens": prompt_tokens, "switchyard.cached_tokens": cached_tokens},
        ),
        (DECODE_SPAN, first_ns, end_ns, {"gen_ai.usage.output_tokens": completion_tokens}),
    )
    for name, start, end, attributes in phases:
        span = tracer.start_span(name, context=ctx, start_time=start, attributes=attributes)
        span.end(end_time=end)
