"""The safety policy's Prometheus metrics: `switchyard_safety_<what>_<unit>`.

`path` is `prompt` (the request, checked by the router, which exports those series: one scan
per turn) or `response` (the safety filter's streamed body: one scan per body chunk Envoy hands
over).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from services.common.looplag import LAG_BUCKETS

# Added latency per scan: 10 µs to 100 ms.
SCAN_BUCKETS = (1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 0.1)
HELD_BACK_BUCKETS = (0, 8, 16, 32, 64, 128, 256, 1024, 4096, 16384)

CHUNKS_SCANNED = Counter(
    "switchyard_safety_chunks_scanned_total",
    "Body chunks scanned: one per prompt, one per streamed response chunk.",
    ["path"],
)
SCAN_SECONDS = Histogram(
    "switchyard_safety_scan_seconds",
    "Latency the filter adds to each scanned chunk (decode, scan, rewrite).",
    ["path"],
    buckets=SCAN_BUCKETS,
)
HELD_BACK_BYTES = Histogram(
    "switchyard_safety_held_back_bytes",
    "Bytes held back after each response chunk, while they could still begin an entity.",
    buckets=HELD_BACK_BUCKETS,
)
FINDINGS = Counter(
    "switchyard_safety_findings_total",
    "Entities found, by type and the action the policy took (redact, mask, hash, block, allow).",
    ["path", "type", "action"],
)
TURNS = Counter(
    "switchyard_safety_turns_total",
    "Turns through the filter by outcome: passed, blocked, error.",
    ["outcome"],
)
PROMPTS = Counter(
    "switchyard_safety_prompts_total",
    "Prompts checked by the router by outcome: passed, redacted, rejected, denied, error.",
    ["outcome"],
)
ACTIVE_STREAMS = Gauge("switchyard_safety_active_streams", "Turns the filter is processing now.")
LOOP_LAG = Histogram(
    "switchyard_safety_event_loop_lag_seconds",
    "How much later than scheduled the filter's event loop ran its monitor tick (time it spent "
    "blocked on one piece of work, or the whole process stalled): every message waits that long.",
    buckets=LAG_BUCKETS,
)

# Label children bound once: the response path observes them for every streamed chunk.
PROMPT_CHUNKS = CHUNKS_SCANNED.labels("prompt")
RESPONSE_CHUNKS = CHUNKS_SCANNED.labels("response")
PROMPT_SCAN_SECONDS = SCAN_SECONDS.labels("prompt")
RESPONSE_SCAN_SECONDS = SCAN_SECONDS.labels("response")
