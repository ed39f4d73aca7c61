"""The whole mesh on loopback: real Envoy configured over xDS by the router, real vLLM engines
in two pools (large ×1, small ×2), clients talking only to Envoy."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import pytest

from services.common.tls import channel as tls_channel
from services.mesh import procs
from services.mesh.client import bearer, generate, make_request, stream
from services.mesh.up import Mesh
from switchyard.v1 import inference_pb2, router_pb2, router_pb2_grpc
from tests.integration.conftest import ENGINE_NICE, ROOT, mesh_channel
from tests.integration.test_engine import long_text
from tests.otlp_collector import OtlpCollector, SpanRecord


def admin_json(mesh: Mesh, path: str) -> dict:
    return json.loads(urllib.request.urlopen(f"{mesh.envoy_admin}{path}", timeout=5).read())


def cluster_hosts(mesh: Mesh, cluster: str) -> dict[str, dict]:
    """address → health_status of the cluster's hosts, from Envoy's /clusters."""
    for c in admin_json(mesh, "/clusters?format=json").get("cluster_statuses", []):
        if c["name"] == cluster:
            return {
                f"{h['address']['socket_address']['address']}:"
                f"{h['address']['socket_address']['port_value']}": h.get("health_status", {})
                for h in c.get("host_statuses", [])
            }
    return {}


def wait_for(predicate, timeout: float, what: str) -> float:
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)
    return time.monotonic() - start


def test_engines_run_nicer_than_the_rest_of_the_mesh(mesh: Mesh):
    """`up`'s engine_nice (the test mesh's ENGINE_NICE): busy engines do not starve the
    router, safety filter or Envoy. Nice holds only within one session (Linux's autogroups
    share the CPU between sessions first), so every service stays in ours, each in a process
    group of its own (stopped as one)."""
    assert mesh.router is not None and mesh.safety is not None and mesh.engines
    base = os.getpriority(os.PRIO_PROCESS, mesh.router.pid)
    live = [e for e in mesh.engines if e.poll() is None]  # (an earlier test may restart one)
    assert live
    for engine in live:
        assert os.getpriority(os.PRIO_PROCESS, engine.pid) == base + mesh.engine_nice
    for service in (mesh.router, mesh.safety, *live):
        assert os.getsid(service.pid) == os.getsid(0), service.name
        assert os.getpgid(service.pid) == service.pid, service.name
    assert mesh.engine_nice == ENGINE_NICE > 0


def test_config_arrives_over_xds(mesh: Mesh):
    dump = json.dumps(admin_json(mesh, "/config_dump"))
    assert "switchyard_ingress" in dump and "switchyard_routes" in dump
    for pool in ("h100-large", "l4-small", "empty-pool"):
        assert f"pool_{pool}" in dump
    small = cluster_hosts(mesh, "pool_l4-small")
    assert {e.address for e in mesh.engines if e.name.startswith("l4-small")} <= set(small)
    large = cluster_hosts(mesh, "pool_h100-large")
    assert len(large) == 1
    bootstrap = (ROOT / "envoy" / "bootstrap.yaml").read_text()
    assert "pool_" not in bootstrap and "switchyard_ingress" not in bootstrap


async def test_turn_through_envoy_and_alias_reaches_its_pool(envoy):
    reply = await generate(envoy, make_request("Hello mesh", max_tokens=8))
    assert reply.final.served_by.pool == "l4-small"
    reply = await generate(envoy, make_request("Think hard", model="reasoning", max_tokens=8))
    assert reply.final.served_by.pool == "h100-large"
    assert reply.final.served_by.model == "large"


async def test_shared_prefix_lands_on_the_same_engine_with_cache_hits(envoy, admin):
    async def indexed() -> dict[str, int]:
        status = await admin.Status(router_pb2.StatusRequest())
        return {e.engine_id: e.indexed_blocks for p in status.pools for e in p.engines}

    prefix = long_text(400)
    before = await indexed()
    first = await generate(envoy, make_request(prefix + " one", max_tokens=4))
    # The engine's KV events reach the router's index asynchronously: wait until they did.
    engine = first.final.served_by.engine
    deadline = asyncio.get_running_loop().time() + 10
    while asyncio.get_running_loop().time() < deadline:
        if (await indexed()).get(engine, 0) != before.get(engine, 0):
            break
        await asyncio.sleep(0.1)
    second = await generate(envoy, make_request(prefix + " two", max_tokens=4))
    assert second.final.served_by.engine == first.final.served_by.engine
    assert second.final.usage.cached_prompt_tokens >= 128


async def test_session_stays_on_its_engine(envoy):
    req = make_request(long_text(50), max_tokens=4)
    req.session_id = "conversation-42"
    engines = {(await generate(envoy, req)).final.served_by.engine for _ in range(4)}
    assert len(engines) == 1


async def test_different_tenants_spread_over_the_pool(envoy, tenant_keys):
    async def turn(i: int) -> str:
        reply = await generate(
            envoy,
            make_request(long_text(200), max_tokens=24, ignore_eos=True),
            metadata=bearer(tenant_keys[f"tenant-{i}"]),
        )
        return reply.final.served_by.engine

    engines = await asyncio.gather(*(turn(i) for i in range(8)))
    assert len(set(engines)) == 2, engines


async def test_unknown_model_empty_pool_and_malformed_body(mesh: Mesh, envoy):
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await generate(envoy, make_request("hi", model="gpt-17", max_tokens=4))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    assert "model 'gpt-17' is unknown" in e.value.details()

    with pytest.raises(grpc.aio.AioRpcError) as e:
        await generate(envoy, make_request("hi", model="medium", max_tokens=4))
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "empty-pool" in e.value.details()

    async with mesh_channel(mesh) as ch:
        raw = ch.unary_stream(
            "/switchyard.v1.Inference/Generate",
            request_serializer=lambda b: b,
            response_deserializer=inference_pb2.GenerateResponse.FromString,
        )
        with pytest.raises(grpc.aio.AioRpcError) as e:
            async for _ in raw(b"\x12\x04\xff\xfe\xc3("):
                pass
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "prompt is not valid UTF-8" in e.value.details()

    reply = await generate(envoy, make_request("still serving", max_tokens=4))
    assert reply.final is not None


async def test_status_reports_pools_engines_and_xds_acks(admin):
    status = await admin.Status(router_pb2.StatusRequest())
    pools = {p.name: p for p in status.pools}
    assert len(pools["l4-small"].engines) == 2 and len(pools["empty-pool"].engines) == 0
    assert "chat" in pools["l4-small"].aliases
    # The autoscaling signal: pools the autoscale section does not name keep their engines.
    assert pools["l4-small"].desired_engines == 2 and pools["l4-small"].scale_reason
    assert pools["empty-pool"].desired_engines == 0
    assert status.xds_nodes, "no Envoy node in the xDS status"
    node = status.xds_nodes[0]
    assert node.node_id == "switchyard-test-envoy"
    assert all(t.version_acked == t.version_sent and not t.nacked for t in node.types)


async def test_drained_engine_finishes_in_flight_and_gets_no_new_turns(mesh: Mesh, envoy, admin):
    # A session pins the long turn to a known engine (session affinity), which we then drain.
    opener = make_request(long_text(10), max_tokens=2)
    opener.session_id = "drain-me"
    target = (await generate(envoy, opener)).final.served_by.engine
    long_turn = make_request(long_text(20), max_tokens=300, ignore_eos=True)
    long_turn.session_id = "drain-me"
    call = envoy.Generate(long_turn)
    first = await call.read()
    assert first.HasField("delta")
    address = next(e.address for e in mesh.engines if e.name == target)
    await admin.Drain(router_pb2.AdminDrainRequest(engine_id=target))
    try:
        await asyncio.to_thread(
            wait_for,
            lambda: (
                cluster_hosts(mesh, "pool_l4-small")[address].get("eds_health_status") == "DRAINING"
            ),
            2.0,
            "EDS DRAINING",
        )
        served = [
            (
                await generate(envoy, make_request(long_text(30), max_tokens=4))
            ).final.served_by.engine
            for _ in range(6)
        ]
        assert target not in served
        msgs = []
        while (m := await call.read()) is not grpc.aio.EOF:
            msgs.append(m)
        assert msgs[-1].final.usage.completion_tokens == 300
        assert msgs[-1].final.served_by.engine == target
    finally:
        await admin.Undrain(router_pb2.AdminUndrainRequest(engine_id=target))
    await asyncio.to_thread(
        wait_for,
        lambda: cluster_hosts(mesh, "pool_l4-small")[address].get("eds_health_status") == "HEALTHY",
        2.0,
        "EDS HEALTHY again",
    )


async def test_engine_join_and_death_reach_envoy(mesh: Mesh, envoy, tmp_path):
    """A new engine appears in Envoy's cluster within a second of registering; when its process
    is killed, new turns go to the others without errors."""
    extra = procs.start_engine(
        ROOT / "deploy" / "local" / "engine-small.yaml",
        name="l4-small-extra",
        workdir=tmp_path,
        overrides={
            "listen": "127.0.0.1:0",
            "engine_id": "l4-small-extra",
            "router": mesh.router_address,
        },
    )
    try:
        await asyncio.to_thread(extra.wait_ready, 300, lambda line: print(line, file=sys.stderr))
        joined = await asyncio.to_thread(
            wait_for,
            lambda: extra.address in cluster_hosts(mesh, "pool_l4-small"),
            5.0,
            "the new engine in Envoy's /clusters",
        )
        assert joined < 2.0  # registration happens right after the ready file; push < 1 s
        os.kill(extra.pid, signal.SIGKILL)
        # Turns sent at once may still be routed to the dead engine: Envoy's retry before the
        # first byte takes them to the fallback endpoints, so the client sees no error.
        for _ in range(6):
            reply = await generate(envoy, make_request(long_text(40), max_tokens=4))
            assert reply.final.served_by.engine != "l4-small-extra"
        await asyncio.to_thread(
            wait_for,
            lambda: extra.address not in cluster_hosts(mesh, "pool_l4-small"),
            2.0,
            "the dead engine gone from Envoy's /clusters",
        )
    finally:
        extra.stop(timeout=10)


async def test_router_pick_explains_the_decision(mesh: Mesh):
    async with tls_channel(mesh.router_address, mesh.operator_tls()) as ch:
        router = router_pb2_grpc.RouterStub(ch)
        req = make_request(long_text(40), model="chat", max_tokens=8)
        resp = await router.Pick(router_pb2.PickRequest(request=req, tenant="t1", commit=False))
    assert resp.pool == "l4-small" and resp.model == "small"
    assert resp.cache_salt == "tenant:t1"  # what the mesh would send the engine for t1
    assert resp.endpoint in {e.address for e in mesh.engines}
    assert resp.prompt_tokens > 40
    assert len(resp.candidates) == 2
    chosen = next(c for c in resp.candidates if c.endpoint == resp.endpoint)
    assert not chosen.filtered_by and chosen.scores, chosen
    assert set(chosen.scores) == {
        "prefix-affinity",
        "session-affinity",
        "queue-depth",
        "kv-utilization",
    }


def test_cli_status_and_chat(mesh: Mesh):
    cli = [sys.executable, "-m", "services.mesh.cli"]
    status = subprocess.run(
        [*cli, "status", "--router", mesh.router_address],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert "pool l4-small" in status and "l4-small-0" in status and "ACK" in status
    chat = subprocess.run(
        [*cli, "chat", "--target", mesh.endpoint, "--max-tokens", "8", "--key", mesh.dev_key, "hi"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "served by l4-small-" in chat.stderr and "completion 8" in chat.stderr


# -- the safety filter in the data path ------------------------------------------------------

SCRUB_REGEX = r"Contact alice@example\.com, card 4111 1111 1111 1111, key AKIAIOSFODNN7EXAMPLE\."


async def test_reply_is_scrubbed_on_its_way_to_the_client(envoy):
    req = make_request("Details:", max_tokens=120, regex=SCRUB_REGEX)
    reply = await generate(envoy, req)
    assert reply.text == "Contact [EMAIL], card [CREDIT_CARD], key [AWS_ACCESS_KEY]."
    assert reply.final.finish_reason == inference_pb2.FinishReason.FINISH_REASON_STOP
    findings = {(f.type, f.action): f.count for f in reply.final.safety.findings}
    assert findings == {
        ("EMAIL", "redact"): 1,
        ("CREDIT_CARD", "redact"): 1,
        ("AWS_ACCESS_KEY", "redact"): 1,
    }
    assert not reply.final.safety.blocked
    for secret in ("alice", "4111", "AKIA"):
        assert all(secret not in d for d in reply.deltas)


async def test_blocked_category_ends_the_turn_with_the_reason(envoy):
    req = make_request(
        "Plan:", max_tokens=120, regex=r"The plan is project nightingale, and then more words\."
    )
    reply = await generate(envoy, req)
    final = reply.final
    assert final.finish_reason == inference_pb2.FinishReason.FINISH_REASON_BLOCKED
    assert final.safety.blocked and "CONFIDENTIAL" in final.safety.reason
    assert "nightingale" not in reply.text and "more words" not in reply.text
    assert reply.text.startswith("The plan is")  # clean text before it streamed on


async def test_prompt_policy_redacts_rejects_and_denies(
    envoy, mesh: Mesh, models_dir: Path, tenant_keys
):
    from services.common.tokens import load_tokenizer

    raw, redacted = "Write to bob@example.com today", "Write to [EMAIL] today"
    tok = load_tokenizer(str(models_dir / "small"))
    assert len(tok.encode(raw)) != len(tok.encode(redacted))
    got = await generate(envoy, make_request(raw, model="small", max_tokens=2))
    want = await generate(envoy, make_request(redacted, model="small", max_tokens=2))
    assert got.final.usage.prompt_tokens == want.final.usage.prompt_tokens  # the engine saw [EMAIL]
    # The router applied it, before routing (its own metrics show it).
    assert mesh.router is not None
    findings = metric_samples(mesh.router.metrics_url, "switchyard_safety_findings_total")
    assert findings[(("action", "redact"), ("path", "prompt"), ("type", "EMAIL"))] >= 1
    prompts = metric_samples(mesh.router.metrics_url, "switchyard_safety_prompts_total")
    assert prompts[(("outcome", "redacted"),)] >= 1

    with pytest.raises(grpc.aio.AioRpcError) as e:
        await generate(
            envoy, make_request(raw, max_tokens=2), metadata=bearer(tenant_keys["strict"])
        )
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "prompt contains EMAIL" in e.value.details()

    with pytest.raises(grpc.aio.AioRpcError) as e:
        await generate(envoy, make_request("Tell me about Project Nightingale", max_tokens=2))
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "CONFIDENTIAL" in e.value.details()


async def test_a_turn_is_tokenized_once_and_a_clients_ids_never_reach_an_engine(
    envoy, mesh: Mesh, models_dir: Path
):
    import array

    from services.common.tokens import load_tokenizer, tokenizer_digest

    def tokenized() -> dict[str, float]:  # by the router (ids handed over) / by an engine
        total = {"router": 0.0, "engine": 0.0}
        for e in mesh.engines:
            name = "switchyard_engine_turns_tokenized_total"
            for labels, v in metric_samples(e.metrics_url, name).items():
                total[dict(labels)["by"]] += v
        return total

    tok = load_tokenizer(str(models_dir / "small"))
    text = "Count the tokens of this prompt, not the ones I send"
    req = make_request(text, model="small", max_tokens=2)
    # Ids a client forged, with the engine's own tokenizer digest: the router replaces them.
    forged = array.array("I", [5, 5]).tobytes()
    req.prompt_tokens.CopyFrom(
        inference_pb2.PromptTokens(ids=forged, prompt=2, tokenizer=tokenizer_digest(tok))
    )
    before = tokenized()
    reply = await generate(envoy, req)
    assert reply.final.usage.prompt_tokens == len(tok.encode(text))
    after = tokenized()
    assert after["router"] == before["router"] + 1, (before, after)
    assert after["engine"] == before["engine"], "the engine tokenized the turn again"


def metric_samples(url: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """The samples of one metric on a /metrics page, by their sorted labels."""
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(url, timeout=5).read().decode()
    return {
        tuple(sorted(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    }


# -- tracing and metrics ------------------------------------------------------------------------

PHASES = {
    "switchyard.router.pick",
    "switchyard.engine.generate",
    "switchyard.engine.queue",
    "switchyard.engine.prefill",
    "switchyard.engine.decode",
}


async def test_one_trace_per_turn_with_every_phase(envoy, collector: OtlpCollector):
    req = make_request("Mail:", max_tokens=60, regex=r"Write to bob@example\.com today\.")
    reply = await generate(envoy, req)
    trace_id = reply.trace_id
    assert len(trace_id) == 32, "the engine returns the trace id in response metadata"
    # Each process exports in its own batches (Envoy every second): wait for all of them.
    await collector.wait_for_async(
        lambda s: s.trace_id == trace_id and s.name == "switchyard.safety.scan"
    )
    for name in sorted(PHASES):
        await collector.wait_for_async(lambda s, n=name: s.trace_id == trace_id and s.name == n)
    await collector.wait_for_async(
        lambda s: s.trace_id == trace_id and s.service == "switchyard-envoy", count=3
    )
    spans = collector.by_trace(trace_id)
    by_id = {s.span_id: s for s in spans}
    names = [s.name for s in spans]
    assert PHASES <= set(names), names
    # One trace: a single root, Envoy's gateway span; every other span hangs below it.
    roots = [s for s in spans if not s.parent_span_id]
    assert [r.service for r in roots] == ["switchyard-envoy"], [(r.service, r.name) for r in roots]

    def ancestors(s: SpanRecord) -> list[SpanRecord]:
        out = []
        while s.parent_span_id in by_id:
            s = by_id[s.parent_span_id]
            out.append(s)
        return out

    for s in spans:
        if s is not roots[0]:
            assert ancestors(s) and ancestors(s)[-1] is roots[0], f"{s.name} is not in the tree"
    one = {s.name: s for s in spans}
    generate_span = one["switchyard.engine.generate"]
    for phase in ("queue", "prefill", "decode"):
        assert one[f"switchyard.engine.{phase}"].parent_span_id == generate_span.span_id
    assert by_id[generate_span.parent_span_id].service == "switchyard-envoy"

    pick = one["switchyard.router.pick"].attributes
    assert pick["switchyard.pool"] == "l4-small" and pick["gen_ai.response.model"] == "small"
    engine = pick["switchyard.engine"]
    assert pick[f"switchyard.candidate.{engine}"].startswith("score=")
    assert pick["switchyard.tenant"] == "dev" and pick["switchyard.auth"] == "k"

    g = generate_span.attributes
    assert g["gen_ai.response.model"] == "small" and g["gen_ai.system"] == "vllm"
    assert g["gen_ai.usage.output_tokens"] == reply.final.usage.completion_tokens
    assert g["gen_ai.response.finish_reasons"] == ["stop"]
    assert g["switchyard.engine"] == engine == reply.final.served_by.engine

    scans = {s.attributes["switchyard.safety.path"]: s for s in spans if s.name.endswith("scan")}
    assert set(scans) == {"response"}  # the prompt policy is the router's: on its pick span
    assert scans["response"].attributes["switchyard.safety.findings.EMAIL"] == 1
    assert pick["switchyard.safety.prompt"] == "passed"
    assert reply.text == "Write to [EMAIL] today."


def _parse(url: str) -> dict[str, set[str]]:
    """metric family → sample names, from a /metrics page (raises if it does not parse)."""
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(url, timeout=5).read().decode()
    return {f.name: {s.name for s in f.samples} for f in text_string_to_metric_families(text)}


def test_every_service_serves_its_metrics(mesh: Mesh):
    engine = _parse(mesh.engines[0].metrics_url)
    for name in (
        "switchyard_engine_ttft_seconds",
        "switchyard_engine_inter_token_latency_seconds",
        "switchyard_engine_request_duration_seconds",
        "switchyard_engine_generated_tokens",
        "switchyard_engine_in_flight_requests",
        "vllm:kv_cache_usage_perc",
        "vllm:num_requests_waiting",
    ):
        assert name in engine, name
    assert mesh.router is not None and mesh.safety is not None
    router = _parse(mesh.router.metrics_url)
    for name in (
        "switchyard_router_decisions",
        "switchyard_router_pick_duration_seconds",
        "switchyard_router_xds_pushes",
        "switchyard_router_xds_nacks",
        "switchyard_router_engine_queue_depth",
        "switchyard_router_engine_kv_cache_usage_ratio",
        "switchyard_router_engine_prefix_cache_hit_ratio",
    ):
        assert name in router, name
    safety = _parse(mesh.safety.metrics_url)
    for name in (
        "switchyard_safety_findings",
        "switchyard_safety_scan_seconds",
        "switchyard_safety_held_back_bytes",
        "switchyard_safety_chunks_scanned",
        "switchyard_safety_event_loop_lag_seconds",
    ):
        assert name in safety, name
    envoy = _parse(f"{mesh.envoy_admin}/stats/prometheus")
    # Counter families are named without their `_total` suffix.
    assert "envoy_cluster_upstream_rq_total" in envoy["envoy_cluster_upstream_rq"]
    assert "envoy_http_downstream_rq_total" in envoy["envoy_http_downstream_rq"]


async def test_a_slow_or_dead_collector_never_slows_a_turn(envoy, collector: OtlpCollector):
    """Last of the tracing tests: it stops the collector (the mesh goes on without it)."""

    async def ttft_ms() -> float:
        """Time to the first delta as the client sees it (every hop of the mesh included)."""
        start = time.monotonic()
        first = None
        async for msg in stream(envoy, make_request("Ping", max_tokens=4)):
            first = first or time.monotonic()
            if msg.HasField("final"):
                assert msg.final.usage.completion_tokens == 4
        assert first is not None
        return (first - start) * 1e3

    async def typical(n: int = 8) -> tuple[float, list[float]]:
        # vLLM's CPU worker sometimes stalls a turn for up to a second on this 2-core machine;
        # a blocking exporter would delay every turn by at least its 1 s export timeout. So
        # compare the second-fastest of n turns, which a stall of one turn cannot move.
        samples = [await ttft_ms() for _ in range(n)]
        return sorted(samples)[1], samples

    baseline, base_samples = await typical()
    collector.delay_seconds = 5.0  # every export now hangs past the exporters' timeouts
    slow, slow_samples = await typical()
    collector.stop()
    down, down_samples = await typical()
    collector.restart()  # for the tests that come after
    # Exporting is off the request path: a blocking exporter would add a second, not noise.
    why = f"baseline {base_samples}, slow {slow_samples}, down {down_samples}"
    assert slow < 2 * baseline + 250, why
    assert down < 2 * baseline + 250, why
