from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EventType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EVENT_TYPE_UNSPECIFIED: _ClassVar[EventType]
    VIEW: _ClassVar[EventType]
    CLICK: _ClassVar[EventType]
    ADD_TO_CART: _ClassVar[EventType]
    PURCHASE: _ClassVar[EventType]
    SEARCH: _ClassVar[EventType]

class AlertStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ALERT_STATUS_UNSPECIFIED: _ClassVar[AlertStatus]
    FIRING: _ClassVar[AlertStatus]
    RESOLVED: _ClassVar[AlertStatus]
EVENT_TYPE_UNSPECIFIED: EventType
VIEW: EventType
CLICK: EventType
ADD_TO_CART: EventType
PURCHASE: EventType
SEARCH: EventType
ALERT_STATUS_UNSPECIFIED: AlertStatus
FIRING: AlertStatus
RESOLVED: AlertStatus

class UserEvent(_message.Message):
    __slots__ = ("event_id", "user_id", "session_id", "event_type", "item_id", "query", "price", "timestamp_ms", "request_id", "context", "ingested_at_ms")
    class ContextEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    EVENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    QUERY_FIELD_NUMBER: _ClassVar[int]
    PRICE_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    INGESTED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    user_id: str
    session_id: str
    event_type: EventType
    item_id: str
    query: str
    price: float
    timestamp_ms: int
    request_id: str
    context: _containers.ScalarMap[str, str]
    ingested_at_ms: int
    def __init__(self, event_id: _Optional[str] = ..., user_id: _Optional[str] = ..., session_id: _Optional[str] = ..., event_type: _Optional[_Union[EventType, str]] = ..., item_id: _Optional[str] = ..., query: _Optional[str] = ..., price: _Optional[float] = ..., timestamp_ms: _Optional[int] = ..., request_id: _Optional[str] = ..., context: _Optional[_Mapping[str, str]] = ..., ingested_at_ms: _Optional[int] = ...) -> None: ...

class ImpressionItem(_message.Message):
    __slots__ = ("item_id", "position", "score", "propensity", "pool_index")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    PROPENSITY_FIELD_NUMBER: _ClassVar[int]
    POOL_INDEX_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    position: int
    score: float
    propensity: float
    pool_index: int
    def __init__(self, item_id: _Optional[str] = ..., position: _Optional[int] = ..., score: _Optional[float] = ..., propensity: _Optional[float] = ..., pool_index: _Optional[int] = ...) -> None: ...

class Impression(_message.Message):
    __slots__ = ("request_id", "user_id", "session_id", "surface", "query", "model_name", "model_version", "policy_version", "items", "features", "timestamp_ms", "fallback", "variant", "context", "pool_item_ids", "pool_scores", "pool_dense", "exploration", "policy_variant")
    class FeaturesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class ContextEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    SURFACE_FIELD_NUMBER: _ClassVar[int]
    QUERY_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    POOL_ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    POOL_SCORES_FIELD_NUMBER: _ClassVar[int]
    POOL_DENSE_FIELD_NUMBER: _ClassVar[int]
    EXPLORATION_FIELD_NUMBER: _ClassVar[int]
    POLICY_VARIANT_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    user_id: str
    session_id: str
    surface: str
    query: str
    model_name: str
    model_version: str
    policy_version: str
    items: _containers.RepeatedCompositeFieldContainer[ImpressionItem]
    features: _containers.ScalarMap[str, float]
    timestamp_ms: int
    fallback: bool
    variant: str
    context: _containers.ScalarMap[str, str]
    pool_item_ids: _containers.RepeatedScalarFieldContainer[str]
    pool_scores: _containers.RepeatedScalarFieldContainer[float]
    pool_dense: _containers.RepeatedScalarFieldContainer[float]
    exploration: str
    policy_variant: str
    def __init__(self, request_id: _Optional[str] = ..., user_id: _Optional[str] = ..., session_id: _Optional[str] = ..., surface: _Optional[str] = ..., query: _Optional[str] = ..., model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., policy_version: _Optional[str] = ..., items: _Optional[_Iterable[_Union[ImpressionItem, _Mapping]]] = ..., features: _Optional[_Mapping[str, float]] = ..., timestamp_ms: _Optional[int] = ..., fallback: _Optional[bool] = ..., variant: _Optional[str] = ..., context: _Optional[_Mapping[str, str]] = ..., pool_item_ids: _Optional[_Iterable[str]] = ..., pool_scores: _Optional[_Iterable[float]] = ..., pool_dense: _Optional[_Iterable[float]] = ..., exploration: _Optional[str] = ..., policy_variant: _Optional[str] = ...) -> None: ...

class Reward(_message.Message):
    __slots__ = ("request_id", "user_id", "item_id", "position", "propensity", "model_version", "policy_version", "clicked", "added_to_cart", "purchased", "revenue", "reward", "impression_ts_ms", "outcome_ts_ms", "features", "session_id", "surface", "variant", "published_ms", "dense", "score", "outcome_events", "model_name", "policy_variant")
    class FeaturesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    PROPENSITY_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    CLICKED_FIELD_NUMBER: _ClassVar[int]
    ADDED_TO_CART_FIELD_NUMBER: _ClassVar[int]
    PURCHASED_FIELD_NUMBER: _ClassVar[int]
    REVENUE_FIELD_NUMBER: _ClassVar[int]
    REWARD_FIELD_NUMBER: _ClassVar[int]
    IMPRESSION_TS_MS_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_TS_MS_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    SURFACE_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    PUBLISHED_MS_FIELD_NUMBER: _ClassVar[int]
    DENSE_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_EVENTS_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    POLICY_VARIANT_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    user_id: str
    item_id: str
    position: int
    propensity: float
    model_version: str
    policy_version: str
    clicked: bool
    added_to_cart: bool
    purchased: bool
    revenue: float
    reward: float
    impression_ts_ms: int
    outcome_ts_ms: int
    features: _containers.ScalarMap[str, float]
    session_id: str
    surface: str
    variant: str
    published_ms: int
    dense: _containers.RepeatedScalarFieldContainer[float]
    score: float
    outcome_events: int
    model_name: str
    policy_variant: str
    def __init__(self, request_id: _Optional[str] = ..., user_id: _Optional[str] = ..., item_id: _Optional[str] = ..., position: _Optional[int] = ..., propensity: _Optional[float] = ..., model_version: _Optional[str] = ..., policy_version: _Optional[str] = ..., clicked: _Optional[bool] = ..., added_to_cart: _Optional[bool] = ..., purchased: _Optional[bool] = ..., revenue: _Optional[float] = ..., reward: _Optional[float] = ..., impression_ts_ms: _Optional[int] = ..., outcome_ts_ms: _Optional[int] = ..., features: _Optional[_Mapping[str, float]] = ..., session_id: _Optional[str] = ..., surface: _Optional[str] = ..., variant: _Optional[str] = ..., published_ms: _Optional[int] = ..., dense: _Optional[_Iterable[float]] = ..., score: _Optional[float] = ..., outcome_events: _Optional[int] = ..., model_name: _Optional[str] = ..., policy_variant: _Optional[str] = ...) -> None: ...

class MetricEvent(_message.Message):
    __slots__ = ("service", "name", "value", "labels", "timestamp_ms", "summary", "instance")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_FIELD_NUMBER: _ClassVar[int]
    service: str
    name: str
    value: float
    labels: _containers.ScalarMap[str, str]
    timestamp_ms: int
    summary: Summary
    instance: str
    def __init__(self, service: _Optional[str] = ..., name: _Optional[str] = ..., value: _Optional[float] = ..., labels: _Optional[_Mapping[str, str]] = ..., timestamp_ms: _Optional[int] = ..., summary: _Optional[_Union[Summary, _Mapping]] = ..., instance: _Optional[str] = ...) -> None: ...

class Summary(_message.Message):
    __slots__ = ("count", "sum", "min", "max", "quantiles", "bucket_bounds", "bucket_counts")
    class QuantilesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    COUNT_FIELD_NUMBER: _ClassVar[int]
    SUM_FIELD_NUMBER: _ClassVar[int]
    MIN_FIELD_NUMBER: _ClassVar[int]
    MAX_FIELD_NUMBER: _ClassVar[int]
    QUANTILES_FIELD_NUMBER: _ClassVar[int]
    BUCKET_BOUNDS_FIELD_NUMBER: _ClassVar[int]
    BUCKET_COUNTS_FIELD_NUMBER: _ClassVar[int]
    count: int
    sum: float
    min: float
    max: float
    quantiles: _containers.ScalarMap[str, float]
    bucket_bounds: _containers.RepeatedScalarFieldContainer[float]
    bucket_counts: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, count: _Optional[int] = ..., sum: _Optional[float] = ..., min: _Optional[float] = ..., max: _Optional[float] = ..., quantiles: _Optional[_Mapping[str, float]] = ..., bucket_bounds: _Optional[_Iterable[float]] = ..., bucket_counts: _Optional[_Iterable[int]] = ...) -> None: ...

class Alert(_message.Message):
    __slots__ = ("fingerprint", "name", "status", "severity", "labels", "annotations", "value", "threshold", "starts_ms", "ends_ms", "generator")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class AnnotationsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    SEVERITY_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    ANNOTATIONS_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    STARTS_MS_FIELD_NUMBER: _ClassVar[int]
    ENDS_MS_FIELD_NUMBER: _ClassVar[int]
    GENERATOR_FIELD_NUMBER: _ClassVar[int]
    fingerprint: str
    name: str
    status: AlertStatus
    severity: str
    labels: _containers.ScalarMap[str, str]
    annotations: _containers.ScalarMap[str, str]
    value: float
    threshold: float
    starts_ms: int
    ends_ms: int
    generator: str
    def __init__(self, fingerprint: _Optional[str] = ..., name: _Optional[str] = ..., status: _Optional[_Union[AlertStatus, str]] = ..., severity: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., annotations: _Optional[_Mapping[str, str]] = ..., value: _Optional[float] = ..., threshold: _Optional[float] = ..., starts_ms: _Optional[int] = ..., ends_ms: _Optional[int] = ..., generator: _Optional[str] = ...) -> None: ...

class MonitorAction(_message.Message):
    __slots__ = ("action_id", "action", "alert_fingerprint", "alert_name", "model_name", "version", "outcome", "detail", "command_id", "timestamp_ms", "instance")
    ACTION_ID_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    ALERT_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    ALERT_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    COMMAND_ID_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_FIELD_NUMBER: _ClassVar[int]
    action_id: str
    action: str
    alert_fingerprint: str
    alert_name: str
    model_name: str
    version: str
    outcome: str
    detail: str
    command_id: str
    timestamp_ms: int
    instance: str
    def __init__(self, action_id: _Optional[str] = ..., action: _Optional[str] = ..., alert_fingerprint: _Optional[str] = ..., alert_name: _Optional[str] = ..., model_name: _Optional[str] = ..., version: _Optional[str] = ..., outcome: _Optional[str] = ..., detail: _Optional[str] = ..., command_id: _Optional[str] = ..., timestamp_ms: _Optional[int] = ..., instance: _Optional[str] = ...) -> None: ...

class AlertsMessage(_message.Message):
    __slots__ = ("alert", "action")
    ALERT_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    alert: Alert
    action: MonitorAction
    def __init__(self, alert: _Optional[_Union[Alert, _Mapping]] = ..., action: _Optional[_Union[MonitorAction, _Mapping]] = ...) -> None: ...
