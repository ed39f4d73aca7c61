"""Scrub one streamed `Generate` response body: the logic of the safety filter's response path.

Body chunks (as Envoy's ext_proc STREAMED mode delivers them) go in; body bytes to send on come
out. Messages are reassembled from the chunks, each Delta's text passes through one
`StreamScrubber` for the whole turn (so an entity split across deltas is still caught), and the
frames are re-encoded. Text is held back only while it could still be part of an entity; when
the Final arrives, what is held back is flushed as one last Delta and the Final gains a
`SafetyReport` (counts by type and action). An entity whose action is `block` ends the turn: a
Final with FINISH_REASON_BLOCKED saying why replaces the rest of the stream.

What goes out is written by an `Encoder`: gRPC frames by default (`GrpcEncoder`), or OpenAI's
Server-Sent Events / JSON for an HTTP turn (`services/openai/stream.py`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Protocol

from services.common.frames import FrameDecoder, encode_frame
from services.safety.recognizers import StreamingRecognizer
from services.safety.report import safety_report
from services.safety.scrubber import BlockedError, Policy, StreamScrubber
from switchyard.v1 import inference_pb2


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _delta_frame(text: str, token_count: int) -> bytes:
    """The framed ``GenerateResponse{delta: Delta{text, token_count}}``, encoded by hand: the
    bytes ``SerializeToString`` writes (fields in number order, zero left out), without building
    two messages per chunk on the hot path."""
    data = text.encode()
    delta = b"\x0a" + _varint(len(data)) + data  # Delta.text = 1
    if token_count:
        delta += b"\x10" + _varint(token_count)  # Delta.token_count = 2
    return encode_frame(b"\x0a" + _varint(len(delta)) + delta)  # GenerateResponse.delta = 1


class Encoder(Protocol):
    """Writes what the filter lets through in the client's protocol."""

    def delta(self, text: str, token_count: int) -> bytes: ...

    def final(self, msg: inference_pb2.GenerateResponse) -> bytes: ...


class GrpcEncoder:
    """`GenerateResponse` frames, as the engine wrote them."""

    def delta(self, text: str, token_count: int) -> bytes:
        return _delta_frame(text, token_count)

    def final(self, msg: inference_pb2.GenerateResponse) -> bytes:
        return encode_frame(msg.SerializeToString())


class ResponseFilter:
    def __init__(
        self,
        policy: Policy,
        recognizers: Sequence[StreamingRecognizer] | None = None,
        encoder: Encoder | None = None,
        record: bool = False,
    ) -> None:
        self._policy = policy
        self._encoder = encoder or GrpcEncoder()
        # `record`: keep the deltas and the Final as sent (the response cache stores them).
        self.recorded: list[inference_pb2.Delta] | None = [] if record else None
        self.recorded_final: inference_pb2.Final | None = None
        self._scrubber = StreamScrubber(policy, recognizers)
        self._frames = FrameDecoder()
        self._tokens = 0  # tokens of held-back text, carried to the next Delta sent
        self.done = False  # a Final (real or blocking) has been sent: drop anything after

    def feed(self, chunk: bytes, end_of_stream: bool = False) -> bytes:
        """Body bytes to forward for this chunk (possibly empty while text is held back)."""
        if self.done:
            return b""
        out: list[bytes] = []
        for raw in self._frames.feed(chunk):
            msg = inference_pb2.GenerateResponse.FromString(raw)
            if msg.HasField("delta"):  # the hot path: one per token
                delta = msg.delta
                self._tokens += delta.token_count
                try:
                    text = self._scrubber.feed(delta.text)
                except BlockedError as e:
                    if e.text:
                        out.append(self._delta(e.text))
                    out.append(self._encoder.final(self._blocked(e.entity_type, msg)))
                    break
                if text:
                    out.append(self._delta(text))
                continue
            out += self._final(msg)
            break
        if end_of_stream and not self.done:
            self._frames.finish()
        return b"".join(out)

    def _final(self, msg: inference_pb2.GenerateResponse) -> list[bytes]:
        """Frames for the engine's Final: the held-back tail, then the Final with the report."""
        try:
            tail = self._scrubber.finish()
        except BlockedError as e:
            before = [self._delta(e.text)] if e.text else []
            return [*before, self._encoder.final(self._blocked(e.entity_type, msg))]
        self.done = True
        final = inference_pb2.GenerateResponse()
        final.CopyFrom(msg)
        final.final.safety.CopyFrom(self.report())
        out = ([self._delta(tail)] if tail else []) + [self._encoder.final(final)]
        if self.recorded is not None:
            self.recorded_final = final.final
        return out

    def _delta(self, text: str) -> bytes:
        tokens, self._tokens = self._tokens, 0
        if self.recorded is not None:
            self.recorded.append(inference_pb2.Delta(text=text, token_count=tokens))
        return self._encoder.delta(text, tokens)

    def _blocked(
        self, entity_type: str, msg: inference_pb2.GenerateResponse
    ) -> inference_pb2.GenerateResponse:
        self.done = True
        report = safety_report(self._scrubber.findings, self._policy, entity_type)
        final = inference_pb2.Final(
            finish_reason=inference_pb2.FinishReason.FINISH_REASON_BLOCKED, safety=report
        )
        if msg.HasField("final"):
            final.usage.CopyFrom(msg.final.usage)
            final.served_by.CopyFrom(msg.final.served_by)
            final.request_id = msg.final.request_id
        return inference_pb2.GenerateResponse(final=final)

    def report(self) -> inference_pb2.SafetyReport:
        """Findings so far, one entry per (type, action)."""
        return safety_report(self._scrubber.findings, self._policy)

    @property
    def findings(self) -> Counter[str]:
        """Entities found so far, by type."""
        return self._scrubber.findings

    @property
    def blocked(self) -> bool:
        return self._scrubber.blocked is not None

    @property
    def held_back(self) -> int:
        return self._scrubber.held_back + self._frames.pending
