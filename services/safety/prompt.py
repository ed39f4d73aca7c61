"""The prompt side of the safety policy: check (and redact) a GenerateRequest before an engine
sees it. Which texts are checked: `prompt`, or the content of every conversation message."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from services.common.errors import InvalidArgument, PermissionDenied
from services.safety.config import PromptMode
from services.safety.recognizers import StreamingRecognizer
from services.safety.scrubber import Policy, scrub
from switchyard.v1 import inference_pb2


@dataclass
class PromptResult:
    changed: bool  # the request was rewritten (redacted) and must be sent on as such
    findings: Counter[str]  # entities found, by type


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
