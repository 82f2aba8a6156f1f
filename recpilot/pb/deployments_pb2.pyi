from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DeploymentAction(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DEPLOYMENT_ACTION_UNSPECIFIED: _ClassVar[DeploymentAction]
    DEPLOY: _ClassVar[DeploymentAction]
    PROMOTE: _ClassVar[DeploymentAction]
    CANARY: _ClassVar[DeploymentAction]
    SHADOW: _ClassVar[DeploymentAction]
    ROLLBACK: _ClassVar[DeploymentAction]
    CLEAR_CANARY: _ClassVar[DeploymentAction]
    CLEAR_SHADOW: _ClassVar[DeploymentAction]

class ArtifactKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ARTIFACT_KIND_UNSPECIFIED: _ClassVar[ArtifactKind]
    RANKER: _ClassVar[ArtifactKind]
    POLICY: _ClassVar[ArtifactKind]

class AckStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ACK_STATUS_UNSPECIFIED: _ClassVar[AckStatus]
    APPLIED: _ClassVar[AckStatus]
    REJECTED: _ClassVar[AckStatus]
    FAILED: _ClassVar[AckStatus]
DEPLOYMENT_ACTION_UNSPECIFIED: DeploymentAction
DEPLOY: DeploymentAction
PROMOTE: DeploymentAction
CANARY: DeploymentAction
SHADOW: DeploymentAction
ROLLBACK: DeploymentAction
CLEAR_CANARY: DeploymentAction
CLEAR_SHADOW: DeploymentAction
ARTIFACT_KIND_UNSPECIFIED: ArtifactKind
RANKER: ArtifactKind
POLICY: ArtifactKind
ACK_STATUS_UNSPECIFIED: AckStatus
APPLIED: AckStatus
REJECTED: AckStatus
FAILED: AckStatus

class DeploymentCommand(_message.Message):
    __slots__ = ("command_id", "action", "kind", "model_name", "version", "percent", "actor", "reason", "force", "timestamp_ms", "auc_tolerance", "logloss_tolerance")
    COMMAND_ID_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PERCENT_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    AUC_TOLERANCE_FIELD_NUMBER: _ClassVar[int]
    LOGLOSS_TOLERANCE_FIELD_NUMBER: _ClassVar[int]
    command_id: str
    action: DeploymentAction
    kind: ArtifactKind
    model_name: str
    version: str
    percent: float
    actor: str
    reason: str
    force: bool
    timestamp_ms: int
    auc_tolerance: float
    logloss_tolerance: float
    def __init__(self, command_id: _Optional[str] = ..., action: _Optional[_Union[DeploymentAction, str]] = ..., kind: _Optional[_Union[ArtifactKind, str]] = ..., model_name: _Optional[str] = ..., version: _Optional[str] = ..., percent: _Optional[float] = ..., actor: _Optional[str] = ..., reason: _Optional[str] = ..., force: _Optional[bool] = ..., timestamp_ms: _Optional[int] = ..., auc_tolerance: _Optional[float] = ..., logloss_tolerance: _Optional[float] = ...) -> None: ...

class DeploymentState(_message.Message):
    __slots__ = ("model_name", "production_version", "canary_version", "canary_percent", "shadow_version", "history", "revision", "policy_version", "updated_ms", "policy_canary_version", "policy_canary_percent")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    PRODUCTION_VERSION_FIELD_NUMBER: _ClassVar[int]
    CANARY_VERSION_FIELD_NUMBER: _ClassVar[int]
    CANARY_PERCENT_FIELD_NUMBER: _ClassVar[int]
    SHADOW_VERSION_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    UPDATED_MS_FIELD_NUMBER: _ClassVar[int]
    POLICY_CANARY_VERSION_FIELD_NUMBER: _ClassVar[int]
    POLICY_CANARY_PERCENT_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    production_version: str
    canary_version: str
    canary_percent: float
    shadow_version: str
    history: _containers.RepeatedCompositeFieldContainer[DeploymentCommand]
    revision: int
    policy_version: str
    updated_ms: int
    policy_canary_version: str
    policy_canary_percent: float
    def __init__(self, model_name: _Optional[str] = ..., production_version: _Optional[str] = ..., canary_version: _Optional[str] = ..., canary_percent: _Optional[float] = ..., shadow_version: _Optional[str] = ..., history: _Optional[_Iterable[_Union[DeploymentCommand, _Mapping]]] = ..., revision: _Optional[int] = ..., policy_version: _Optional[str] = ..., updated_ms: _Optional[int] = ..., policy_canary_version: _Optional[str] = ..., policy_canary_percent: _Optional[float] = ...) -> None: ...

class DeploymentAck(_message.Message):
    __slots__ = ("command_id", "model_name", "version", "status", "replica", "message", "revision", "timestamp_ms")
    COMMAND_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REPLICA_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    command_id: str
    model_name: str
    version: str
    status: AckStatus
    replica: str
    message: str
    revision: int
    timestamp_ms: int
    def __init__(self, command_id: _Optional[str] = ..., model_name: _Optional[str] = ..., version: _Optional[str] = ..., status: _Optional[_Union[AckStatus, str]] = ..., replica: _Optional[str] = ..., message: _Optional[str] = ..., revision: _Optional[int] = ..., timestamp_ms: _Optional[int] = ...) -> None: ...

class ControlMessage(_message.Message):
    __slots__ = ("command", "ack", "state")
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    command: DeploymentCommand
    ack: DeploymentAck
    state: DeploymentState
    def __init__(self, command: _Optional[_Union[DeploymentCommand, _Mapping]] = ..., ack: _Optional[_Union[DeploymentAck, _Mapping]] = ..., state: _Optional[_Union[DeploymentState, _Mapping]] = ...) -> None: ...
