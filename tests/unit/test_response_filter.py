"""The safety filter's response path on real GenerateResponse frames, cut every which way."""

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from services.common.frames import FrameDecoder, encode_frame
from services.safety.response import ResponseFilter
from services.safety.scrubber import Policy, scrub
from switchyard.v1 import inference_pb2 as pb

SECRET = "Write to alice@example.com or pay with 4111 1111 1111 1111 using AKIAIOSFODNN7EXAMPLE."


def body(deltas: list[str], final: pb.Final | None = None) -> bytes:
    msgs = [pb.GenerateResponse(delta=pb.Delta(text=d, token_count=1)) for d in deltas]
    msgs.append(
        pb.GenerateResponse(
            final=final
            or pb.Final(finish_reason=pb.FinishReason.FINISH_REASON_STOP, request_id="r1")
        )
    )
    return b"".join(encode_frame(m.SerializeToString()) for m in msgs)


def run(data: bytes, chunks: list[int], policy: Policy) -> list[pb.GenerateResponse]:
    f = ResponseFilter(policy)
    edges = [0, *sorted({c for c in chunks if 0 < c < len(data)}), len(data)]
    out = b"".join(
        f.feed(data[a:b], end_of_stream=(b == len(data))) for a, b in itertools.pairwise(edges)
    )
    dec = FrameDecoder()
    msgs = [pb.GenerateResponse.FromString(m) for m in dec.feed(out)]
    dec.finish()
    return msgs


def split_text(text: str, cuts: list[int]) -> list[str]:
    edges = [0, *sorted({c for c in cuts if 0 < c < len(text)}), len(text)]
    return [text[a:b] for a, b in itertools.pairwise(edges)]


@settings(max_examples=120, deadline=None)
@given(
    text_cuts=st.lists(st.integers(min_value=0, max_value=len(SECRET)), max_size=30),
    byte_cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=30),
)
def test_scrubbed_stream_equals_whole_text_scrub_for_any_cuts(text_cuts, byte_cuts):
    policy = Policy({})
    deltas = split_text(SECRET, text_cuts)
    msgs = run(body(deltas), byte_cuts, policy)
    kinds = [m.WhichOneof("event") for m in msgs]
    assert kinds[-1] == "final" and kinds.count("final") == 1
    text = "".join(m.delta.text for m in msgs[:-1])
    assert text == scrub(SECRET, policy).text
    for raw in ("alice@example.com", "4111 1111 1111 1111", "AKIAIOSFODNN7EXAMPLE"):
        assert raw not in text
    assert sum(m.delta.token_count for m in msgs[:-1]) == len(deltas)
    report = {(f.type, f.action): f.count for f in msgs[-1].final.safety.findings}
    assert report == {
        ("EMAIL", "redact"): 1,
        ("CREDIT_CARD", "redact"): 1,
        ("AWS_ACCESS_KEY", "redact"): 1,
    }
    assert msgs[-1].final.request_id == "r1"


def test_clean_text_streams_through_without_waiting_for_the_final():
    f = ResponseFilter(Policy({}))
    first = f.feed(
        encode_frame(
            pb.GenerateResponse(
                delta=pb.Delta(text="Hello there, how are you ", token_count=5)
            ).SerializeToString()
        )
    )
    [msg] = FrameDecoder().feed(first)
    assert pb.GenerateResponse.FromString(msg).delta.text.startswith("Hello there, how are")


def test_block_ends_the_stream_with_a_blocked_final():
    policy = Policy({"CREDIT_CARD": "block"})
    final = pb.Final(
        finish_reason=pb.FinishReason.FINISH_REASON_STOP, usage=pb.Usage(completion_tokens=9)
    )
    msgs = run(body(["my card is 4111 1111 ", "1111 1111 and more text"], final), [], policy)
    last = msgs[-1].final
    assert last.finish_reason == pb.FinishReason.FINISH_REASON_BLOCKED
    assert last.safety.blocked and "CREDIT_CARD" in last.safety.reason
    assert "4111" not in "".join(m.delta.text for m in msgs[:-1])
    assert [m.WhichOneof("event") for m in msgs].count("final") == 1


def test_block_found_at_the_final_keeps_the_engines_usage():
    policy = Policy({"CREDIT_CARD": "block"})
    final = pb.Final(
        finish_reason=pb.FinishReason.FINISH_REASON_STOP,
        usage=pb.Usage(completion_tokens=9),
        request_id="r9",
    )
    msgs = run(body(["card: 4111 1111 ", "1111 1111"], final), [], policy)
    last = msgs[-1].final
    assert last.finish_reason == pb.FinishReason.FINISH_REASON_BLOCKED
    assert (last.usage.completion_tokens, last.request_id) == (9, "r9")
    assert "4111" not in "".join(m.delta.text for m in msgs[:-1])


@settings(max_examples=60, deadline=None)
@given(text_cuts=st.lists(st.integers(min_value=0, max_value=60), max_size=12))
def test_what_precedes_a_blocked_entity_goes_out_however_the_stream_is_cut(text_cuts):
    # One delta holding all of it, or one per character: the client sees the same clean text
    # (scrubbed) before the blocking Final, and nothing of the entity.
    policy = Policy({"CREDIT_CARD": "block"})
    text = "Mail bob@example.com; card 4111 1111 1111 1111 and then more."
    msgs = run(body(split_text(text, text_cuts)), [], policy)
    assert msgs[-1].final.finish_reason == pb.FinishReason.FINISH_REASON_BLOCKED
    sent = "".join(m.delta.text for m in msgs[:-1])
    assert sent == "Mail [EMAIL]; card ", sent


def test_a_recording_filter_keeps_what_it_sent_for_the_response_cache():
    f = ResponseFilter(Policy({}), record=True)
    data = body(["Mail ", "alice@", "example.com", " now"])
    out = f.feed(data, end_of_stream=True)
    dec = FrameDecoder()
    sent = [pb.GenerateResponse.FromString(m) for m in dec.feed(out)]
    assert f.recorded == [m.delta for m in sent[:-1]]  # scrubbed, as the client got them
    assert "alice@example.com" not in "".join(d.text for d in f.recorded)
    assert f.recorded_final == sent[-1].final
    assert ResponseFilter(Policy({})).recorded is None  # not recording: nothing kept


def test_a_blocked_turn_leaves_nothing_to_store():
    f = ResponseFilter(Policy({"EMAIL": "block"}), record=True)
    f.feed(body(["Mail alice@example.com"]), end_of_stream=True)
    assert f.blocked and f.recorded_final is None
