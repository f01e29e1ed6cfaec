"""qemu-server config parsing (pure; the spellings PVE writes)."""

from __future__ import annotations

import pytest

from providers.proxmox import qemuconfig
from virtrigaud import errors


def test_a_full_config() -> None:
    parsed = qemuconfig.parse_config(
        {
            "name": "web",
            "cores": 4,
            "sockets": "2",
            "memory": "current=4096",
            "bios": "ovmf",
            "ostype": "win11",
            "boot": "order=virtio1;ide2;net0",
            "scsi0": "local-lvm:vm-100-disk-0,iothread=1,size=32G",
            "virtio1": "local:100/vm-100-disk-1.qcow2,size=1536M",
            "sata2": "/dev/disk/by-id/ata-XYZ,size=500107862016",
            "ide2": "local:iso/debian.iso,media=cdrom,size=600M",
            "efidisk0": "local-lvm:vm-100-disk-9,efitype=4m,size=4M",
            "net0": "virtio=BC:24:11:AA:BB:CC,bridge=vmbr0,firewall=1,tag=30",
            "net1": "model=e1000,macaddr=52:54:00:00:00:01,bridge=vmbr1",
        }
    )
    assert (parsed.cores, parsed.sockets, parsed.memory_mib) == (4, 2, 4096)
    assert (parsed.firmware, parsed.ostype) == ("efi", "win11")
    drives = {d.key: d for d in parsed.drives}
    assert list(drives) == ["ide2", "sata2", "scsi0", "virtio1"]  # efidisk0 is no disk
    assert (drives["scsi0"].storage, drives["scsi0"].size, drives["scsi0"].format) == (
        "local-lvm",
        32 << 30,
        "",
    )
    assert (drives["virtio1"].format, drives["virtio1"].size) == ("qcow2", 1536 << 20)
    assert (drives["sata2"].storage, drives["sata2"].size) == ("", 500107862016)
    assert drives["ide2"].cdrom and not drives["scsi0"].cdrom
    assert parsed.boot_disk == "virtio1"
    nets = {n.key: n for n in parsed.nets}
    assert (nets["net0"].model, nets["net0"].mac, nets["net0"].bridge, nets["net0"].tag) == (
        "virtio",
        "bc:24:11:aa:bb:cc",
        "vmbr0",
        30,
    )
    assert (nets["net1"].model, nets["net1"].mac, nets["net1"].tag) == (
        "e1000",
        "52:54:00:00:00:01",
        0,
    )


def test_defaults_and_legacy_spellings() -> None:
    parsed = qemuconfig.parse_config(
        {"bootdisk": "sata0", "sata0": "local:101/base.raw,size=1T", "scsi1": "none,media=cdrom"}
    )
    assert (parsed.cores, parsed.sockets, parsed.memory_mib, parsed.firmware) == (1, 1, 512, "bios")
    assert parsed.boot_disk == "sata0"
    assert parsed.drives[0].format == "raw" and parsed.drives[0].size == 1 << 40
    no_boot = qemuconfig.parse_config({"ide0": "cdrom,media=cdrom", "virtio3": "s:vm-1-disk-0"})
    assert no_boot.boot_disk == "virtio3"


def test_sizes_and_macs() -> None:
    assert qemuconfig.parse_size("0.5G") == 512 << 20
    assert qemuconfig.parse_size("garbage") == 0
    assert qemuconfig.check_mac("52:54:00:ab:cd:ef", "m") == "52:54:00:AB:CD:EF"
    with pytest.raises(errors.InvalidArgument, match="multicast"):
        qemuconfig.check_mac("01:00:5e:00:00:01", "nics[0].mac")
    with pytest.raises(errors.InvalidArgument, match="not a MAC"):
        qemuconfig.check_mac("52:54:00", "nics[0].mac")
    assert qemuconfig.net_value("virtio", "", "vmbr0", 0) == "virtio,bridge=vmbr0"
    assert qemuconfig.net_value("e1000", "52:54:00:00:00:02", "vmbr1", 9) == (
        "e1000=52:54:00:00:00:02,bridge=vmbr1,tag=9"
    )
