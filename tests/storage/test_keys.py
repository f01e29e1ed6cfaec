"""Key derivation and validation (pure functions; backends are covered elsewhere)."""

from __future__ import annotations

from pathlib import Path

import pytest

from storage.keys import (
    MAX_KEY_BYTES,
    derive_key,
    disk_slug,
    join_key,
    resolve_inside,
    validate_key,
    validate_prefix,
)
from virtrigaud.errors import InvalidArgument

BAD_KEYS = [
    "",
    "..",
    "../x",
    "a/../../etc/passwd",
    "a/..",
    "./a",
    "a/./b",
    "/etc/passwd",
    "//server/share",
    "a//b",
    "a/",
    "a\\..\\b",
    "..\\x",
    "a\x00b",
    "a\nb",
    "a\rb",
    "a\tb",
    "a\x7fb",
    "a\x85b",
    "a\u2028b",
    "a\ud800b",
    "x" * (MAX_KEY_BYTES + 1),
    "a/" + "y" * 201,
    "disk.qcow2.sha256",
    "a/.disk.1234.vtpart",
]


@pytest.mark.parametrize("key", BAD_KEYS)
def test_bad_keys_are_rejected(key: str) -> None:
    with pytest.raises(InvalidArgument):
        validate_key(key)


@pytest.mark.parametrize(
    "key",
    ["disk.qcow2", "virtrigaud/ns/vm-1234abcd/vda.qcow2", "a/%2e%2e/b", "a/b c/d?#", "ü/ñ.raw"],
)
def test_good_keys_pass_unchanged(key: str) -> None:
    assert validate_key(key) == key


def test_multibyte_length_is_counted_in_bytes() -> None:
    assert validate_key("é" * 100)  # 200 bytes: the segment limit exactly
    with pytest.raises(InvalidArgument):
        validate_key("é" * 101)


def test_prefixes() -> None:
    assert validate_prefix("") == ""
    assert validate_prefix("virtrigaud/ns/") == "virtrigaud/ns/"
    for bad in ("../", "/abs/", "a//"):
        with pytest.raises(InvalidArgument):
            validate_prefix(bad)
    assert join_key("", "a/b") == "a/b"
    assert join_key("/base/", "a") == "base/a"


def test_derive_key_shape() -> None:
    key = derive_key("prod", "web-01", "3f2a1b4c-9d8e-4f00-a1b2-c3d4e5f60718", "vda", "qcow2")
    assert key == "virtrigaud/prod/web-01-3f2a1b4c/vda.qcow2"


def test_derive_key_slugs_unsafe_disk_names_without_collisions() -> None:
    a = derive_key("ns", "vm", "abcdef0123", "Hard disk 1", "vmdk")
    b = derive_key("ns", "vm", "abcdef0123", "Hard-disk-1", "vmdk")
    c = derive_key("ns", "vm", "abcdef0123", "../../etc", "raw")
    assert a.startswith("virtrigaud/ns/vm-abcdef01/Hard-disk-1-") and a.endswith(".vmdk")
    assert b == "virtrigaud/ns/vm-abcdef01/Hard-disk-1.vmdk"
    assert a != b
    assert ".." not in c.split("/")
    assert disk_slug("scsi0:0") != disk_slug("scsi0-0")


@pytest.mark.parametrize(
    ("ns", "name", "uid", "fmt"),
    [
        ("../x", "vm", "abcdef0123", "raw"),
        ("ns", "VM", "abcdef0123", "raw"),
        ("ns", "vm", "abc", "raw"),
        ("ns", "vm", "abcdef0123/..", "raw"),
        ("ns", "vm", "abcdef0123", "qcow2/../x"),
        ("ns", "vm", "abcdef0123", "sha256"),
    ],
)
def test_derive_key_rejects_bad_parts(ns: str, name: str, uid: str, fmt: str) -> None:
    with pytest.raises(InvalidArgument):
        derive_key(ns, name, uid, "vda", fmt)


def test_resolve_inside_refuses_symlink_escape(tmp_path: Path) -> None:
    root = tmp_path / "root"
    outside = tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "link").symlink_to(outside)
    (root / "inner").mkdir()
    assert resolve_inside(root, "inner/x.raw") == root.resolve() / "inner/x.raw"
    with pytest.raises(InvalidArgument, match="outside"):
        resolve_inside(root, "link/x.raw")
