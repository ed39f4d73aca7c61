import pytest

from services.common.errors import InvalidArgument
from services.common.protoutil import Malformed, decode_request, lenient_deserializer
from switchyard.v1 import inference_pb2 as pb


def _with_bad_bytes(msg, placeholder: bytes, bad: bytes) -> bytes:
    assert len(placeholder) == len(bad)
    data = msg.SerializeToString()
    assert data.count(placeholder) == 1
    return data.replace(placeholder, bad)


@pytest.mark.parametrize(
    ("msg", "where"),
    [
        (pb.GenerateRequest(prompt="@@@@"), "prompt"),
        (pb.GenerateRequest(model="@@@@", prompt="hi"), "model"),
        (
            pb.GenerateRequest(
                conversation=pb.Conversation(
                    messages=[
                        pb.ChatMessage(role="user", content="ok"),
                        pb.ChatMessage(role="user", content="@@@@"),
                    ]
                )
            ),
            "conversation.messages[1].content",
        ),
        (
            pb.GenerateRequest(prompt="hi", sampling=pb.SamplingParams(stop=["x", "@@@@"])),
            "sampling.stop[1]",
        ),
        (pb.GenerateRequest(prompt="hi", labels={"k": "@@@@"}), "labels[0].value"),
    ],
)
def test_invalid_utf8_names_the_field(msg, where):
    data = _with_bad_bytes(msg, b"@@@@", b"\xff\xfe\xc3(")
    with pytest.raises(InvalidArgument) as e:
        decode_request(pb.GenerateRequest, data)
    assert e.value.message == f"{where} is not valid UTF-8"


def test_valid_bytes_decode():
    msg = pb.GenerateRequest(prompt="héllo → 世界")
    assert decode_request(pb.GenerateRequest, msg.SerializeToString()) == msg


def test_corrupt_wire_format_is_invalid_argument():
    with pytest.raises(InvalidArgument, match=r"not a valid switchyard\.v1\.GenerateRequest"):
        decode_request(pb.GenerateRequest, b"\xff\xff\xff")


def test_lenient_deserializer_never_raises():
    out = lenient_deserializer(pb.GenerateRequest)(b"\x12\x02\xff\xfe")
    assert isinstance(out, Malformed)
    assert out.error.message == "prompt is not valid UTF-8"
