"""Request decoding that reports *which* field is bad instead of a bare parse error.

protobuf refuses a `string` field holding invalid UTF-8 with a DecodeError that does not say where.
`decode_request` parses the same bytes again with a mirror of the message in which every string
field is `bytes`, walks it, and names the first field whose bytes are not UTF-8, so the caller gets
INVALID_ARGUMENT "conversation.messages[1].content is not valid UTF-8".
"""

from __future__ import annotations

from functools import cache
from typing import Any, TypeVar

from google.protobuf import descriptor_pb2, descriptor_pool, message, message_factory
from google.protobuf.descriptor import Descriptor

from services.common.errors import InvalidArgument

MessageT = TypeVar("MessageT", bound=message.Message)

_MIRROR_PREFIX = "utf8check."


@cache
def _mirror_class(desc: Descriptor) -> type[message.Message]:
    """The message class of `desc` with every string field turned into bytes."""
    pool = descriptor_pool.DescriptorPool()
    added: set[str] = set()

    def add(fd: Any) -> None:
        if fd.name in added:
            return
        for dep in fd.dependencies:
            add(dep)
        proto = descriptor_pb2.FileDescriptorProto()
        fd.CopyToProto(proto)
        if fd.package.startswith("google.protobuf"):
            pool.Add(proto)
        else:
            proto.package = _MIRROR_PREFIX + proto.package
            del proto.service[:]
            for msg in proto.message_type:
                _to_bytes(msg)
            pool.Add(proto)
        added.add(fd.name)

    add(desc.file)
    mirror = pool.FindMessageTypeByName(_MIRROR_PREFIX + desc.full_name)
    cls: type[message.Message] = message_factory.GetMessageClass(mirror)
    return cls


def _to_bytes(msg: descriptor_pb2.DescriptorProto) -> None:
    for f in msg.field:
        if f.type == descriptor_pb2.FieldDescriptorProto.TYPE_STRING:
            f.type = descriptor_pb2.FieldDescriptorProto.TYPE_BYTES
        if f.type_name.startswith(".") and not f.type_name.startswith(".google.protobuf."):
            f.type_name = "." + _MIRROR_PREFIX + f.type_name[1:]
    for nested in msg.nested_type:
        # A map whose key is bytes is not allowed: mirror maps as repeated key/value messages.
        nested.options.ClearField("map_entry")
        _to_bytes(nested)


def _find_bad_utf8(msg: message.Message, path: str) -> str | None:
    for fd, value in msg.ListFields():
        name = f"{path}.{fd.name}" if path else fd.name
        repeated = fd.is_repeated
        items = list(value) if repeated else [value]
        for i, item in enumerate(items):
            where = f"{name}[{i}]" if repeated else name
            if isinstance(item, message.Message):
                found = _find_bad_utf8(item, where)
                if found:
                    return found
            elif isinstance(item, bytes) and not _is_utf8(item):
                return where
    return None


def _is_utf8(b: bytes) -> bool:
    try:
        b.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def decode_request(cls: type[MessageT], data: bytes) -> MessageT:
    """Parse `data` as `cls`; raises InvalidArgument naming the field when it cannot."""
    try:
        parsed: MessageT = cls.FromString(data)
        return parsed
    except message.DecodeError as e:
        try:
            mirror = _mirror_class(cls.DESCRIPTOR).FromString(data)
        except message.DecodeError:
            raise InvalidArgument(
                f"request is not a valid {cls.DESCRIPTOR.full_name}: {e}"
            ) from None
        bad = _find_bad_utf8(mirror, "")
        if bad:
            raise InvalidArgument(f"{bad} is not valid UTF-8") from None
        raise InvalidArgument(f"request is not a valid {cls.DESCRIPTOR.full_name}: {e}") from None


class Malformed:
    """Stands in for a request that failed to decode; the handler raises its error."""

    __slots__ = ("error",)

    def __init__(self, error: InvalidArgument) -> None:
        self.error = error


def lenient_deserializer(cls: type[MessageT]) -> Any:
    """A gRPC request deserializer that never raises: bad bytes become `Malformed`, so the
    handler can answer INVALID_ARGUMENT (a raising deserializer makes grpc answer INTERNAL)."""

    def deserialize(data: bytes) -> MessageT | Malformed:
        try:
            return decode_request(cls, data)
        except InvalidArgument as e:
            return Malformed(e)

    return deserialize
