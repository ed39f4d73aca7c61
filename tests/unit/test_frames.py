"""gRPC frames reassembled from arbitrarily cut body chunks (services/safety/frames.py)."""

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.common.errors import InvalidArgument, Unimplemented
from services.common.frames import FrameDecoder, encode_frame


def cut(data: bytes, points: list[int]) -> list[bytes]:
    points = sorted({p for p in points if 0 < p < len(data)})
    edges = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges)]


@settings(max_examples=200, deadline=None)
@given(
    messages=st.lists(st.binary(max_size=300), max_size=12),
    points=st.lists(st.integers(min_value=0, max_value=4000), max_size=40),
)
def test_any_chunking_yields_the_same_messages(messages, points):
    body = b"".join(encode_frame(m) for m in messages)
    dec = FrameDecoder()
    got = [m for chunk in cut(body, points) for m in dec.feed(chunk)]
    dec.finish()
    assert got == messages
    assert dec.pending == 0


def test_partial_message_is_held_then_completed():
    frame = encode_frame(b"hello")
    dec = FrameDecoder()
    assert dec.feed(frame[:3]) == []
    assert dec.pending == 3
    assert dec.feed(frame[3:]) == [b"hello"]


def test_truncated_stream_and_limits_are_errors():
    dec = FrameDecoder()
    dec.feed(encode_frame(b"abc")[:4])
    with pytest.raises(InvalidArgument, match="stream ended inside a gRPC message"):
        dec.finish()
    with pytest.raises(InvalidArgument, match="exceeds 8"):
        FrameDecoder(max_message_bytes=8).feed(encode_frame(b"x" * 9))
    with pytest.raises(Unimplemented, match="compressed"):
        FrameDecoder().feed(b"\x01\x00\x00\x00\x01x")
