from switchyard.v1 import inference_pb2 as _inference_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CheckRequest(_message.Message):
    __slots__ = ("text", "tenant", "model")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    text: str
    tenant: str
    model: str
    def __init__(self, text: _Optional[str] = ..., tenant: _Optional[str] = ..., model: _Optional[str] = ...) -> None: ...

class CheckResponse(_message.Message):
    __slots__ = ("text", "report")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    REPORT_FIELD_NUMBER: _ClassVar[int]
    text: str
    report: _inference_pb2.SafetyReport
    def __init__(self, text: _Optional[str] = ..., report: _Optional[_Union[_inference_pb2.SafetyReport, _Mapping]] = ...) -> None: ...

class FilterRequest(_message.Message):
    __slots__ = ("text", "tenant", "model")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    text: str
    tenant: str
    model: str
    def __init__(self, text: _Optional[str] = ..., tenant: _Optional[str] = ..., model: _Optional[str] = ...) -> None: ...

class FilterResponse(_message.Message):
    __slots__ = ("text", "report")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    REPORT_FIELD_NUMBER: _ClassVar[int]
    text: str
    report: _inference_pb2.SafetyReport
    def __init__(self, text: _Optional[str] = ..., report: _Optional[_Union[_inference_pb2.SafetyReport, _Mapping]] = ...) -> None: ...
