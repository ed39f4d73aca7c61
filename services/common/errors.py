"""One error base class that knows its gRPC status, and the interceptor that maps it.

Handlers raise `InvalidArgument("sampling.top_p must be in (0, 1], got 1.5")` and never call
`context.set_code` themselves; `ErrorInterceptor` turns the exception into the gRPC status at the
edge. Anything else that escapes a handler is logged with its method and becomes INTERNAL.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

log = logging.getLogger(__name__)


class SwitchyardError(Exception):
    """An error with a gRPC status code and a message meant for the caller."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    # The HTTP status an HTTP caller gets when the code's usual one would mislead (413 for a
    # body over a limit); None: the code's (services/openai/errors.py).
    http_status: int | None = None

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        # The request field at fault, when one is ("messages[1].content"): HTTP callers get it
        # as the error's `param`.
        self.param = param

    def details(self) -> list[Any]:
        """google.rpc detail messages (e.g. RetryInfo) for the status; none by default."""
        return []

    def metadata(self) -> list[tuple[str, str]]:
        """Extra response metadata that goes with the error; none by default."""
        return []


class InvalidArgument(SwitchyardError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class Unauthenticated(SwitchyardError):
    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(SwitchyardError):
    code = grpc.StatusCode.PERMISSION_DENIED


class NotFound(SwitchyardError):
    code = grpc.StatusCode.NOT_FOUND


class FailedPrecondition(SwitchyardError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class PayloadTooLarge(InvalidArgument):
    """A request over a size limit: INVALID_ARGUMENT on gRPC, 413 over HTTP."""

    http_status = 413


class Unavailable(SwitchyardError):
    code = grpc.StatusCode.UNAVAILABLE


class ResourceExhausted(SwitchyardError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unimplemented(SwitchyardError):
    code = grpc.StatusCode.UNIMPLEMENTED


class Internal(SwitchyardError):
    code = grpc.StatusCode.INTERNAL


class ConfigError(ValueError):
    """A configuration file or value is invalid; the message names the file and field."""


# Checks a call may go ahead (the caller's identity against the method); raises a
# SwitchyardError (PERMISSION_DENIED) when not.
Authorize = Callable[[str, grpc.aio.ServicerContext], None]


def _wrap_unary(
    method: str, behavior: Callable[..., Awaitable[Any]], authorize: Authorize | None = None
) -> Callable[..., Awaitable[Any]]:
    if not inspect.iscoroutinefunction(behavior):
        return behavior  # a synchronous handler (e.g. a generated "unimplemented" stub)

    async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            if authorize is not None:
                authorize(method, context)
            return await behavior(request, context)
        except SwitchyardError as e:
            await context.abort(e.code, e.message)
        except (grpc.aio.AbortError, grpc.RpcError):
            raise
        except Exception:
            log.exception("unhandled error in %s", method)
            await context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method}")

    return wrapped


def _wrap_stream(
    method: str, behavior: Callable[..., AsyncIterator[Any]], authorize: Authorize | None = None
) -> Callable[..., AsyncIterator[Any]]:
    if not inspect.isasyncgenfunction(behavior):
        # A streaming handler written as a coroutine (it writes with context.write, or only
        # aborts) is awaited like a unary one.
        return _wrap_unary(method, behavior, authorize)  # type: ignore[arg-type,return-value]

    async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        try:
            if authorize is not None:
                authorize(method, context)
            async for item in behavior(request, context):
                yield item
        except SwitchyardError as e:
            await context.abort(e.code, e.message)
        except (grpc.aio.AbortError, grpc.RpcError):
            raise
        except Exception:
            log.exception("unhandled error in %s", method)
            await context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method}")

    return wrapped


# Methods whose wrapped handlers an ErrorInterceptor keeps (a server has a few dozen).
MAX_WRAPPED_METHODS = 256


class ErrorInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Maps `SwitchyardError` raised by any handler (unary or streaming, either way) to its gRPC
    status, and anything else to INTERNAL naming the method (logged with its traceback). With
    `authorize`, every call is first checked (the caller's identity against the method)."""

    def __init__(self, authorize: Authorize | None = None) -> None:
        self._authorize = authorize
        # method → (its handler, the handler wrapped): a server's handlers are fixed objects,
        # so each is wrapped once rather than on every call (a new stream per turn).
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None:
            return handler
        method = details.method
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self._wrap(method, handler)
        if len(self._wrapped) < MAX_WRAPPED_METHODS:
            self._wrapped[method] = (handler, wrapped)
        return wrapped

    def _wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        auth = self._authorize
        # A unary answer (unary-unary, stream-unary) is awaited; a streamed one is iterated.
        if handler.unary_unary is not None:
            return handler._replace(unary_unary=_wrap_unary(method, handler.unary_unary, auth))
        if handler.stream_unary is not None:
            return handler._replace(stream_unary=_wrap_unary(method, handler.stream_unary, auth))
        if handler.unary_stream is not None:
            return handler._replace(unary_stream=_wrap_stream(method, handler.unary_stream, auth))
        if handler.stream_stream is not None:
            return handler._replace(stream_stream=_wrap_stream(method, handler.stream_stream, auth))
        return handler
