"""The prompt side of the safety policy: check (and redact) a GenerateRequest before an engine
sees it. Which texts are checked: `prompt`, or the content of every conversation message.

The router applies it (`PromptPolicy`), once it knows the turn's tenant and served model and
before it tokenizes the prompt: the router routes on, and the prefix cache is matched against,
exactly the tokens the engine will prefill. Its metrics are the safety filter's families with
`path="prompt"`, exported by the router.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from services.common.errors import InvalidArgument, PermissionDenied
from services.safety import metrics as m
from services.safety import prefilter
from services.safety.config import PromptMode, SafetyConfig
from services.safety.recognizers import StreamingRecognizer
from services.safety.scrubber import Policy, scrub
from switchyard.v1 import inference_pb2

# Prompts with at least this much text are checked in a worker thread, off the event loop.
OFFLOAD_CHARS = 64 * 1024


@dataclass
class PromptResult:
    changed: bool  # the request was rewritten (redacted) and must be sent on as such
    findings: Counter[str]  # entities found, by type
    # What the policy did with the prompt (passed, redacted) and each finding's action.
    outcome: str = "passed"
    actions: dict[str, str] = field(default_factory=dict)


def _texts(req: inference_pb2.GenerateRequest) -> Iterator[tuple[str, object, str]]:
    """(field path, message holding the text, attribute name) of every text a turn carries."""
    if req.HasField("conversation"):
        for i, m in enumerate(req.conversation.messages):
            yield f"conversation.messages[{i}].content", m, "content"
    else:
        yield "prompt", req, "prompt"


def check_prompt(
    req: inference_pb2.GenerateRequest,
    policy: Policy,
    mode: PromptMode,
    recognizers: Sequence[StreamingRecognizer] | None = None,
) -> PromptResult:
    """Apply the prompt policy to `req` in place; raise when the policy refuses it.

    PERMISSION_DENIED: an entity whose action is `block` (in `redact` and `reject` modes).
    INVALID_ARGUMENT: in `reject` mode, any entity whose action is not `allow`.
    """
    findings: Counter[str] = Counter()
    changed = False
    for path, holder, attr in _texts(req):
        text = getattr(holder, attr)
        if not text:
            continue
        result = scrub(text, policy, recognizers)
        findings.update(result.findings)
        if mode == "allow":
            continue
        if result.blocked is not None:
            raise PermissionDenied(
                f"{path} contains {result.blocked}, which this policy does not allow in prompts"
            )
        if mode == "reject":
            refused = sorted(t for t in result.findings if policy.action(t) != "allow")
            if refused:
                raise InvalidArgument(
                    f"{path} contains {', '.join(refused)}; this policy rejects prompts holding "
                    "them: remove them and send the turn again"
                )
        elif result.text != text:
            setattr(holder, attr, result.text)
            changed = True
    return PromptResult(changed, findings)


class PromptPolicy:
    """The safety config's prompt policy, applied by the router to a turn's request in place:
    counted (`switchyard_safety_*{path="prompt"}`), long prompts checked off the event loop."""

    def __init__(self, config: SafetyConfig) -> None:
        self._config = config
        self._recognizers = config.recognizers  # compiled once, at start
        prefilter.warm(self._recognizers)

    async def apply(
        self, req: inference_pb2.GenerateRequest, tenant: str, model: str
    ) -> PromptResult:
        """Check (and redact) `req` for `tenant`'s turn on served `model`; raise
        INVALID_ARGUMENT / PERMISSION_DENIED when the policy refuses it."""
        size = sum(len(getattr(holder, attr)) for _, holder, attr in _texts(req))
        if size < OFFLOAD_CHARS:
            return self.check(req, tenant, model)
        return await asyncio.to_thread(self.check, req, tenant, model)

    def check(self, req: inference_pb2.GenerateRequest, tenant: str, model: str) -> PromptResult:
        tenant = tenant or "anonymous"
        started = time.perf_counter()
        policy = self._config.policy(tenant, model)
        mode = self._config.prompt_mode(tenant, model)
        outcome = "error"
        try:
            result = check_prompt(req, policy, mode, self._recognizers)
            outcome = result.outcome = "redacted" if result.changed else "passed"
        except InvalidArgument:
            outcome = "rejected"
            raise
        except PermissionDenied:
            outcome = "denied"
            raise
        finally:
            m.PROMPT_CHUNKS.inc()
            m.PROMPT_SCAN_SECONDS.observe(time.perf_counter() - started)
            m.PROMPTS.labels(outcome).inc()
        for entity_type, n in result.findings.items():
            action = result.actions[entity_type] = policy.action(entity_type)
            m.FINDINGS.labels("prompt", entity_type, action).inc(n)
        return result
