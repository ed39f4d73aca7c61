"""gRPC message framing over HTTP/2 bodies, for the ext_proc filters that read and rewrite them.

Envoy's ext_proc STREAMED mode hands the filter the response body in arbitrary chunks: a gRPC
message (1-byte compressed flag, 4-byte big-endian length, payload) may be split across chunks
or several may share one. `FrameDecoder` reassembles whole messages from chunks; `encode_frame`
writes one back (lengths change when text is scrubbed, so every frame is re-encoded).
`single_message` unframes a unary request body (Envoy's BUFFERED mode hands over all of it).
"""

from __future__ import annotations

import struct

from services.common.errors import InvalidArgument, Unimplemented

_PREFIX = struct.Struct(">BI")
# A message longer than this is refused (Envoy and our servers use the same order of limit).
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


def encode_frame(message: bytes) -> bytes:
    """One uncompressed gRPC frame around a serialized message."""
    return _PREFIX.pack(0, len(message)) + message


def single_message(body: bytes) -> bytes:
    """The one message of a unary gRPC request body."""
    if len(body) < _PREFIX.size:
        raise InvalidArgument("request body is not a gRPC message")
    compressed, length = _PREFIX.unpack_from(body)
    if compressed:
        raise Unimplemented("compressed requests are not supported; send uncompressed")
    if len(body) != _PREFIX.size + length:
        raise InvalidArgument("request body must hold exactly one GenerateRequest")
    return body[_PREFIX.size :]


class FrameDecoder:
    """Feed body chunks; get back every message completed by them, in order."""

    def __init__(self, max_message_bytes: int = MAX_MESSAGE_BYTES) -> None:
        self._buf = bytearray()
        self._max = max_message_bytes

    @property
    def pending(self) -> int:
        """Bytes received that do not yet form a whole message."""
        return len(self._buf)

    def feed(self, chunk: bytes) -> list[bytes]:
        self._buf += chunk
        out: list[bytes] = []
        while len(self._buf) >= _PREFIX.size:
            compressed, length = _PREFIX.unpack_from(self._buf)
            if compressed:
                raise Unimplemented("compressed gRPC messages cannot be filtered")
            if length > self._max:
                raise InvalidArgument(f"gRPC message of {length} bytes exceeds {self._max}")
            end = _PREFIX.size + length
            if len(self._buf) < end:
                break
            out.append(bytes(self._buf[_PREFIX.size : end]))
            del self._buf[:end]
        return out

    def finish(self) -> None:
        """At end of stream: raise if a message was cut short."""
        if self._buf:
            raise InvalidArgument(f"stream ended inside a gRPC message ({len(self._buf)} bytes)")
