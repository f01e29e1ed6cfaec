import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DiskFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DISK_FORMAT_UNSPECIFIED: _ClassVar[DiskFormat]
    DISK_FORMAT_QCOW2: _ClassVar[DiskFormat]
    DISK_FORMAT_VMDK: _ClassVar[DiskFormat]
    DISK_FORMAT_RAW: _ClassVar[DiskFormat]
    DISK_FORMAT_VDI: _ClassVar[DiskFormat]
    DISK_FORMAT_VHDX: _ClassVar[DiskFormat]
    DISK_FORMAT_VPC: _ClassVar[DiskFormat]

class StorageBackend(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STORAGE_BACKEND_UNSPECIFIED: _ClassVar[StorageBackend]
    STORAGE_BACKEND_S3: _ClassVar[StorageBackend]
    STORAGE_BACKEND_HTTP: _ClassVar[StorageBackend]
    STORAGE_BACKEND_NFS: _ClassVar[StorageBackend]

class PowerState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    POWER_STATE_UNSPECIFIED: _ClassVar[PowerState]
    POWER_STATE_ON: _ClassVar[PowerState]
    POWER_STATE_OFF: _ClassVar[PowerState]
    POWER_STATE_SUSPENDED: _ClassVar[PowerState]

class Firmware(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FIRMWARE_UNSPECIFIED: _ClassVar[Firmware]
    FIRMWARE_BIOS: _ClassVar[Firmware]
    FIRMWARE_UEFI: _ClassVar[Firmware]

class PowerAction(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    POWER_ACTION_UNSPECIFIED: _ClassVar[PowerAction]
    POWER_ACTION_ON: _ClassVar[PowerAction]
    POWER_ACTION_OFF: _ClassVar[PowerAction]
    POWER_ACTION_SHUTDOWN: _ClassVar[PowerAction]
    POWER_ACTION_REBOOT: _ClassVar[PowerAction]

class DiskDevice(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DISK_DEVICE_UNSPECIFIED: _ClassVar[DiskDevice]
    DISK_DEVICE_DISK: _ClassVar[DiskDevice]
    DISK_DEVICE_CDROM: _ClassVar[DiskDevice]

class Feature(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FEATURE_UNSPECIFIED: _ClassVar[Feature]
    FEATURE_SNAPSHOTS: _ClassVar[Feature]
    FEATURE_LIVE_EXPORT: _ClassVar[Feature]
    FEATURE_IMAGE_CLONE: _ClassVar[Feature]
    FEATURE_IMPORTED_DISKS: _ClassVar[Feature]
    FEATURE_SPARSE_EXPORT: _ClassVar[Feature]
    FEATURE_RESUMABLE_TRANSFER: _ClassVar[Feature]
    FEATURE_CONTENT_DIGEST: _ClassVar[Feature]
    FEATURE_UEFI: _ClassVar[Feature]
    FEATURE_GRACEFUL_SHUTDOWN: _ClassVar[Feature]

class TaskState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TASK_STATE_UNSPECIFIED: _ClassVar[TaskState]
    TASK_STATE_PENDING: _ClassVar[TaskState]
    TASK_STATE_RUNNING: _ClassVar[TaskState]
    TASK_STATE_SUCCEEDED: _ClassVar[TaskState]
    TASK_STATE_FAILED: _ClassVar[TaskState]
    TASK_STATE_CANCELLED: _ClassVar[TaskState]

class TaskKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TASK_KIND_UNSPECIFIED: _ClassVar[TaskKind]
    TASK_KIND_CREATE_VM: _ClassVar[TaskKind]
    TASK_KIND_DELETE_VM: _ClassVar[TaskKind]
    TASK_KIND_POWER: _ClassVar[TaskKind]
    TASK_KIND_CREATE_SNAPSHOT: _ClassVar[TaskKind]
    TASK_KIND_DELETE_SNAPSHOT: _ClassVar[TaskKind]
    TASK_KIND_EXPORT_DISK: _ClassVar[TaskKind]
    TASK_KIND_IMPORT_DISK: _ClassVar[TaskKind]
    TASK_KIND_DELETE_OBJECT: _ClassVar[TaskKind]
    TASK_KIND_DELETE_DISK: _ClassVar[TaskKind]

class ErrorCode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ERROR_CODE_UNSPECIFIED: _ClassVar[ErrorCode]
    ERROR_CODE_INVALID_ARGUMENT: _ClassVar[ErrorCode]
    ERROR_CODE_NOT_FOUND: _ClassVar[ErrorCode]
    ERROR_CODE_ALREADY_EXISTS: _ClassVar[ErrorCode]
    ERROR_CODE_UNAUTHENTICATED: _ClassVar[ErrorCode]
    ERROR_CODE_PERMISSION_DENIED: _ClassVar[ErrorCode]
    ERROR_CODE_FAILED_PRECONDITION: _ClassVar[ErrorCode]
    ERROR_CODE_UNIMPLEMENTED: _ClassVar[ErrorCode]
    ERROR_CODE_CHECKSUM_MISMATCH: _ClassVar[ErrorCode]
    ERROR_CODE_OUT_OF_SPACE: _ClassVar[ErrorCode]
    ERROR_CODE_UNAVAILABLE: _ClassVar[ErrorCode]
    ERROR_CODE_TIMEOUT: _ClassVar[ErrorCode]
    ERROR_CODE_CONFLICT: _ClassVar[ErrorCode]
    ERROR_CODE_CANCELLED: _ClassVar[ErrorCode]
    ERROR_CODE_INTERNAL: _ClassVar[ErrorCode]
DISK_FORMAT_UNSPECIFIED: DiskFormat
DISK_FORMAT_QCOW2: DiskFormat
DISK_FORMAT_VMDK: DiskFormat
DISK_FORMAT_RAW: DiskFormat
DISK_FORMAT_VDI: DiskFormat
DISK_FORMAT_VHDX: DiskFormat
DISK_FORMAT_VPC: DiskFormat
STORAGE_BACKEND_UNSPECIFIED: StorageBackend
STORAGE_BACKEND_S3: StorageBackend
STORAGE_BACKEND_HTTP: StorageBackend
STORAGE_BACKEND_NFS: StorageBackend
POWER_STATE_UNSPECIFIED: PowerState
POWER_STATE_ON: PowerState
POWER_STATE_OFF: PowerState
POWER_STATE_SUSPENDED: PowerState
FIRMWARE_UNSPECIFIED: Firmware
FIRMWARE_BIOS: Firmware
FIRMWARE_UEFI: Firmware
POWER_ACTION_UNSPECIFIED: PowerAction
POWER_ACTION_ON: PowerAction
POWER_ACTION_OFF: PowerAction
POWER_ACTION_SHUTDOWN: PowerAction
POWER_ACTION_REBOOT: PowerAction
DISK_DEVICE_UNSPECIFIED: DiskDevice
DISK_DEVICE_DISK: DiskDevice
DISK_DEVICE_CDROM: DiskDevice
FEATURE_UNSPECIFIED: Feature
FEATURE_SNAPSHOTS: Feature
FEATURE_LIVE_EXPORT: Feature
FEATURE_IMAGE_CLONE: Feature
FEATURE_IMPORTED_DISKS: Feature
FEATURE_SPARSE_EXPORT: Feature
FEATURE_RESUMABLE_TRANSFER: Feature
FEATURE_CONTENT_DIGEST: Feature
FEATURE_UEFI: Feature
FEATURE_GRACEFUL_SHUTDOWN: Feature
TASK_STATE_UNSPECIFIED: TaskState
TASK_STATE_PENDING: TaskState
TASK_STATE_RUNNING: TaskState
TASK_STATE_SUCCEEDED: TaskState
TASK_STATE_FAILED: TaskState
TASK_STATE_CANCELLED: TaskState
TASK_KIND_UNSPECIFIED: TaskKind
TASK_KIND_CREATE_VM: TaskKind
TASK_KIND_DELETE_VM: TaskKind
TASK_KIND_POWER: TaskKind
TASK_KIND_CREATE_SNAPSHOT: TaskKind
TASK_KIND_DELETE_SNAPSHOT: TaskKind
TASK_KIND_EXPORT_DISK: TaskKind
TASK_KIND_IMPORT_DISK: TaskKind
TASK_KIND_DELETE_OBJECT: TaskKind
TASK_KIND_DELETE_DISK: TaskKind
ERROR_CODE_UNSPECIFIED: ErrorCode
ERROR_CODE_INVALID_ARGUMENT: ErrorCode
ERROR_CODE_NOT_FOUND: ErrorCode
ERROR_CODE_ALREADY_EXISTS: ErrorCode
ERROR_CODE_UNAUTHENTICATED: ErrorCode
ERROR_CODE_PERMISSION_DENIED: ErrorCode
ERROR_CODE_FAILED_PRECONDITION: ErrorCode
ERROR_CODE_UNIMPLEMENTED: ErrorCode
ERROR_CODE_CHECKSUM_MISMATCH: ErrorCode
ERROR_CODE_OUT_OF_SPACE: ErrorCode
ERROR_CODE_UNAVAILABLE: ErrorCode
ERROR_CODE_TIMEOUT: ErrorCode
ERROR_CODE_CONFLICT: ErrorCode
ERROR_CODE_CANCELLED: ErrorCode
ERROR_CODE_INTERNAL: ErrorCode

class GetCapabilitiesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Capabilities(_message.Message):
    __slots__ = ("provider_type", "provider_version", "hypervisor_version", "export_formats", "import_formats", "native_format", "storage_backends", "features", "max_concurrent_tasks")
    PROVIDER_TYPE_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_VERSION_FIELD_NUMBER: _ClassVar[int]
    HYPERVISOR_VERSION_FIELD_NUMBER: _ClassVar[int]
    EXPORT_FORMATS_FIELD_NUMBER: _ClassVar[int]
    IMPORT_FORMATS_FIELD_NUMBER: _ClassVar[int]
    NATIVE_FORMAT_FIELD_NUMBER: _ClassVar[int]
    STORAGE_BACKENDS_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    MAX_CONCURRENT_TASKS_FIELD_NUMBER: _ClassVar[int]
    provider_type: str
    provider_version: str
    hypervisor_version: str
    export_formats: _containers.RepeatedScalarFieldContainer[DiskFormat]
    import_formats: _containers.RepeatedScalarFieldContainer[DiskFormat]
    native_format: DiskFormat
    storage_backends: _containers.RepeatedScalarFieldContainer[StorageBackend]
    features: _containers.RepeatedScalarFieldContainer[Feature]
    max_concurrent_tasks: int
    def __init__(self, provider_type: _Optional[str] = ..., provider_version: _Optional[str] = ..., hypervisor_version: _Optional[str] = ..., export_formats: _Optional[_Iterable[_Union[DiskFormat, str]]] = ..., import_formats: _Optional[_Iterable[_Union[DiskFormat, str]]] = ..., native_format: _Optional[_Union[DiskFormat, str]] = ..., storage_backends: _Optional[_Iterable[_Union[StorageBackend, str]]] = ..., features: _Optional[_Iterable[_Union[Feature, str]]] = ..., max_concurrent_tasks: _Optional[int] = ...) -> None: ...

class ValidateRequest(_message.Message):
    __slots__ = ("storage_hint", "networks", "storage_probe")
    STORAGE_HINT_FIELD_NUMBER: _ClassVar[int]
    NETWORKS_FIELD_NUMBER: _ClassVar[int]
    STORAGE_PROBE_FIELD_NUMBER: _ClassVar[int]
    storage_hint: str
    networks: _containers.RepeatedScalarFieldContainer[str]
    storage_probe: StorageLocation
    def __init__(self, storage_hint: _Optional[str] = ..., networks: _Optional[_Iterable[str]] = ..., storage_probe: _Optional[_Union[StorageLocation, _Mapping]] = ...) -> None: ...

class ValidationCheck(_message.Message):
    __slots__ = ("name", "ok", "message")
    NAME_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    name: str
    ok: bool
    message: str
    def __init__(self, name: _Optional[str] = ..., ok: _Optional[bool] = ..., message: _Optional[str] = ...) -> None: ...

class ValidateResponse(_message.Message):
    __slots__ = ("ok", "checks")
    OK_FIELD_NUMBER: _ClassVar[int]
    CHECKS_FIELD_NUMBER: _ClassVar[int]
    ok: bool
    checks: _containers.RepeatedCompositeFieldContainer[ValidationCheck]
    def __init__(self, ok: _Optional[bool] = ..., checks: _Optional[_Iterable[_Union[ValidationCheck, _Mapping]]] = ...) -> None: ...

class Disk(_message.Message):
    __slots__ = ("id", "path", "format", "virtual_size_bytes", "allocated_size_bytes", "bus", "device", "storage", "boot")
    ID_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    VIRTUAL_SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    ALLOCATED_SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    BUS_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    STORAGE_FIELD_NUMBER: _ClassVar[int]
    BOOT_FIELD_NUMBER: _ClassVar[int]
    id: str
    path: str
    format: DiskFormat
    virtual_size_bytes: int
    allocated_size_bytes: int
    bus: str
    device: DiskDevice
    storage: str
    boot: bool
    def __init__(self, id: _Optional[str] = ..., path: _Optional[str] = ..., format: _Optional[_Union[DiskFormat, str]] = ..., virtual_size_bytes: _Optional[int] = ..., allocated_size_bytes: _Optional[int] = ..., bus: _Optional[str] = ..., device: _Optional[_Union[DiskDevice, str]] = ..., storage: _Optional[str] = ..., boot: _Optional[bool] = ...) -> None: ...

class Nic(_message.Message):
    __slots__ = ("id", "network", "mac", "model", "vlan_id")
    ID_FIELD_NUMBER: _ClassVar[int]
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    MAC_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VLAN_ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    network: str
    mac: str
    model: str
    vlan_id: int
    def __init__(self, id: _Optional[str] = ..., network: _Optional[str] = ..., mac: _Optional[str] = ..., model: _Optional[str] = ..., vlan_id: _Optional[int] = ...) -> None: ...

class Snapshot(_message.Message):
    __slots__ = ("id", "name", "create_time", "description")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    create_time: _timestamp_pb2.Timestamp
    description: str
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., description: _Optional[str] = ...) -> None: ...

class VM(_message.Message):
    __slots__ = ("id", "name", "power_state", "cpu", "cpu_sockets", "memory_mib", "firmware", "disks", "nics", "snapshots", "guest_os")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    POWER_STATE_FIELD_NUMBER: _ClassVar[int]
    CPU_FIELD_NUMBER: _ClassVar[int]
    CPU_SOCKETS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_MIB_FIELD_NUMBER: _ClassVar[int]
    FIRMWARE_FIELD_NUMBER: _ClassVar[int]
    DISKS_FIELD_NUMBER: _ClassVar[int]
    NICS_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOTS_FIELD_NUMBER: _ClassVar[int]
    GUEST_OS_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    power_state: PowerState
    cpu: int
    cpu_sockets: int
    memory_mib: int
    firmware: Firmware
    disks: _containers.RepeatedCompositeFieldContainer[Disk]
    nics: _containers.RepeatedCompositeFieldContainer[Nic]
    snapshots: _containers.RepeatedCompositeFieldContainer[Snapshot]
    guest_os: str
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., power_state: _Optional[_Union[PowerState, str]] = ..., cpu: _Optional[int] = ..., cpu_sockets: _Optional[int] = ..., memory_mib: _Optional[int] = ..., firmware: _Optional[_Union[Firmware, str]] = ..., disks: _Optional[_Iterable[_Union[Disk, _Mapping]]] = ..., nics: _Optional[_Iterable[_Union[Nic, _Mapping]]] = ..., snapshots: _Optional[_Iterable[_Union[Snapshot, _Mapping]]] = ..., guest_os: _Optional[str] = ...) -> None: ...

class ListVMsRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "name_filter")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    NAME_FILTER_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    name_filter: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., name_filter: _Optional[str] = ...) -> None: ...

class ListVMsResponse(_message.Message):
    __slots__ = ("vms", "next_page_token")
    VMS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    vms: _containers.RepeatedCompositeFieldContainer[VM]
    next_page_token: str
    def __init__(self, vms: _Optional[_Iterable[_Union[VM, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class DescribeVMRequest(_message.Message):
    __slots__ = ("vm_id",)
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    vm_id: str
    def __init__(self, vm_id: _Optional[str] = ...) -> None: ...

class ImageRef(_message.Message):
    __slots__ = ("name", "path")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    name: str
    path: str
    def __init__(self, name: _Optional[str] = ..., path: _Optional[str] = ...) -> None: ...

class ImportedDisk(_message.Message):
    __slots__ = ("disk_id", "path", "format", "size_bytes")
    DISK_ID_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    disk_id: str
    path: str
    format: DiskFormat
    size_bytes: int
    def __init__(self, disk_id: _Optional[str] = ..., path: _Optional[str] = ..., format: _Optional[_Union[DiskFormat, str]] = ..., size_bytes: _Optional[int] = ...) -> None: ...

class DiskSpec(_message.Message):
    __slots__ = ("image", "imported", "bus", "size_bytes")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    IMPORTED_FIELD_NUMBER: _ClassVar[int]
    BUS_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    image: ImageRef
    imported: ImportedDisk
    bus: str
    size_bytes: int
    def __init__(self, image: _Optional[_Union[ImageRef, _Mapping]] = ..., imported: _Optional[_Union[ImportedDisk, _Mapping]] = ..., bus: _Optional[str] = ..., size_bytes: _Optional[int] = ...) -> None: ...

class NicSpec(_message.Message):
    __slots__ = ("network", "mac", "model", "vlan_id")
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    MAC_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VLAN_ID_FIELD_NUMBER: _ClassVar[int]
    network: str
    mac: str
    model: str
    vlan_id: int
    def __init__(self, network: _Optional[str] = ..., mac: _Optional[str] = ..., model: _Optional[str] = ..., vlan_id: _Optional[int] = ...) -> None: ...

class CreateVMRequest(_message.Message):
    __slots__ = ("operation_id", "name", "cpu", "memory_mib", "firmware", "disks", "nics", "storage_hint", "power_on", "labels")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    OPERATION_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    CPU_FIELD_NUMBER: _ClassVar[int]
    MEMORY_MIB_FIELD_NUMBER: _ClassVar[int]
    FIRMWARE_FIELD_NUMBER: _ClassVar[int]
    DISKS_FIELD_NUMBER: _ClassVar[int]
    NICS_FIELD_NUMBER: _ClassVar[int]
    STORAGE_HINT_FIELD_NUMBER: _ClassVar[int]
    POWER_ON_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    operation_id: str
    name: str
    cpu: int
    memory_mib: int
    firmware: Firmware
    disks: _containers.RepeatedCompositeFieldContainer[DiskSpec]
    nics: _containers.RepeatedCompositeFieldContainer[NicSpec]
    storage_hint: str
    power_on: bool
    labels: _containers.ScalarMap[str, str]
    def __init__(self, operation_id: _Optional[str] = ..., name: _Optional[str] = ..., cpu: _Optional[int] = ..., memory_mib: _Optional[int] = ..., firmware: _Optional[_Union[Firmware, str]] = ..., disks: _Optional[_Iterable[_Union[DiskSpec, _Mapping]]] = ..., nics: _Optional[_Iterable[_Union[NicSpec, _Mapping]]] = ..., storage_hint: _Optional[str] = ..., power_on: _Optional[bool] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class CreateVMResult(_message.Message):
    __slots__ = ("vm_id",)
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    vm_id: str
    def __init__(self, vm_id: _Optional[str] = ...) -> None: ...

class DeleteVMRequest(_message.Message):
    __slots__ = ("operation_id", "vm_id", "delete_disks")
    OPERATION_ID_FIELD_NUMBER: _ClassVar[int]
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    DELETE_DISKS_FIELD_NUMBER: _ClassVar[int]
    operation_id: str
    vm_id: str
    delete_disks: bool
    def __init__(self, operation_id: _Optional[str] = ..., vm_id: _Optional[str] = ..., delete_disks: _Optional[bool] = ...) -> None: ...

class PowerRequest(_message.Message):
    __slots__ = ("operation_id", "vm_id", "action", "graceful_timeout_seconds")
    OPERATION_ID_FIELD_NUMBER: _ClassVar[int]
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    GRACEFUL_TIMEOUT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    operation_id: str
    vm_id: str
    action: PowerAction
    graceful_timeout_seconds: int
    def __init__(self, operation_id: _Optional[str] = ..., vm_id: _Optional[str] = ..., action: _Optional[_Union[PowerAction, str]] = ..., graceful_timeout_seconds: _Optional[int] = ...) -> None: ...

class CreateSnapshotRequest(_message.Message):
    __slots__ = ("operation_id", "vm_id", "name", "description", "quiesce", "include_memory")
    OPERATION_ID_FIELD_NUMBER: _ClassVar[int]
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    QUIESCE_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_MEMORY_FIELD_NUMBER: _ClassVar[int]
    operation_id: str
    vm_id: str
    name: str
    description: str
    quiesce: bool
    include_memory: bool
    def __init__(self, operation_id: _Optional[str] = ..., vm_id: _Optional[str] = ..., name: _Optional[str] = ..., description: _Optional[str] = ..., quiesce: _Optional[bool] = ..., include_memory: _Optional[bool] = ...) -> None: ...

class SnapshotResult(_message.Message):
    __slots__ = ("snapshot_id",)
    SNAPSHOT_ID_FIELD_NUMBER: _ClassVar[int]
    snapshot_id: str
    def __init__(self, snapshot_id: _Optional[str] = ...) -> None: ...

class DeleteSnapshotRequest(_message.Message):
    __slots__ = ("operation_id", "vm_id", "snapshot_id")
    OPERATION_ID_FIELD_NUMBER: _ClassVar[int]
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_ID_FIELD_NUMBER: _ClassVar[int]
    operation_id: str
    vm_id: str
    snapshot_id: str
    def __init__(self, operation_id: _Optional[str] = ..., vm_id: _Optional[str] = ..., snapshot_id: _Optional[str] = ...) -> None: ...

class StorageLocation(_message.Message):
    __slots__ = ("backend", "url", "credentials", "options")
    class CredentialsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class OptionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    CREDENTIALS_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    backend: StorageBackend
    url: str
    credentials: _containers.ScalarMap[str, str]
    options: _containers.ScalarMap[str, str]
    def __init__(self, backend: _Optional[_Union[StorageBackend, str]] = ..., url: _Optional[str] = ..., credentials: _Optional[_Mapping[str, str]] = ..., options: _Optional[_Mapping[str, str]] = ...) -> None: ...

class ExportDiskRequest(_message.Message):
    __slots__ = ("operation_id", "vm_id", "disk_id", "snapshot_id", "destination", "target_format", "compress")
    OPERATION_ID_FIELD_NUMBER: _ClassVar[int]
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    DISK_ID_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_ID_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_FIELD_NUMBER: _ClassVar[int]
    TARGET_FORMAT_FIELD_NUMBER: _ClassVar[int]
    COMPRESS_FIELD_NUMBER: _ClassVar[int]
    operation_id: str
    vm_id: str
    disk_id: str
    snapshot_id: str
    destination: StorageLocation
    target_format: DiskFormat
    compress: bool
    def __init__(self, operation_id: _Optional[str] = ..., vm_id: _Optional[str] = ..., disk_id: _Optional[str] = ..., snapshot_id: _Optional[str] = ..., destination: _Optional[_Union[StorageLocation, _Mapping]] = ..., target_format: _Optional[_Union[DiskFormat, str]] = ..., compress: _Optional[bool] = ...) -> None: ...

class ExportResult(_message.Message):
    __slots__ = ("url", "format", "size_bytes", "sha256", "content_sha256", "virtual_size_bytes", "source_format")
    URL_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    CONTENT_SHA256_FIELD_NUMBER: _ClassVar[int]
    VIRTUAL_SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FORMAT_FIELD_NUMBER: _ClassVar[int]
    url: str
    format: DiskFormat
    size_bytes: int
    sha256: str
    content_sha256: str
    virtual_size_bytes: int
    source_format: DiskFormat
    def __init__(self, url: _Optional[str] = ..., format: _Optional[_Union[DiskFormat, str]] = ..., size_bytes: _Optional[int] = ..., sha256: _Optional[str] = ..., content_sha256: _Optional[str] = ..., virtual_size_bytes: _Optional[int] = ..., source_format: _Optional[_Union[DiskFormat, str]] = ...) -> None: ...

class ImportDiskRequest(_message.Message):
    __slots__ = ("operation_id", "source", "expected_sha256", "source_format", "target_format", "storage_hint", "target_volume_name", "expected_content_sha256")
    OPERATION_ID_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_SHA256_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FORMAT_FIELD_NUMBER: _ClassVar[int]
    TARGET_FORMAT_FIELD_NUMBER: _ClassVar[int]
    STORAGE_HINT_FIELD_NUMBER: _ClassVar[int]
    TARGET_VOLUME_NAME_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_CONTENT_SHA256_FIELD_NUMBER: _ClassVar[int]
    operation_id: str
    source: StorageLocation
    expected_sha256: str
    source_format: DiskFormat
    target_format: DiskFormat
    storage_hint: str
    target_volume_name: str
    expected_content_sha256: str
    def __init__(self, operation_id: _Optional[str] = ..., source: _Optional[_Union[StorageLocation, _Mapping]] = ..., expected_sha256: _Optional[str] = ..., source_format: _Optional[_Union[DiskFormat, str]] = ..., target_format: _Optional[_Union[DiskFormat, str]] = ..., storage_hint: _Optional[str] = ..., target_volume_name: _Optional[str] = ..., expected_content_sha256: _Optional[str] = ...) -> None: ...

class DeleteObjectRequest(_message.Message):
    __slots__ = ("operation_id", "location")
    OPERATION_ID_FIELD_NUMBER: _ClassVar[int]
    LOCATION_FIELD_NUMBER: _ClassVar[int]
    operation_id: str
    location: StorageLocation
    def __init__(self, operation_id: _Optional[str] = ..., location: _Optional[_Union[StorageLocation, _Mapping]] = ...) -> None: ...

class DeleteDiskRequest(_message.Message):
    __slots__ = ("operation_id", "disk_id")
    OPERATION_ID_FIELD_NUMBER: _ClassVar[int]
    DISK_ID_FIELD_NUMBER: _ClassVar[int]
    operation_id: str
    disk_id: str
    def __init__(self, operation_id: _Optional[str] = ..., disk_id: _Optional[str] = ...) -> None: ...

class ImportResult(_message.Message):
    __slots__ = ("disk_id", "path", "format", "size_bytes", "sha256", "content_sha256")
    DISK_ID_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    CONTENT_SHA256_FIELD_NUMBER: _ClassVar[int]
    disk_id: str
    path: str
    format: DiskFormat
    size_bytes: int
    sha256: str
    content_sha256: str
    def __init__(self, disk_id: _Optional[str] = ..., path: _Optional[str] = ..., format: _Optional[_Union[DiskFormat, str]] = ..., size_bytes: _Optional[int] = ..., sha256: _Optional[str] = ..., content_sha256: _Optional[str] = ...) -> None: ...

class TaskError(_message.Message):
    __slots__ = ("code", "message", "retryable")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    RETRYABLE_FIELD_NUMBER: _ClassVar[int]
    code: ErrorCode
    message: str
    retryable: bool
    def __init__(self, code: _Optional[_Union[ErrorCode, str]] = ..., message: _Optional[str] = ..., retryable: _Optional[bool] = ...) -> None: ...

class Task(_message.Message):
    __slots__ = ("id", "operation_id", "kind", "state", "stage", "bytes_done", "bytes_total", "bytes_per_second", "percent", "error", "export_result", "import_result", "create_vm_result", "snapshot_result", "create_time", "update_time", "finish_time", "vm_id", "disk_id")
    ID_FIELD_NUMBER: _ClassVar[int]
    OPERATION_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    BYTES_DONE_FIELD_NUMBER: _ClassVar[int]
    BYTES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    BYTES_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    PERCENT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    EXPORT_RESULT_FIELD_NUMBER: _ClassVar[int]
    IMPORT_RESULT_FIELD_NUMBER: _ClassVar[int]
    CREATE_VM_RESULT_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_RESULT_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    FINISH_TIME_FIELD_NUMBER: _ClassVar[int]
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    DISK_ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    operation_id: str
    kind: TaskKind
    state: TaskState
    stage: str
    bytes_done: int
    bytes_total: int
    bytes_per_second: float
    percent: float
    error: TaskError
    export_result: ExportResult
    import_result: ImportResult
    create_vm_result: CreateVMResult
    snapshot_result: SnapshotResult
    create_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    finish_time: _timestamp_pb2.Timestamp
    vm_id: str
    disk_id: str
    def __init__(self, id: _Optional[str] = ..., operation_id: _Optional[str] = ..., kind: _Optional[_Union[TaskKind, str]] = ..., state: _Optional[_Union[TaskState, str]] = ..., stage: _Optional[str] = ..., bytes_done: _Optional[int] = ..., bytes_total: _Optional[int] = ..., bytes_per_second: _Optional[float] = ..., percent: _Optional[float] = ..., error: _Optional[_Union[TaskError, _Mapping]] = ..., export_result: _Optional[_Union[ExportResult, _Mapping]] = ..., import_result: _Optional[_Union[ImportResult, _Mapping]] = ..., create_vm_result: _Optional[_Union[CreateVMResult, _Mapping]] = ..., snapshot_result: _Optional[_Union[SnapshotResult, _Mapping]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., finish_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., vm_id: _Optional[str] = ..., disk_id: _Optional[str] = ...) -> None: ...

class GetTaskRequest(_message.Message):
    __slots__ = ("task_id",)
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    def __init__(self, task_id: _Optional[str] = ...) -> None: ...

class WatchTaskRequest(_message.Message):
    __slots__ = ("task_id",)
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    def __init__(self, task_id: _Optional[str] = ...) -> None: ...

class CancelTaskRequest(_message.Message):
    __slots__ = ("task_id",)
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    def __init__(self, task_id: _Optional[str] = ...) -> None: ...
