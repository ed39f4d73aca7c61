"""`switchyard status --tenants`: what an operator reads for each tenant."""

from __future__ import annotations

from services.mesh.status import format_tenants
from switchyard.v1 import router_pb2


def test_each_tenant_shows_its_policy_quotas_and_turns() -> None:
    resp = router_pb2.ListTenantsResponse(ledger="redis")
    t = resp.tenants.add(
        policy=router_pb2.TenantPolicy(
            tenant="acme", weight=2, tier="premium", source="file",
            quotas=router_pb2.Quotas(tokens_per_minute=1000),
        ),
        in_flight=3, queued=2, admitted=40, over_quota=1, waited=5, shed=1, tokens=900,
    )  # fmt: skip
    t.remaining["tokens_per_minute"] = 100
    text = format_tenants(resp)
    assert "acme  [file]  weight 2  tier premium" in text
    assert "quotas: tokens_per_minute=1000 (100 left)" in text
    assert "3 in flight, 2 queued, 40 admitted, 1 over quota, 5 waited for a slot, 1 shed" in text
