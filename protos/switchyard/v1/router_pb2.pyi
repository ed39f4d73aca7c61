from switchyard.v1 import engine_pb2 as _engine_pb2
from switchyard.v1 import inference_pb2 as _inference_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RegistryMessage(_message.Message):
    __slots__ = ("register", "event")
    REGISTER_FIELD_NUMBER: _ClassVar[int]
    EVENT_FIELD_NUMBER: _ClassVar[int]
    register: EngineRegistration
    event: _engine_pb2.EngineEvent
    def __init__(self, register: _Optional[_Union[EngineRegistration, _Mapping]] = ..., event: _Optional[_Union[_engine_pb2.EngineEvent, _Mapping]] = ...) -> None: ...

class EngineRegistration(_message.Message):
    __slots__ = ("info", "address")
    INFO_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    info: _engine_pb2.EngineInfo
    address: str
    def __init__(self, info: _Optional[_Union[_engine_pb2.EngineInfo, _Mapping]] = ..., address: _Optional[str] = ...) -> None: ...

class RegistryReply(_message.Message):
    __slots__ = ("router_id", "heartbeat_seconds")
    ROUTER_ID_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    router_id: str
    heartbeat_seconds: float
    def __init__(self, router_id: _Optional[str] = ..., heartbeat_seconds: _Optional[float] = ...) -> None: ...

class PickRequest(_message.Message):
    __slots__ = ("request", "tenant", "commit")
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    COMMIT_FIELD_NUMBER: _ClassVar[int]
    request: _inference_pb2.GenerateRequest
    tenant: str
    commit: bool
    def __init__(self, request: _Optional[_Union[_inference_pb2.GenerateRequest, _Mapping]] = ..., tenant: _Optional[str] = ..., commit: _Optional[bool] = ...) -> None: ...

class PickResponse(_message.Message):
    __slots__ = ("pool", "model", "engine_id", "endpoint", "fallback_endpoints", "candidates", "prompt_tokens", "cache_salt", "model_version", "version_reason")
    POOL_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ENGINE_ID_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CACHE_SALT_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    VERSION_REASON_FIELD_NUMBER: _ClassVar[int]
    pool: str
    model: str
    engine_id: str
    endpoint: str
    fallback_endpoints: _containers.RepeatedScalarFieldContainer[str]
    candidates: _containers.RepeatedCompositeFieldContainer[Candidate]
    prompt_tokens: int
    cache_salt: str
    model_version: str
    version_reason: str
    def __init__(self, pool: _Optional[str] = ..., model: _Optional[str] = ..., engine_id: _Optional[str] = ..., endpoint: _Optional[str] = ..., fallback_endpoints: _Optional[_Iterable[str]] = ..., candidates: _Optional[_Iterable[_Union[Candidate, _Mapping]]] = ..., prompt_tokens: _Optional[int] = ..., cache_salt: _Optional[str] = ..., model_version: _Optional[str] = ..., version_reason: _Optional[str] = ...) -> None: ...

class Candidate(_message.Message):
    __slots__ = ("engine_id", "endpoint", "filtered_by", "score", "scores")
    class ScoresEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    ENGINE_ID_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    FILTERED_BY_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    engine_id: str
    endpoint: str
    filtered_by: str
    score: float
    scores: _containers.ScalarMap[str, float]
    def __init__(self, engine_id: _Optional[str] = ..., endpoint: _Optional[str] = ..., filtered_by: _Optional[str] = ..., score: _Optional[float] = ..., scores: _Optional[_Mapping[str, float]] = ...) -> None: ...

class PurgeCacheRequest(_message.Message):
    __slots__ = ("tenant",)
    TENANT_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    def __init__(self, tenant: _Optional[str] = ...) -> None: ...

class PurgeCacheResponse(_message.Message):
    __slots__ = ("purged",)
    PURGED_FIELD_NUMBER: _ClassVar[int]
    purged: int
    def __init__(self, purged: _Optional[int] = ...) -> None: ...

class CachePutRequest(_message.Message):
    __slots__ = ("entry", "turn")
    ENTRY_FIELD_NUMBER: _ClassVar[int]
    TURN_FIELD_NUMBER: _ClassVar[int]
    entry: str
    turn: CachedTurn
    def __init__(self, entry: _Optional[str] = ..., turn: _Optional[_Union[CachedTurn, _Mapping]] = ...) -> None: ...

class CachePutResponse(_message.Message):
    __slots__ = ("stored",)
    STORED_FIELD_NUMBER: _ClassVar[int]
    stored: bool
    def __init__(self, stored: _Optional[bool] = ...) -> None: ...

class CachedTurn(_message.Message):
    __slots__ = ("deltas", "final")
    DELTAS_FIELD_NUMBER: _ClassVar[int]
    FINAL_FIELD_NUMBER: _ClassVar[int]
    deltas: _containers.RepeatedCompositeFieldContainer[_inference_pb2.Delta]
    final: _inference_pb2.Final
    def __init__(self, deltas: _Optional[_Iterable[_Union[_inference_pb2.Delta, _Mapping]]] = ..., final: _Optional[_Union[_inference_pb2.Final, _Mapping]] = ...) -> None: ...

class SetVersionWeightsRequest(_message.Message):
    __slots__ = ("model", "weights")
    class WeightsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    MODEL_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    model: str
    weights: _containers.ScalarMap[str, float]
    def __init__(self, model: _Optional[str] = ..., weights: _Optional[_Mapping[str, float]] = ...) -> None: ...

class SetVersionWeightsResponse(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: VersionedModel
    def __init__(self, model: _Optional[_Union[VersionedModel, _Mapping]] = ...) -> None: ...

class VersionedModel(_message.Message):
    __slots__ = ("model", "baseline", "arms")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    BASELINE_FIELD_NUMBER: _ClassVar[int]
    ARMS_FIELD_NUMBER: _ClassVar[int]
    model: str
    baseline: str
    arms: _containers.RepeatedCompositeFieldContainer[VersionArm]
    def __init__(self, model: _Optional[str] = ..., baseline: _Optional[str] = ..., arms: _Optional[_Iterable[_Union[VersionArm, _Mapping]]] = ...) -> None: ...

class VersionArm(_message.Message):
    __slots__ = ("version", "pool", "weight", "configured_weight", "rolled_back", "window_turns", "window_failed", "window_ttft_p99")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    POOL_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    CONFIGURED_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    ROLLED_BACK_FIELD_NUMBER: _ClassVar[int]
    WINDOW_TURNS_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FAILED_FIELD_NUMBER: _ClassVar[int]
    WINDOW_TTFT_P99_FIELD_NUMBER: _ClassVar[int]
    version: str
    pool: str
    weight: float
    configured_weight: float
    rolled_back: str
    window_turns: int
    window_failed: int
    window_ttft_p99: float
    def __init__(self, version: _Optional[str] = ..., pool: _Optional[str] = ..., weight: _Optional[float] = ..., configured_weight: _Optional[float] = ..., rolled_back: _Optional[str] = ..., window_turns: _Optional[int] = ..., window_failed: _Optional[int] = ..., window_ttft_p99: _Optional[float] = ...) -> None: ...

class ReloadConfigRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ReloadConfigResponse(_message.Message):
    __slots__ = ("source", "changed")
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    CHANGED_FIELD_NUMBER: _ClassVar[int]
    source: str
    changed: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, source: _Optional[str] = ..., changed: _Optional[_Iterable[str]] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StatusResponse(_message.Message):
    __slots__ = ("pools", "xds_nodes", "router_id", "versions")
    POOLS_FIELD_NUMBER: _ClassVar[int]
    XDS_NODES_FIELD_NUMBER: _ClassVar[int]
    ROUTER_ID_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    pools: _containers.RepeatedCompositeFieldContainer[PoolStatus]
    xds_nodes: _containers.RepeatedCompositeFieldContainer[XdsNodeStatus]
    router_id: str
    versions: _containers.RepeatedCompositeFieldContainer[VersionedModel]
    def __init__(self, pools: _Optional[_Iterable[_Union[PoolStatus, _Mapping]]] = ..., xds_nodes: _Optional[_Iterable[_Union[XdsNodeStatus, _Mapping]]] = ..., router_id: _Optional[str] = ..., versions: _Optional[_Iterable[_Union[VersionedModel, _Mapping]]] = ...) -> None: ...

class PoolStatus(_message.Message):
    __slots__ = ("name", "accelerator", "models", "aliases", "engines", "in_flight", "queued", "free_slots", "capacity", "desired_engines", "scale_reason")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ACCELERATOR_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    ALIASES_FIELD_NUMBER: _ClassVar[int]
    ENGINES_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    QUEUED_FIELD_NUMBER: _ClassVar[int]
    FREE_SLOTS_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    DESIRED_ENGINES_FIELD_NUMBER: _ClassVar[int]
    SCALE_REASON_FIELD_NUMBER: _ClassVar[int]
    name: str
    accelerator: str
    models: _containers.RepeatedScalarFieldContainer[str]
    aliases: _containers.RepeatedScalarFieldContainer[str]
    engines: _containers.RepeatedCompositeFieldContainer[EngineStatus]
    in_flight: int
    queued: int
    free_slots: int
    capacity: int
    desired_engines: int
    scale_reason: str
    def __init__(self, name: _Optional[str] = ..., accelerator: _Optional[str] = ..., models: _Optional[_Iterable[str]] = ..., aliases: _Optional[_Iterable[str]] = ..., engines: _Optional[_Iterable[_Union[EngineStatus, _Mapping]]] = ..., in_flight: _Optional[int] = ..., queued: _Optional[int] = ..., free_slots: _Optional[int] = ..., capacity: _Optional[int] = ..., desired_engines: _Optional[int] = ..., scale_reason: _Optional[str] = ...) -> None: ...

class EngineStatus(_message.Message):
    __slots__ = ("engine_id", "endpoint", "model", "model_version", "state", "load", "cache_hit_rate", "routed_turns", "indexed_blocks", "seconds_since_report")
    ENGINE_ID_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    LOAD_FIELD_NUMBER: _ClassVar[int]
    CACHE_HIT_RATE_FIELD_NUMBER: _ClassVar[int]
    ROUTED_TURNS_FIELD_NUMBER: _ClassVar[int]
    INDEXED_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    SECONDS_SINCE_REPORT_FIELD_NUMBER: _ClassVar[int]
    engine_id: str
    endpoint: str
    model: str
    model_version: str
    state: str
    load: _engine_pb2.LoadReport
    cache_hit_rate: float
    routed_turns: int
    indexed_blocks: int
    seconds_since_report: float
    def __init__(self, engine_id: _Optional[str] = ..., endpoint: _Optional[str] = ..., model: _Optional[str] = ..., model_version: _Optional[str] = ..., state: _Optional[str] = ..., load: _Optional[_Union[_engine_pb2.LoadReport, _Mapping]] = ..., cache_hit_rate: _Optional[float] = ..., routed_turns: _Optional[int] = ..., indexed_blocks: _Optional[int] = ..., seconds_since_report: _Optional[float] = ...) -> None: ...

class XdsNodeStatus(_message.Message):
    __slots__ = ("node_id", "types")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    TYPES_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    types: _containers.RepeatedCompositeFieldContainer[XdsTypeStatus]
    def __init__(self, node_id: _Optional[str] = ..., types: _Optional[_Iterable[_Union[XdsTypeStatus, _Mapping]]] = ...) -> None: ...

class XdsTypeStatus(_message.Message):
    __slots__ = ("type_url", "version_sent", "version_acked", "nonce", "nacked", "error")
    TYPE_URL_FIELD_NUMBER: _ClassVar[int]
    VERSION_SENT_FIELD_NUMBER: _ClassVar[int]
    VERSION_ACKED_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    NACKED_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    type_url: str
    version_sent: str
    version_acked: str
    nonce: str
    nacked: bool
    error: str
    def __init__(self, type_url: _Optional[str] = ..., version_sent: _Optional[str] = ..., version_acked: _Optional[str] = ..., nonce: _Optional[str] = ..., nacked: _Optional[bool] = ..., error: _Optional[str] = ...) -> None: ...

class AdminDrainRequest(_message.Message):
    __slots__ = ("engine_id", "grace_seconds")
    ENGINE_ID_FIELD_NUMBER: _ClassVar[int]
    GRACE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    engine_id: str
    grace_seconds: float
    def __init__(self, engine_id: _Optional[str] = ..., grace_seconds: _Optional[float] = ...) -> None: ...

class AdminDrainResponse(_message.Message):
    __slots__ = ("in_flight",)
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    in_flight: int
    def __init__(self, in_flight: _Optional[int] = ...) -> None: ...

class AdminUndrainRequest(_message.Message):
    __slots__ = ("engine_id",)
    ENGINE_ID_FIELD_NUMBER: _ClassVar[int]
    engine_id: str
    def __init__(self, engine_id: _Optional[str] = ...) -> None: ...

class AdminUndrainResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ApiKey(_message.Message):
    __slots__ = ("key_id", "name", "tenant", "tier", "models", "created", "revoked", "quotas")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    REVOKED_FIELD_NUMBER: _ClassVar[int]
    QUOTAS_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    name: str
    tenant: str
    tier: str
    models: _containers.RepeatedScalarFieldContainer[str]
    created: float
    revoked: float
    quotas: Quotas
    def __init__(self, key_id: _Optional[str] = ..., name: _Optional[str] = ..., tenant: _Optional[str] = ..., tier: _Optional[str] = ..., models: _Optional[_Iterable[str]] = ..., created: _Optional[float] = ..., revoked: _Optional[float] = ..., quotas: _Optional[_Union[Quotas, _Mapping]] = ...) -> None: ...

class Quotas(_message.Message):
    __slots__ = ("tokens_per_minute", "tokens_per_day", "requests_per_minute", "concurrent_streams", "default_max_tokens")
    TOKENS_PER_MINUTE_FIELD_NUMBER: _ClassVar[int]
    TOKENS_PER_DAY_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_PER_MINUTE_FIELD_NUMBER: _ClassVar[int]
    CONCURRENT_STREAMS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    tokens_per_minute: int
    tokens_per_day: int
    requests_per_minute: int
    concurrent_streams: int
    default_max_tokens: int
    def __init__(self, tokens_per_minute: _Optional[int] = ..., tokens_per_day: _Optional[int] = ..., requests_per_minute: _Optional[int] = ..., concurrent_streams: _Optional[int] = ..., default_max_tokens: _Optional[int] = ...) -> None: ...

class CreateKeyRequest(_message.Message):
    __slots__ = ("tenant", "tier", "models", "name", "quotas")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    QUOTAS_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    tier: str
    models: _containers.RepeatedScalarFieldContainer[str]
    name: str
    quotas: Quotas
    def __init__(self, tenant: _Optional[str] = ..., tier: _Optional[str] = ..., models: _Optional[_Iterable[str]] = ..., name: _Optional[str] = ..., quotas: _Optional[_Union[Quotas, _Mapping]] = ...) -> None: ...

class CreateKeyResponse(_message.Message):
    __slots__ = ("key", "secret")
    KEY_FIELD_NUMBER: _ClassVar[int]
    SECRET_FIELD_NUMBER: _ClassVar[int]
    key: ApiKey
    secret: str
    def __init__(self, key: _Optional[_Union[ApiKey, _Mapping]] = ..., secret: _Optional[str] = ...) -> None: ...

class ListKeysRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListKeysResponse(_message.Message):
    __slots__ = ("keys",)
    KEYS_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.RepeatedCompositeFieldContainer[ApiKey]
    def __init__(self, keys: _Optional[_Iterable[_Union[ApiKey, _Mapping]]] = ...) -> None: ...

class RevokeKeyRequest(_message.Message):
    __slots__ = ("key_id",)
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    def __init__(self, key_id: _Optional[str] = ...) -> None: ...

class RevokeKeyResponse(_message.Message):
    __slots__ = ("key",)
    KEY_FIELD_NUMBER: _ClassVar[int]
    key: ApiKey
    def __init__(self, key: _Optional[_Union[ApiKey, _Mapping]] = ...) -> None: ...

class TenantPolicy(_message.Message):
    __slots__ = ("tenant", "weight", "tier", "quotas", "cache_group", "source", "response_cache", "response_cache_ttl_seconds")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    QUOTAS_FIELD_NUMBER: _ClassVar[int]
    CACHE_GROUP_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_CACHE_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_CACHE_TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    weight: float
    tier: str
    quotas: Quotas
    cache_group: str
    source: str
    response_cache: bool
    response_cache_ttl_seconds: float
    def __init__(self, tenant: _Optional[str] = ..., weight: _Optional[float] = ..., tier: _Optional[str] = ..., quotas: _Optional[_Union[Quotas, _Mapping]] = ..., cache_group: _Optional[str] = ..., source: _Optional[str] = ..., response_cache: _Optional[bool] = ..., response_cache_ttl_seconds: _Optional[float] = ...) -> None: ...

class SetTenantRequest(_message.Message):
    __slots__ = ("tenant", "update", "policy", "reset")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    UPDATE_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    RESET_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    update: _containers.RepeatedScalarFieldContainer[str]
    policy: TenantPolicy
    reset: bool
    def __init__(self, tenant: _Optional[str] = ..., update: _Optional[_Iterable[str]] = ..., policy: _Optional[_Union[TenantPolicy, _Mapping]] = ..., reset: _Optional[bool] = ...) -> None: ...

class SetTenantResponse(_message.Message):
    __slots__ = ("policy",)
    POLICY_FIELD_NUMBER: _ClassVar[int]
    policy: TenantPolicy
    def __init__(self, policy: _Optional[_Union[TenantPolicy, _Mapping]] = ...) -> None: ...

class ListTenantsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class TenantStatus(_message.Message):
    __slots__ = ("policy", "remaining", "in_flight", "queued", "admitted", "over_quota", "shed", "tokens", "waited")
    class RemainingEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    POLICY_FIELD_NUMBER: _ClassVar[int]
    REMAINING_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    QUEUED_FIELD_NUMBER: _ClassVar[int]
    ADMITTED_FIELD_NUMBER: _ClassVar[int]
    OVER_QUOTA_FIELD_NUMBER: _ClassVar[int]
    SHED_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    WAITED_FIELD_NUMBER: _ClassVar[int]
    policy: TenantPolicy
    remaining: _containers.ScalarMap[str, int]
    in_flight: int
    queued: int
    admitted: int
    over_quota: int
    shed: int
    tokens: int
    waited: int
    def __init__(self, policy: _Optional[_Union[TenantPolicy, _Mapping]] = ..., remaining: _Optional[_Mapping[str, int]] = ..., in_flight: _Optional[int] = ..., queued: _Optional[int] = ..., admitted: _Optional[int] = ..., over_quota: _Optional[int] = ..., shed: _Optional[int] = ..., tokens: _Optional[int] = ..., waited: _Optional[int] = ...) -> None: ...

class ListTenantsResponse(_message.Message):
    __slots__ = ("tenants", "ledger")
    TENANTS_FIELD_NUMBER: _ClassVar[int]
    LEDGER_FIELD_NUMBER: _ClassVar[int]
    tenants: _containers.RepeatedCompositeFieldContainer[TenantStatus]
    ledger: str
    def __init__(self, tenants: _Optional[_Iterable[_Union[TenantStatus, _Mapping]]] = ..., ledger: _Optional[str] = ...) -> None: ...
