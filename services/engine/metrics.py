"""The engine's own Prometheus metrics (vLLM's `vllm:*` metrics share the same registry).

Names follow `switchyard_engine_<what>_<unit>`; every series carries the engine's pool, engine id
and served model so that dashboards can aggregate per pool.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

LABELS = ("pool", "engine", "model")

# Latency buckets from 1 ms to 60 s.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

REQUESTS = Counter(
    "switchyard_engine_requests_total",
    "Turns finished, by outcome (a finish reason or a gRPC status code).",
    [*LABELS, "outcome"],
)
TTFT = Histogram(
    "switchyard_engine_ttft_seconds",
    "Time from the gRPC call's arrival to the first text delta sent.",
    LABELS,
    buckets=LATENCY_BUCKETS,
)
INTER_TOKEN = Histogram(
    "switchyard_engine_inter_token_latency_seconds",
    "Mean time between output tokens of a turn after the first.",
    LABELS,
    buckets=LATENCY_BUCKETS,
)
E2E = Histogram(
    "switchyard_engine_request_duration_seconds",
    "Time from the gRPC call's arrival to its Final message.",
    LABELS,
    buckets=LATENCY_BUCKETS,
)
PROMPT_TOKENS = Counter("switchyard_engine_prompt_tokens_total", "Prompt tokens processed.", LABELS)
CACHED_PROMPT_TOKENS = Counter(
    "switchyard_engine_cached_prompt_tokens_total",
    "Prompt tokens served from the prefix cache.",
    LABELS,
)
GENERATED_TOKENS = Counter(
    "switchyard_engine_generated_tokens_total", "Output tokens generated.", LABELS
)
TOKENIZED = Counter(
    "switchyard_engine_turns_tokenized_total",
    "Turns by who tokenized their input: the router (its ids handed over) or the engine.",
    [*LABELS, "by"],
)
IN_FLIGHT = Gauge(
    "switchyard_engine_in_flight_requests", "Turns accepted and not yet finished.", LABELS
)
DRAINING = Gauge("switchyard_engine_draining", "1 while the engine refuses new turns.", LABELS)
KV_EVENT_BATCHES = Counter(
    "switchyard_engine_kv_event_batches_total",
    "KV-cache event batches forwarded to watchers.",
    LABELS,
)


class EngineMetrics:
    """The metric children of one engine, bound to its labels once."""

    def __init__(self, pool: str, engine: str, model: str) -> None:
        labels = (pool, engine, model)
        self._labels = labels
        self.ttft = TTFT.labels(*labels)
        self.inter_token = INTER_TOKEN.labels(*labels)
        self.e2e = E2E.labels(*labels)
        self.prompt_tokens = PROMPT_TOKENS.labels(*labels)
        self.cached_prompt_tokens = CACHED_PROMPT_TOKENS.labels(*labels)
        self.generated_tokens = GENERATED_TOKENS.labels(*labels)
        self.in_flight = IN_FLIGHT.labels(*labels)
        self.draining = DRAINING.labels(*labels)
        self.kv_event_batches = KV_EVENT_BATCHES.labels(*labels)

    def finished(self, outcome: str) -> None:
        REQUESTS.labels(*self._labels, outcome).inc()

    def tokenized(self, by: str) -> None:
        TOKENIZED.labels(*self._labels, by).inc()
