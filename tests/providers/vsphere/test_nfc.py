"""The NFC lease's disk URL selection (pure: vcsim has no ExportVm to drive it)."""

from __future__ import annotations

import pytest
from pyVmomi import vim

from providers.vsphere import nfc
from virtrigaud import errors


def _info(*urls: tuple[str, str, bool]) -> object:
    return vim.HttpNfcLease.Info(
        deviceUrl=[
            vim.HttpNfcLease.DeviceUrl(key=key, url=url, disk=disk, importKey="", sslThumbprint="")
            for key, url, disk in urls
        ]
    )


def test_disk_url_by_bus_and_unit_with_the_host_substituted() -> None:
    info = _info(
        ("/vm-7/VirtualLsiLogicController0:0", "https://*/nfc/52a/disk-0.vmdk", True),
        ("/vm-7/VirtualLsiLogicController0:1", "https://*/nfc/52a/disk-1.vmdk", True),
        ("/vm-7/nvram", "https://*/nfc/52a/vm.nvram", False),
    )
    assert (
        nfc.device_url(info, 0, 1, "vc.example.com") == "https://vc.example.com/nfc/52a/disk-1.vmdk"
    )
    assert nfc.device_url(info, 0, 0, "fd00::5") == "https://[fd00::5]/nfc/52a/disk-0.vmdk"
    with pytest.raises(errors.FailedPrecondition, match="0:3"):
        nfc.device_url(info, 0, 3, "vc")


def test_a_single_disk_needs_no_key_match_and_real_hosts_stay() -> None:
    info = _info(("weird-key", "https://esx01.example.com:902/nfc/1/disk-0.vmdk", True))
    assert nfc.device_url(info, 1, 4, "vc") == "https://esx01.example.com:902/nfc/1/disk-0.vmdk"
    with pytest.raises(errors.FailedPrecondition, match="none"):
        nfc.device_url(_info(), 0, 0, "vc")
