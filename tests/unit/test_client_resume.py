"""MeshClient's resume (services/mesh/client.py) against a scripted Inference server on port 0."""

from collections.abc import AsyncIterator

import grpc
import pytest

from services.common import headers
from services.mesh.client import MeshClient, ResumePolicy, make_request
from switchyard.v1 import inference_pb2 as pb

SERVED_BY = pb.ServedBy(pool="p", engine="e1", model="small")


def delta(text: str, tokens: int = 1) -> pb.GenerateResponse:
    return pb.GenerateResponse(delta=pb.Delta(text=text, token_count=tokens))


class Script:
    """Each call of Generate plays the next step: (accept?, deltas, then an error or a Final)."""

    def __init__(self, *steps):
        self.steps = list(steps)
        self.requests: list[pb.GenerateRequest] = []

    async def Generate(
        self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.GenerateResponse]:
        self.requests.append(request)
        accept, deltas, end = self.steps.pop(0)
        if accept:
            await context.send_initial_metadata(
                ((headers.SERVED_BY, SERVED_BY.SerializeToString()),)
            )
        for d in deltas:
            yield d
        if isinstance(end, pb.Final):
            end.resumed = request.continuation.resumed
            yield pb.GenerateResponse(final=end)
        elif isinstance(end[0], pb.Final):  # a Final, then the stream breaks anyway
            yield pb.GenerateResponse(final=end[0])
            await context.abort(*end[1])
        else:
            await context.abort(*end)


@pytest.fixture
async def serve():
    servers = []

    async def start(script: Script) -> MeshClient:
        server = grpc.aio.server()
        handler = grpc.unary_stream_rpc_method_handler(
            script.Generate,
            request_deserializer=pb.GenerateRequest.FromString,
            response_serializer=pb.GenerateResponse.SerializeToString,
        )
        server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    "switchyard.v1.Inference", {"Generate": handler}
                ),
            )
        )
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        servers.append(server)
        return MeshClient.connect(
            f"127.0.0.1:{port}", resume=ResumePolicy(backoff=0.01, max_backoff=0.02)
        )

    yield start
    for s in servers:
        await s.stop(None)


BROKEN = (grpc.StatusCode.INTERNAL, "Received RST_STREAM with error code 2")
FINAL = pb.Final(finish_reason=pb.FinishReason.FINISH_REASON_LENGTH)


async def test_a_stream_broken_after_the_engine_took_it_resumes_with_what_was_received(serve):
    script = Script(
        (True, [delta("Once", 1), delta(" upon", 2)], BROKEN),
        (True, [delta(" a time", 2)], pb.Final(finish_reason=pb.FinishReason.FINISH_REASON_STOP)),
    )
    async with await serve(script) as mesh:
        reply = await mesh.generate(make_request("Tell", max_tokens=10))
    assert reply.text == "Once upon a time"
    assert reply.final.resumed == 1
    assert [(c.received_text, c.completion_tokens) for c in reply.resumes] == [("Once upon", 3)]
    first, second = script.requests
    assert not first.HasField("continuation")
    c = second.continuation
    assert (c.received_text, c.completion_tokens, c.resumed) == ("Once upon", 3, 1)
    assert second.prompt == "Tell" and second.sampling.max_tokens == 10


async def test_a_stream_broken_after_its_final_is_complete_and_not_resumed(serve):
    script = Script((True, [delta("done")], (FINAL, BROKEN)), (True, [delta("again")], FINAL))
    async with await serve(script) as mesh:
        reply = await mesh.generate(make_request("x", max_tokens=2))
    assert reply.text == "done" and reply.final.finish_reason == FINAL.finish_reason
    assert len(script.requests) == 1 and not reply.resumes


async def test_a_continuation_that_finds_no_engine_yet_is_retried(serve):
    no_engine = (grpc.StatusCode.UNAVAILABLE, "pool p: no engines registered")
    script = Script(
        (True, [delta("a")], BROKEN),
        (False, [], no_engine),
        (False, [], no_engine),
        (True, [delta("b")], FINAL),
    )
    async with await serve(script) as mesh:
        reply = await mesh.generate(make_request("x", max_tokens=2))
    assert reply.text == "ab" and reply.final.resumed == 1
    assert [r.continuation.received_text for r in script.requests[1:]] == ["a", "a", "a"]


async def test_errors_before_an_engine_took_the_turn_reach_the_caller_as_they_are(serve):
    script = Script((False, [], (grpc.StatusCode.UNAVAILABLE, "pool p: no engines registered")))
    async with await serve(script) as mesh:
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await mesh.generate(make_request("x"))
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE and len(script.requests) == 1


async def test_a_callers_mistake_is_never_resumed(serve):
    script = Script((True, [delta("a")], (grpc.StatusCode.INVALID_ARGUMENT, "bad")))
    async with await serve(script) as mesh:
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await mesh.generate(make_request("x"))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and len(script.requests) == 1


async def test_structured_output_is_not_resumed(serve):
    script = Script((True, [delta("a")], BROKEN))
    async with await serve(script) as mesh:
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await mesh.generate(make_request("x", regex="a+"))
    assert e.value.code() == grpc.StatusCode.INTERNAL and len(script.requests) == 1


async def test_resumes_are_bounded(serve):
    script = Script(*[(True, [delta("a")], BROKEN)] * 3)
    client = await serve(script)
    client._resume = ResumePolicy(max_resumes=2, backoff=0.01)
    async with client as mesh:
        with pytest.raises(grpc.aio.AioRpcError):
            await mesh.generate(make_request("x"))
    assert len(script.requests) == 3
    assert [r.continuation.resumed for r in script.requests] == [0, 1, 2]


async def test_placing_a_continuation_gives_up_after_retry_for(serve):
    no_engine = (grpc.StatusCode.UNAVAILABLE, "pool p: no engines registered")
    script = Script((True, [delta("a")], BROKEN), *[(False, [], no_engine)] * 50)
    client = await serve(script)
    client._resume = ResumePolicy(retry_for=0.2, backoff=0.05, max_backoff=0.05)
    async with client as mesh:
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await mesh.generate(make_request("x"))
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    assert 3 <= len(script.requests) <= 8


async def test_resuming_can_be_turned_off(serve):
    script = Script((True, [delta("a")], BROKEN))
    client = await serve(script)
    client._resume = None
    async with client as mesh:
        with pytest.raises(grpc.aio.AioRpcError):
            await mesh.generate(make_request("x"))
    assert len(script.requests) == 1
