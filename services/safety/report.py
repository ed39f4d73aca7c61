"""The SafetyReport a scrubbed text or turn carries: counts by (entity type, action)."""

from __future__ import annotations

from collections import Counter

from services.safety.scrubber import Policy
from switchyard.v1 import inference_pb2


def safety_report(
    findings: Counter[str], policy: Policy, blocked: str | None = None
) -> inference_pb2.SafetyReport:
    """Counts by (type, action), and why the text was blocked, if it was."""
    counts: Counter[tuple[str, str]] = Counter()
    for entity_type, n in findings.items():
        counts[(entity_type, policy.action(entity_type))] += n
    report = inference_pb2.SafetyReport(
        findings=[
            inference_pb2.SafetyFinding(type=t, action=a, count=n)
            for (t, a), n in sorted(counts.items())
        ]
    )
    if blocked is not None:
        report.blocked = True
        report.reason = f"the text contained {blocked}, which this policy blocks"
    return report
