"""The one mapping between the contract's DiskFormat values and qemu-img format names.

Manager and providers both translate between the two; they import this table rather
than keeping copies that could drift.
"""

from __future__ import annotations

from virtrigaud.provider.v1 import provider_pb2 as pb

FORMAT_NAMES: dict[pb.DiskFormat, str] = {
    pb.DISK_FORMAT_QCOW2: "qcow2",
    pb.DISK_FORMAT_VMDK: "vmdk",
    pb.DISK_FORMAT_RAW: "raw",
    pb.DISK_FORMAT_VDI: "vdi",
    pb.DISK_FORMAT_VHDX: "vhdx",
    pb.DISK_FORMAT_VPC: "vpc",
}
FORMAT_VALUES: dict[str, pb.DiskFormat] = {name: value for value, name in FORMAT_NAMES.items()}
