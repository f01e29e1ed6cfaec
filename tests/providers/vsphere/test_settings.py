"""Endpoint, options and descriptors: the parts that need no vSphere at all."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from providers.runtime.driver import ProviderConfig
from providers.vsphere import dspath, settings, vmdk
from virtrigaud import errors

MiB = 1 << 20
CREDS = {"username": "u", "password": "s3cret-pw"}


@pytest.mark.parametrize(
    ("text", "host", "port", "path"),
    [
        ("https://vcenter.example.com/sdk", "vcenter.example.com", 443, "/sdk"),
        ("https://esxi01", "esxi01", 443, "/sdk"),
        ("vcenter.example.com:8443", "vcenter.example.com", 8443, "/sdk"),
        ("https://[fd00::5]:444/sdk/", "fd00::5", 444, "/sdk"),
    ],
)
def test_endpoints(text: str, host: str, port: int, path: str) -> None:
    ep = settings.parse_endpoint(text)
    assert (ep.host, ep.port, ep.path) == (host, port, path)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", "required"),
        ("http://vc/sdk", "https"),
        ("https://user:pw@vc/sdk", "Secret"),
        ("https://vc:99999/sdk", "port"),
    ],
)
def test_bad_endpoints(text: str, match: str) -> None:
    with pytest.raises(errors.InvalidArgument, match=match):
        settings.parse_endpoint(text)


def test_config_needs_credentials_and_valid_options(tmp_path: Path) -> None:
    def make(creds: dict[str, str], **options: str) -> settings.Settings:
        return settings.from_config(
            ProviderConfig(endpoint="https://vc/sdk", credentials=creds, options=options)
        )

    with pytest.raises(errors.InvalidArgument, match="username and password"):
        make({"username": "u"})
    with pytest.raises(errors.InvalidArgument, match="caFile"):
        make(CREDS, caFile=str(tmp_path / "missing.pem"))
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate")
    with pytest.raises(errors.InvalidArgument, match="caFile"):
        make(CREDS, caFile=str(bad))
    with pytest.raises(errors.InvalidArgument, match="insecureSkipTLSVerify"):
        make(CREDS, insecureSkipTLSVerify="maybe")
    with pytest.raises(errors.InvalidArgument, match="taskTimeout"):
        make(CREDS, taskTimeout="-1")
    assert make(CREDS).tls.insecure is False  # verified unless asked otherwise
    parsed = make(CREDS, insecureSkipTLSVerify="true", scratchLimit="2G", datacenter="DC0")
    assert parsed.tls.insecure and parsed.scratch_limit == 2 << 30
    assert "s3cret-pw" not in repr(parsed)  # the password never shows


def test_datastore_paths_stay_inside_the_datastore() -> None:
    path = dspath.parse("[LocalDS_0] dir/disk.vmdk")
    assert (path.datastore, path.path, path.name, path.folder) == (
        "LocalDS_0",
        "dir/disk.vmdk",
        "disk.vmdk",
        "dir",
    )
    assert str(path.sibling("disk-flat.vmdk")) == "[LocalDS_0] dir/disk-flat.vmdk"
    for bad in ("no brackets", "[ds] ../etc/passwd", "[ds] /abs", "[ds] a/./b"):
        with pytest.raises(errors.InvalidArgument):
            dspath.parse(bad)
    with pytest.raises(errors.InvalidArgument):
        dspath.check_name("a/b", "name")


def test_flat_descriptor_is_read_by_qemu_img(tmp_path: Path) -> None:
    """The descriptor imports write describes the flat extent exactly (qemu-img)."""
    flat = tmp_path / "d-flat.vmdk"
    flat.write_bytes(b"\x42" * MiB + bytes(MiB))
    (tmp_path / "d.vmdk").write_bytes(vmdk.flat_descriptor("d-flat.vmdk", 2 * MiB))
    info = subprocess.run(
        ["qemu-img", "info", "--output=json", str(tmp_path / "d.vmdk")],
        capture_output=True,
        text=True,
        check=True,
    )
    assert '"virtual-size": 2097152' in info.stdout
    out = tmp_path / "out.raw"
    subprocess.run(
        ["qemu-img", "convert", "-f", "vmdk", "-O", "raw", str(tmp_path / "d.vmdk"), str(out)],
        check=True,
    )
    assert out.read_bytes() == flat.read_bytes()
    with pytest.raises(errors.InvalidArgument):
        vmdk.flat_descriptor("d-flat.vmdk", 1000)  # not whole sectors


def test_descriptor_parse_and_rewrite() -> None:
    text = (
        b"# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=12345678\n"
        b'createType="seSparse"\nparentFileNameHint="/vmfs/volumes/ds/vm/base.vmdk"\n\n'
        b'RW 4194304 SESPARSE "vm-000001-sesparse.vmdk"\n\n#DDB\nddb.uuid = "60 00"\n'
    )
    desc = vmdk.parse(text, "delta")
    assert desc.create_type == "seSparse"
    assert desc.parent_hint == "/vmfs/volumes/ds/vm/base.vmdk"
    assert desc.extents[0].file == "vm-000001-sesparse.vmdk"
    assert desc.capacity == 4194304 * 512
    out = vmdk.rewrite(desc, {"vm-000001-sesparse.vmdk": "c1-x.vmdk"}, "c0-base.vmdk")
    assert 'RW 4194304 SESPARSE "c1-x.vmdk"' in out
    assert 'parentFileNameHint="c0-base.vmdk"' in out
    assert "\n\n" not in out  # blank lines dropped (qemu-img 7.2 misreads them)
    with pytest.raises(errors.InvalidArgument):
        vmdk.parse(b"\x00binary", "x")
    with pytest.raises(errors.InvalidArgument):
        vmdk.parse(b"just text\n", "x")


def test_escaped_entity_names_are_shown_as_typed() -> None:
    from providers.vsphere.placement import display_name

    assert display_name("web%2f01 100%25 a%5Cb") == "web/01 100% a\\b"
    assert display_name(None) == ""
