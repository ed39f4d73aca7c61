"""The one error interceptor (services/common/errors.py): every handler shape maps a
SwitchyardError to its status and anything else to INTERNAL naming the method."""

from collections.abc import AsyncIterator
from types import SimpleNamespace

import grpc
import pytest

from services.common.errors import ErrorInterceptor, InvalidArgument
from services.common.server import create_server

SERVICE = "test.Shapes"


async def unary_unary(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    raise InvalidArgument("unary.field is wrong")


async def unary_stream(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    yield b"one"
    raise InvalidArgument("stream.field is wrong")


async def stream_unary(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> bytes:
    async for _ in requests:
        raise InvalidArgument("register.address must be IP:PORT")
    return b""


async def stream_stream(
    requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
) -> AsyncIterator[bytes]:
    async for _ in requests:
        yield b"ok"
        raise KeyError("boom")


async def coroutine_stream(
    requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
) -> None:
    raise InvalidArgument("written as a coroutine")


@pytest.fixture
async def channel():
    def add(server: grpc.aio.Server) -> None:
        server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    SERVICE,
                    {
                        "UU": grpc.unary_unary_rpc_method_handler(unary_unary),
                        "US": grpc.unary_stream_rpc_method_handler(unary_stream),
                        "SU": grpc.stream_unary_rpc_method_handler(stream_unary),
                        "SS": grpc.stream_stream_rpc_method_handler(stream_stream),
                        "SC": grpc.stream_stream_rpc_method_handler(coroutine_stream),
                    },
                ),
            )
        )

    server = await create_server("127.0.0.1:0", [add], [SERVICE])
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        yield ch
    await server.stop(None)


async def requests() -> AsyncIterator[bytes]:
    yield b"x"


async def test_every_handler_shape_gets_its_status_and_message(channel):
    cases = [
        (channel.unary_unary(f"/{SERVICE}/UU")(b"x"), "unary.field is wrong"),
        (channel.stream_unary(f"/{SERVICE}/SU")(requests()), "register.address must be IP:PORT"),
    ]
    for call, message in cases:
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await call
        assert (e.value.code(), e.value.details()) == (grpc.StatusCode.INVALID_ARGUMENT, message)

    for name, code, message in (
        ("US", grpc.StatusCode.INVALID_ARGUMENT, "stream.field is wrong"),
        ("SS", grpc.StatusCode.INTERNAL, f"internal error in /{SERVICE}/SS"),
        ("SC", grpc.StatusCode.INVALID_ARGUMENT, "written as a coroutine"),
    ):
        if name == "US":
            call = channel.unary_stream(f"/{SERVICE}/{name}")(b"x")
        else:
            call = channel.stream_stream(f"/{SERVICE}/{name}")(requests())
        with pytest.raises(grpc.aio.AioRpcError) as e:
            async for _ in call:
                pass
        assert (e.value.code(), e.value.details()) == (code, message)


async def test_a_handler_is_wrapped_once_and_again_only_when_it_changes(channel):
    interceptor = ErrorInterceptor()
    first = grpc.stream_stream_rpc_method_handler(stream_stream)
    second = grpc.stream_stream_rpc_method_handler(stream_stream)
    handlers = iter([first, first, second])

    async def continuation(details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        return next(handlers)

    details = SimpleNamespace(method=f"/{SERVICE}/SS", invocation_metadata=())
    a = await interceptor.intercept_service(continuation, details)
    b = await interceptor.intercept_service(continuation, details)
    c = await interceptor.intercept_service(continuation, details)
    assert a is b and a.stream_stream is not stream_stream
    assert c is not a and c.stream_stream is not stream_stream
    # Served through a real server, the second call of a method (its cached handler) still maps
    # errors to their status.
    for _ in range(2):
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await channel.unary_unary(f"/{SERVICE}/UU")(b"x")
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_registry_connect_refuses_a_bad_registration_with_invalid_argument():
    from services.router.registry import Registry
    from services.router.registry_service import RegistryService
    from services.router.testing import make_info
    from switchyard.v1 import router_pb2, router_pb2_grpc

    svc = RegistryService(Registry(), 1.0, {"pool-a"})
    server = await create_server("127.0.0.1:0", [svc.add_to_server], ["switchyard.v1.Registry"])
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
            stub = router_pb2_grpc.RegistryStub(ch)
            for first, message in (
                (
                    router_pb2.RegistryMessage(event={}),
                    "the first message of Registry.Connect must be `register`",
                ),
                (
                    router_pb2.RegistryMessage(
                        register=router_pb2.EngineRegistration(
                            info=make_info("e1", pool="pool-b"), address="10.0.0.1:1"
                        )
                    ),
                    "register.info.pool: pool 'pool-b' is not configured",
                ),
            ):

                async def messages(m=first):
                    yield m

                with pytest.raises(grpc.aio.AioRpcError) as e:
                    async for _ in stub.Connect(messages()):
                        pass
                assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert message in e.value.details()
    finally:
        await server.stop(None)
