"""XML parsing/generation, names and URIs: pure functions, no daemon."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from providers.libvirt import domxml, names, placement, snapxml, volxml
from providers.libvirt.client import with_uri_params
from virtrigaud import errors

RICH_DOMAIN = """
<domain type='kvm' id='7'>
  <name>web-01</name>
  <uuid>0b8f8f3e-6c43-4a8e-9a0a-2f5d1c0d0001</uuid>
  <metadata>
    <libosinfo:libosinfo xmlns:libosinfo="http://libosinfo.org/xmlns/libvirt/domain/1.0">
      <libosinfo:os id="http://debian.org/debian/12"/>
    </libosinfo:libosinfo>
  </metadata>
  <memory unit='GiB'>2</memory>
  <vcpu placement='static'>4</vcpu>
  <cpu><topology sockets='2' dies='1' cores='2' threads='1'/></cpu>
  <os><type arch='x86_64'>hvm</type>
    <loader readonly='yes' type='pflash'>/usr/share/OVMF/OVMF_CODE_4M.fd</loader>
  </os>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/var/lib/libvirt/images/web.s1.qcow2'/>
      <backingStore type='file'>
        <format type='qcow2'/>
        <source file='/var/lib/libvirt/images/web.qcow2'/>
        <backingStore/>
      </backingStore>
      <target dev='vda' bus='virtio'/>
      <boot order='2'/>
    </disk>
    <disk type='volume' device='disk'>
      <driver name='qemu' type='raw'/>
      <source pool='data' volume='web-data.img'/>
      <target dev='sda' bus='scsi'/>
      <boot order='1'/>
    </disk>
    <disk type='block' device='disk'>
      <driver name='qemu' type='raw'/>
      <source dev='/dev/vg0/web-logs'/>
      <target dev='vdb' bus='virtio'/>
    </disk>
    <disk type='network' device='disk'>
      <driver name='qemu' type='raw'/>
      <source protocol='rbd' name='rbd-pool/web-extra'/>
      <target dev='vdc' bus='virtio'/>
    </disk>
    <disk type='file' device='cdrom'>
      <driver name='qemu' type='raw'/>
      <target dev='hdc' bus='ide'/>
      <readonly/>
    </disk>
    <interface type='network'>
      <mac address='52:54:00:AA:BB:01'/>
      <source network='default'/>
      <model type='virtio'/>
    </interface>
    <interface type='bridge'>
      <mac address='52:54:00:aa:bb:02'/>
      <source bridge='br0'/>
      <vlan><tag id='42'/></vlan>
      <model type='e1000'/>
    </interface>
  </devices>
</domain>
"""


def test_parse_rich_domain() -> None:
    dom = domxml.parse_domain(RICH_DOMAIN)
    assert (dom.name, dom.uuid, dom.running_id) == (
        "web-01",
        "0b8f8f3e-6c43-4a8e-9a0a-2f5d1c0d0001",
        7,
    )
    assert (dom.vcpus, dom.sockets, dom.memory_kib) == (4, 2, 2 * 1024 * 1024)
    assert dom.firmware == "efi"
    assert dom.guest_os == "http://debian.org/debian/12"
    vda, sda, vdb, vdc, cd = dom.disks
    assert (vda.target, vda.format, vda.path, vda.boot_order) == (
        "vda",
        "qcow2",
        "/var/lib/libvirt/images/web.s1.qcow2",
        2,
    )
    assert vda.backing == ("/var/lib/libvirt/images/web.qcow2",)
    assert (sda.source_type, sda.pool, sda.volume, sda.bus) == (
        "volume",
        "data",
        "web-data.img",
        "scsi",
    )
    assert (vdb.source_type, vdb.path) == ("block", "/dev/vg0/web-logs")
    assert vdc.path == "rbd:rbd-pool/web-extra"
    assert (cd.device, cd.path, cd.readonly) == ("cdrom", "", True)
    net, br = dom.nics
    assert (net.kind, net.source, net.mac, net.model) == (
        "network",
        "default",
        "52:54:00:aa:bb:01",
        "virtio",
    )
    assert (br.kind, br.source, br.vlan, br.model) == ("bridge", "br0", 42, "e1000")


@pytest.mark.parametrize(
    ("os_xml", "expected"),
    [
        ("<os firmware='efi'><type>hvm</type></os>", "efi"),
        ("<os><type>hvm</type><loader>/usr/share/OVMF/OVMF_CODE.fd</loader></os>", "efi"),
        ("<os><type>hvm</type><boot dev='hd'/></os>", "bios"),
        ("", "bios"),
    ],
)
def test_firmware(os_xml: str, expected: str) -> None:
    dom = domxml.parse_domain(f"<domain><name>x</name>{os_xml}</domain>")
    assert dom.firmware == expected


def test_generated_domain_escapes_hostile_names_and_labels() -> None:
    hostile = "q\"'<x>&amp;</domain><name>evil"
    plan = domxml.DomainPlan(
        name=hostile,
        vcpus=2,
        memory_mib=256,
        virt_type="qemu",
        disks=[domxml.DiskPlan("/pool/a.qcow2", "qcow2", "virtio", "vda", boot_order=1)],
        nics=[domxml.NicPlan("network", "default", "52:54:00:00:00:01", "virtio")],
        labels={"owner": "a'b\"<c>", "</metadata>": "&"},
    )
    text = domxml.build_domain(plan)
    root = ET.fromstring(text)
    assert len(root.findall("name")) == 1
    parsed = domxml.parse_domain(text)
    assert parsed.name == hostile
    assert parsed.disks[0].path == "/pool/a.qcow2"
    assert domxml.labels_of(text) == {"owner": "a'b\"<c>", "</metadata>": "&"}


def test_target_names_follow_libvirt_convention() -> None:
    buses = ["virtio", "virtio", "sata", "ide", "scsi"] + ["virtio"] * 26
    names_ = domxml.target_names(buses)
    assert names_[:5] == ["vda", "vdb", "sda", "hda", "sdb"]
    assert names_[-1] == "vdab"


def test_volume_and_pool_xml_round_trip() -> None:
    text = volxml.build_volume("disk-0.qcow2", 3 * 1024**3, "qcow2")
    root = ET.fromstring(text)
    assert root.findtext("capacity") == str(3 * 1024**3)
    vol = volxml.parse_volume(
        "<volume type='file'><name>a</name><key>/p/a</key><capacity unit='bytes'>100"
        "</capacity><allocation unit='KiB'>4</allocation><target><path>/p/a</path>"
        "<format type='raw'/></target></volume>"
    )
    assert (vol.path, vol.format, vol.capacity, vol.allocation) == ("/p/a", "raw", 100, 4096)
    pool = volxml.parse_pool(volxml.build_dir_pool("p1", "/srv/p1"))
    assert (pool.name, pool.type, pool.path) == ("p1", "dir", "/srv/p1")


def test_snapshot_xml_and_overlay_names() -> None:
    overlay = snapxml.overlay_path("/pool/web.disk0.qcow2", "mig-1234abcd")
    assert overlay == "/pool/web.disk0.mig-1234abcd.qcow2"
    text = snapxml.build_disk_only("mig-1234abcd", "why <&>", {"vda": overlay}, ["hdc"])
    root = ET.fromstring(text)
    assert root.findtext("description") == "why <&>"
    assert [d.get("snapshot") for d in root.findall("disks/disk")] == ["external", "no"]


@pytest.mark.parametrize("bad", ["../x", "a/b", "", ".hidden", "-opt", "x:y", "a\\b", "q'\"<>&"])
def test_unsafe_volume_names_are_rejected(bad: str) -> None:
    with pytest.raises(errors.InvalidArgument, match="not a valid name"):
        names.check_safe(bad, "volume")


def test_slug_and_refs() -> None:
    assert names.slug("q\"'<x>&y") == "q-x-y"
    assert names.slug("../../etc") == "etc"
    assert names.slug("<<>>") == "vm"
    assert names.parse_volume_ref("p1/v.qcow2", "f") == names.VolumeRef("p1", "v.qcow2")
    assert names.parse_volume_ref("v.img", "f", "dflt") == names.VolumeRef("dflt", "v.img")
    for bad in ("p1/../x", "p1/a/b", "../x", "p1/"):
        with pytest.raises(errors.InvalidArgument):
            names.parse_volume_ref(bad, "f", "dflt")
    with pytest.raises(errors.InvalidArgument, match="pool/volume"):
        names.parse_volume_ref("v.img", "f")
    assert names.check_mac("52-54-00-AB-CD-EF", "m") == "52:54:00:ab:cd:ef"
    with pytest.raises(errors.InvalidArgument, match="multicast"):
        names.check_mac("01:00:5e:00:00:01", "m")


def test_network_forms() -> None:
    assert placement.split_network("bridge:br0") == ("bridge", "br0")
    assert placement.split_network("network:default") == ("network", "default")
    assert placement.split_network("default") == ("", "default")
    assert placement.split_network("weird:name") == ("", "weird:name")


def test_capability_documents() -> None:
    caps = (
        "<capabilities><host><cpu><arch>x86_64</arch></cpu></host>"
        "<guest><arch name='x86_64'><domain type='qemu'/><domain type='kvm'/></arch></guest>"
        "<guest><arch name='i686'><domain type='qemu'/></arch></guest></capabilities>"
    )
    assert volxml.host_virt_types(caps) == {"qemu", "kvm"}
    assert volxml.host_virt_types(caps, "i686") == {"qemu"}
    with_efi = "<domainCapabilities><os><enum name='firmware'><value>efi</value></enum></os>"
    assert volxml.firmware_values(with_efi + "</domainCapabilities>") == {"efi"}
    assert (
        volxml.firmware_values(
            "<domainCapabilities><os><enum name='firmware'/></os></domainCapabilities>"
        )
        == set()
    )


def test_uri_params_are_encoded() -> None:
    uri = with_uri_params("qemu+ssh://root@host/system?no_tty=1", {"keyfile": "/tmp/k y&z"})
    assert uri == "qemu+ssh://root@host/system?no_tty=1&keyfile=%2Ftmp%2Fk%20y%26z"
