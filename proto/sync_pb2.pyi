from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ModelFile(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MODEL_FILE_USER_TOWER: _ClassVar[ModelFile]
    MODEL_FILE_SEARCH_TOWER: _ClassVar[ModelFile]
MODEL_FILE_USER_TOWER: ModelFile
MODEL_FILE_SEARCH_TOWER: ModelFile

class GetManifestRequest(_message.Message):
    __slots__ = ("family", "running_model_version", "running_catalog_version")
    FAMILY_FIELD_NUMBER: _ClassVar[int]
    RUNNING_MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    RUNNING_CATALOG_VERSION_FIELD_NUMBER: _ClassVar[int]
    family: str
    running_model_version: int
    running_catalog_version: int
    def __init__(self, family: _Optional[str] = ..., running_model_version: _Optional[int] = ..., running_catalog_version: _Optional[int] = ...) -> None: ...

class GetManifestResponse(_message.Message):
    __slots__ = ("family", "model_version", "model_record", "catalog_version", "catalog_record")
    FAMILY_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    MODEL_RECORD_FIELD_NUMBER: _ClassVar[int]
    CATALOG_VERSION_FIELD_NUMBER: _ClassVar[int]
    CATALOG_RECORD_FIELD_NUMBER: _ClassVar[int]
    family: str
    model_version: int
    model_record: SignedRecord
    catalog_version: int
    catalog_record: SignedRecord
    def __init__(self, family: _Optional[str] = ..., model_version: _Optional[int] = ..., model_record: _Optional[_Union[SignedRecord, _Mapping]] = ..., catalog_version: _Optional[int] = ..., catalog_record: _Optional[_Union[SignedRecord, _Mapping]] = ...) -> None: ...

class SignedRecord(_message.Message):
    __slots__ = ("record", "signature")
    RECORD_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    record: bytes
    signature: bytes
    def __init__(self, record: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...

class SyncItemsRequest(_message.Message):
    __slots__ = ("family", "model_version", "since_catalog_version", "target_catalog_version", "resume_from_chunk")
    FAMILY_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    SINCE_CATALOG_VERSION_FIELD_NUMBER: _ClassVar[int]
    TARGET_CATALOG_VERSION_FIELD_NUMBER: _ClassVar[int]
    RESUME_FROM_CHUNK_FIELD_NUMBER: _ClassVar[int]
    family: str
    model_version: int
    since_catalog_version: int
    target_catalog_version: int
    resume_from_chunk: int
    def __init__(self, family: _Optional[str] = ..., model_version: _Optional[int] = ..., since_catalog_version: _Optional[int] = ..., target_catalog_version: _Optional[int] = ..., resume_from_chunk: _Optional[int] = ...) -> None: ...

class ItemChunk(_message.Message):
    __slots__ = ("index", "chunk_count", "target_catalog_version", "base_catalog_version", "snapshot", "batch", "batch_sha256", "catalog_record")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    CHUNK_COUNT_FIELD_NUMBER: _ClassVar[int]
    TARGET_CATALOG_VERSION_FIELD_NUMBER: _ClassVar[int]
    BASE_CATALOG_VERSION_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    BATCH_SHA256_FIELD_NUMBER: _ClassVar[int]
    CATALOG_RECORD_FIELD_NUMBER: _ClassVar[int]
    index: int
    chunk_count: int
    target_catalog_version: int
    base_catalog_version: int
    snapshot: bool
    batch: bytes
    batch_sha256: bytes
    catalog_record: SignedRecord
    def __init__(self, index: _Optional[int] = ..., chunk_count: _Optional[int] = ..., target_catalog_version: _Optional[int] = ..., base_catalog_version: _Optional[int] = ..., snapshot: _Optional[bool] = ..., batch: _Optional[bytes] = ..., batch_sha256: _Optional[bytes] = ..., catalog_record: _Optional[_Union[SignedRecord, _Mapping]] = ...) -> None: ...

class ItemBatch(_message.Message):
    __slots__ = ("item_ids", "metadata_json", "values", "scales", "deleted_ids")
    ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    METADATA_JSON_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    SCALES_FIELD_NUMBER: _ClassVar[int]
    DELETED_IDS_FIELD_NUMBER: _ClassVar[int]
    item_ids: _containers.RepeatedScalarFieldContainer[str]
    metadata_json: _containers.RepeatedScalarFieldContainer[str]
    values: bytes
    scales: bytes
    deleted_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, item_ids: _Optional[_Iterable[str]] = ..., metadata_json: _Optional[_Iterable[str]] = ..., values: _Optional[bytes] = ..., scales: _Optional[bytes] = ..., deleted_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class DownloadModelRequest(_message.Message):
    __slots__ = ("family", "model_sha256", "offset_bytes", "file")
    FAMILY_FIELD_NUMBER: _ClassVar[int]
    MODEL_SHA256_FIELD_NUMBER: _ClassVar[int]
    OFFSET_BYTES_FIELD_NUMBER: _ClassVar[int]
    FILE_FIELD_NUMBER: _ClassVar[int]
    family: str
    model_sha256: bytes
    offset_bytes: int
    file: ModelFile
    def __init__(self, family: _Optional[str] = ..., model_sha256: _Optional[bytes] = ..., offset_bytes: _Optional[int] = ..., file: _Optional[_Union[ModelFile, str]] = ...) -> None: ...

class ModelChunk(_message.Message):
    __slots__ = ("offset_bytes", "size_bytes", "data")
    OFFSET_BYTES_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    offset_bytes: int
    size_bytes: int
    data: bytes
    def __init__(self, offset_bytes: _Optional[int] = ..., size_bytes: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class WatchManifestRequest(_message.Message):
    __slots__ = ("family", "running_model_version", "running_catalog_version")
    FAMILY_FIELD_NUMBER: _ClassVar[int]
    RUNNING_MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    RUNNING_CATALOG_VERSION_FIELD_NUMBER: _ClassVar[int]
    family: str
    running_model_version: int
    running_catalog_version: int
    def __init__(self, family: _Optional[str] = ..., running_model_version: _Optional[int] = ..., running_catalog_version: _Optional[int] = ...) -> None: ...

class ManifestUpdate(_message.Message):
    __slots__ = ("model_version", "catalog_version", "heartbeat", "heartbeat_ms")
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    CATALOG_VERSION_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_MS_FIELD_NUMBER: _ClassVar[int]
    model_version: int
    catalog_version: int
    heartbeat: bool
    heartbeat_ms: int
    def __init__(self, model_version: _Optional[int] = ..., catalog_version: _Optional[int] = ..., heartbeat: _Optional[bool] = ..., heartbeat_ms: _Optional[int] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("event_id", "user", "item_id", "timestamp_s", "model_version", "catalog_version")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_S_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    CATALOG_VERSION_FIELD_NUMBER: _ClassVar[int]
    event_id: bytes
    user: str
    item_id: str
    timestamp_s: float
    model_version: int
    catalog_version: int
    def __init__(self, event_id: _Optional[bytes] = ..., user: _Optional[str] = ..., item_id: _Optional[str] = ..., timestamp_s: _Optional[float] = ..., model_version: _Optional[int] = ..., catalog_version: _Optional[int] = ...) -> None: ...

class UploadEventsRequest(_message.Message):
    __slots__ = ("family", "events")
    FAMILY_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    family: str
    events: _containers.RepeatedCompositeFieldContainer[Event]
    def __init__(self, family: _Optional[str] = ..., events: _Optional[_Iterable[_Union[Event, _Mapping]]] = ...) -> None: ...

class UploadEventsResponse(_message.Message):
    __slots__ = ("acknowledged_event_ids", "stored_new", "rejected")
    ACKNOWLEDGED_EVENT_IDS_FIELD_NUMBER: _ClassVar[int]
    STORED_NEW_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    acknowledged_event_ids: _containers.RepeatedScalarFieldContainer[bytes]
    stored_new: int
    rejected: _containers.RepeatedCompositeFieldContainer[RejectedEvent]
    def __init__(self, acknowledged_event_ids: _Optional[_Iterable[bytes]] = ..., stored_new: _Optional[int] = ..., rejected: _Optional[_Iterable[_Union[RejectedEvent, _Mapping]]] = ...) -> None: ...

class RejectedEvent(_message.Message):
    __slots__ = ("event_id", "reason")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    event_id: bytes
    reason: str
    def __init__(self, event_id: _Optional[bytes] = ..., reason: _Optional[str] = ...) -> None: ...

class DeleteUserEventsRequest(_message.Message):
    __slots__ = ("family", "user")
    FAMILY_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    family: str
    user: str
    def __init__(self, family: _Optional[str] = ..., user: _Optional[str] = ...) -> None: ...

class DeleteUserEventsResponse(_message.Message):
    __slots__ = ("deleted",)
    DELETED_FIELD_NUMBER: _ClassVar[int]
    deleted: int
    def __init__(self, deleted: _Optional[int] = ...) -> None: ...
