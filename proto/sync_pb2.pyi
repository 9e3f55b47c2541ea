from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GetManifestRequest(_message.Message):
    __slots__ = ("family",)
    FAMILY_FIELD_NUMBER: _ClassVar[int]
    family: str
    def __init__(self, family: _Optional[str] = ...) -> None: ...

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
    __slots__ = ("family", "model_sha256", "offset_bytes")
    FAMILY_FIELD_NUMBER: _ClassVar[int]
    MODEL_SHA256_FIELD_NUMBER: _ClassVar[int]
    OFFSET_BYTES_FIELD_NUMBER: _ClassVar[int]
    family: str
    model_sha256: bytes
    offset_bytes: int
    def __init__(self, family: _Optional[str] = ..., model_sha256: _Optional[bytes] = ..., offset_bytes: _Optional[int] = ...) -> None: ...

class ModelChunk(_message.Message):
    __slots__ = ("offset_bytes", "size_bytes", "data")
    OFFSET_BYTES_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    offset_bytes: int
    size_bytes: int
    data: bytes
    def __init__(self, offset_bytes: _Optional[int] = ..., size_bytes: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...
