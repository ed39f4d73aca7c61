"""Cost tiers: `auto` and tiered aliases choose the cheapest model able to serve the turn.

    tiers: {auto: [small, large]}          # a tiered name → the models it may choose
    complexity: {hard_at: 0.25}            # the scorer's rules (defaults below)
    pools:
      - name: l4-small
        cost: {usd_per_hour: 0.8, tokens_per_second: 2400}    # or usd_per_million_tokens
        models: [{name: small, handles: easy, tokenizer: ...}]

The scorer rates a turn's input from 0 (easy) to 1 (hard) before anything is tokenized: its
length, the conversation's depth and cues of code, maths and reasoning (regular expressions),
each worth a configured weight; a turn scoring `hard_at` or more is hard. The candidates are the
tier's models the caller may use that can handle the turn (a model marked `handles: easy` never
gets a hard one), cheapest pool first (`cost`, per token). The first whose pool has room serves
the turn; when none has, the cheapest able does (the turn waits there, in fair share): an easy
turn never waits for the large pool, a hard one never goes to a model that cannot handle it.
The choice and why go to the pick span and to the engine, which names them in the Final
(`served_by.routed_as`, `served_by.route_reason`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection
from dataclasses import dataclass
from functools import cached_property
from typing import Literal

import pydantic

from services.common.config import StrictModel
from services.common.errors import PermissionDenied
from switchyard.v1 import inference_pb2


class PoolCost(StrictModel):
    """What a pool's tokens cost: directly, or from its machines' price and throughput."""

    usd_per_million_tokens: float | None = pydantic.Field(None, ge=0)
    usd_per_hour: float | None = pydantic.Field(None, ge=0)  # per engine
    tokens_per_second: float | None = pydantic.Field(None, gt=0)  # per engine, all turns

    @pydantic.model_validator(mode="after")
    def _one_way(self) -> PoolCost:
        hourly = self.usd_per_hour is not None or self.tokens_per_second is not None
        if self.usd_per_million_tokens is not None and hourly:
            raise ValueError("give usd_per_million_tokens, or usd_per_hour with tokens_per_second")
        if hourly and (self.usd_per_hour is None or self.tokens_per_second is None):
            raise ValueError("usd_per_hour and tokens_per_second go together")
        return self

    def per_million_tokens(self) -> float | None:
        if self.usd_per_million_tokens is not None:
            return self.usd_per_million_tokens
        if self.usd_per_hour is not None and self.tokens_per_second:
            return self.usd_per_hour / (self.tokens_per_second * 3600) * 1e6
        return None


class Cue(StrictModel):
    weight: float = pydantic.Field(ge=0, le=1)
    # Case-insensitive regular expressions; each distinct one found counts once, and
    # `full_at` of them give the whole weight.
    patterns: list[str] = pydantic.Field(min_length=1)
    full_at: int = pydantic.Field(default=2, ge=1)

    @pydantic.field_validator("patterns")
    @classmethod
    def _compiles(cls, v: list[str]) -> list[str]:
        for p in v:
            try:
                re.compile(p)
            except re.error as e:
                raise ValueError(f"pattern {p!r} is not a regular expression: {e}") from None
        return v


def _cues() -> dict[str, Cue]:
    return {
        "code": Cue(
            weight=0.5,
            patterns=[
                r"```",
                r"\bdef \w+\s*\(",
                r"\bclass \w+",
                r"\b(function|method|variable|recursion|recursive|pointer|struct)\b",
                r"\b(python|javascript|typescript|rust|golang|java|kotlin|c\+\+|sql|bash|regex)\b",
                r"\b(bug|debug|stack trace|traceback|segfault|compile|refactor|algorithm|"
                r"big-o|time complexity|unit tests?|api|endpoint|database|query)\b",
                r"[{};]\s*$",
                r"\w+\([^)]*\)\s*(\{|:|->|=>)",
            ],
        ),
        "math": Cue(
            weight=0.5,
            patterns=[
                r"\b(prove|proof|theorem|lemma|integral|integrate|derivative|differentiate|"
                r"equation|matrix|matrices|eigen\w*|probability|expected value|variance|"
                r"optimi[sz]e|polynomial|prime|modulo|logarithm)\b",
                r"\d+\s*[\^*/%]\s*\d+",
                r"[=<>≤≥∑∫√∞π]",
                r"\b(solve for|calculate|compute|how many ways)\b",
            ],
        ),
        "reasoning": Cue(
            # One of these already asks for several steps of thought: half the weight (0.25,
            # the default threshold) at one, all of it at two.
            weight=0.5,
            patterns=[
                r"\bstep[- ]by[- ]step\b",
                r"\b(explain (why|how|the difference)|why does|why do|why is|reason about|"
                r"analy[sz]e|analysis)\b",
                r"\b(compare|contrast|trade-?offs?|pros and cons|arguments? for and against|"
                r"evaluate|assess(ment)?|critique|justify)\b",
                r"\b(design|architect|plan|strategy|strategies|propose|outline)\b",
                r"\b(implications?|consequences?|counterargument|hypothes[ie]s|"
                r"what would happen)\b",
                r"\b(derive|estimate|diagnose|walk (me )?through|show your work|sketch the|"
                r"reason (it )?out|reason quantitatively)\b",
            ],
        ),
        "systems": Cue(
            # Engineering subject matter: with any other cue, a hard turn.
            weight=0.2,
            patterns=[
                r"\b(kubernetes|docker|containers?|pods?|tls|ssl|latency|throughput|"
                r"threads?|mutex|semaphore|deadlock|concurrency|garbage collect\w*|schema|"
                r"shard\w*|compiler|kernel|distributed|replicat\w+|consistency)\b",
            ],
            full_at=1,
        ),
    }


class ComplexitySection(StrictModel):
    # A turn scoring this much or more (0..1) is hard.
    hard_at: float = pydantic.Field(0.25, gt=0, le=1)
    # The input's length: `length_weight` in full at `long_prompt_chars` characters, linear below.
    long_prompt_chars: int = pydantic.Field(1500, ge=1)
    length_weight: float = pydantic.Field(0.3, ge=0, le=1)
    # The conversation's depth: `depth_weight` in full at this many user messages.
    deep_conversation_turns: int = pydantic.Field(8, ge=2)
    depth_weight: float = pydantic.Field(0.15, ge=0, le=1)
    cues: dict[str, Cue] = pydantic.Field(default_factory=_cues)


@dataclass(frozen=True)
class Score:
    value: float
    parts: dict[str, float]  # what contributed (those above 0)

    def describe(self) -> str:
        why = ", ".join(f"{k} {v:.2f}" for k, v in self.parts.items()) or "no cue"
        return f"{self.value:.2f} ({why})"


class Scorer:
    def __init__(self, cfg: ComplexitySection) -> None:
        self.cfg = cfg

    @cached_property
    def _compiled(self) -> list[tuple[str, Cue, list[re.Pattern[str]]]]:
        flags = re.IGNORECASE | re.MULTILINE
        return [
            (name, cue, [re.compile(p, flags) for p in cue.patterns])
            for name, cue in self.cfg.cues.items()
        ]

    def score(self, text: str, user_turns: int = 1) -> Score:
        cfg = self.cfg
        parts: dict[str, float] = {}
        length = cfg.length_weight * min(1.0, len(text) / cfg.long_prompt_chars)
        if length >= 0.005:
            parts["length"] = length
        if user_turns > 1:
            span = cfg.deep_conversation_turns - 1
            parts["depth"] = cfg.depth_weight * min(1.0, (user_turns - 1) / span)
        for name, cue, patterns in self._compiled:
            found = sum(1 for p in patterns if p.search(text))
            if found:
                parts[name] = cue.weight * min(1.0, found / cue.full_at)
        return Score(min(1.0, sum(parts.values())), parts)

    def is_hard(self, score: Score) -> bool:
        return score.value >= self.cfg.hard_at

    def score_request(self, req: inference_pb2.GenerateRequest) -> Score:
        text, users = request_text(req)
        return self.score(text, users)


def request_text(req: inference_pb2.GenerateRequest) -> tuple[str, int]:
    """The turn's input as the scorer reads it, and how many user messages it has."""
    if req.WhichOneof("input") == "conversation":
        msgs = req.conversation.messages
        return "\n".join(m.content for m in msgs), sum(1 for m in msgs if m.role == "user")
    return req.prompt, 1


@dataclass(frozen=True)
class TierModel:
    model: str
    pool: str
    handles: Literal["easy", "hard"]
    cost: float | None  # USD per million tokens; None: unknown (sorted last)


@dataclass(frozen=True)
class TierChoice:
    model: str
    pool: str
    routed_as: str  # the tiered name asked for
    hard: bool
    reason: str  # for the span and the Final


class TierSelector:
    """Chooses a tiered name's model for one turn (see the module's docstring)."""

    def __init__(
        self,
        tiers: dict[str, list[TierModel]],
        scorer: Scorer,
        room: Callable[[str], int | None] = lambda pool: None,
    ) -> None:
        # Cheapest first; a model of unknown cost after every priced one, in config order.
        self._tiers = {
            name: sorted(models, key=lambda m: (m.cost is None, m.cost or 0.0))
            for name, models in tiers.items()
        }
        self.scorer = scorer
        self.room = room  # a pool's free slots (None: no routable engine)

    def tiered(self, name: str) -> bool:
        return name in self._tiers

    def names(self) -> list[str]:
        return sorted(self._tiers)

    def models_of(self, name: str) -> list[str]:
        return [m.model for m in self._tiers.get(name, [])]

    def choose(
        self,
        name: str,
        req: inference_pb2.GenerateRequest,
        allowed: Collection[str] = (),
    ) -> TierChoice:
        score = self.scorer.score_request(req)
        hard = self.scorer.is_hard(score)
        level = "hard" if hard else "easy"
        usable = [m for m in self._tiers[name] if not allowed or m.model in allowed]
        if not usable:
            raise PermissionDenied(
                f"model {name!r} chooses among {', '.join(self.models_of(name))}, and the caller "
                "may use none of them"
            )
        able = [m for m in usable if hard is False or m.handles == "hard"]
        if not able:
            raise PermissionDenied(
                f"the turn is hard (complexity {score.describe()}), and of {name!r}'s models the "
                f"caller may use only {', '.join(m.model for m in usable)}, which the mesh's "
                "config says cannot handle hard turns"
            )
        for m in able:
            free = self.room(m.pool)
            if free is not None and free > 0:
                why = "the cheapest able with room" if m is able[0] else (
                    f"cheaper able pools full ({', '.join(x.pool for x in able[: able.index(m)])})"
                )  # fmt: skip
                return TierChoice(m.model, m.pool, name, hard, f"{level} {score.describe()}; {why}")
        # Every able pool full: the cheapest that has engines at all (the turn waits there).
        m = next((m for m in able if self.room(m.pool) is not None), able[0])
        return TierChoice(
            m.model, m.pool, name, hard, f"{level} {score.describe()}; every able pool full: "
            "the cheapest able",
        )  # fmt: skip
