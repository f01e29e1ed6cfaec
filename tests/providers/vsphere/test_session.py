"""Login, TLS and error kinds against vcsim started with a username and password."""

from __future__ import annotations

import dataclasses

import pytest
from pyVmomi import vim

from manager.providerclient import ProviderClient
from providers.runtime.driver import ProviderConfig
from providers.vsphere.driver import VSphereDriver, create
from tests.providers.vsphere.helpers import Lab, config, serve
from tests.servers.net import free_port
from tests.servers.vcsim import DATASTORE, PORTGROUP, Vcsim
from virtrigaud import errors


def test_wrong_password_is_an_authentication_error(vcsim: Vcsim) -> None:
    bad = dataclasses.replace(
        config(vcsim), credentials={**vcsim.credentials, "password": "wrong-pw-zz9"}
    )
    with serve(create(bad)) as provider:
        with pytest.raises(errors.AuthenticationError, match="wrong username or password") as exc:
            provider.list_vms()
        assert "wrong-pw-zz9" not in str(exc.value)
        checks = provider.validate(storage_hint=DATASTORE, networks=[PORTGROUP])
    assert not checks.ok
    by_name = {c.name: c for c in checks.checks}
    assert "refused" in by_name["connection"].message
    assert by_name[f"storage:{DATASTORE}"].message == "not checked: no connection"
    assert all("wrong-pw-zz9" not in c.message for c in checks.checks)


def test_untrusted_certificate_is_refused_unless_configured(vcsim: Vcsim) -> None:
    """TLS is verified by default; the CA (file or Secret) or an explicit insecure
    option are the ways to reach a server with a private certificate."""
    plain = ProviderConfig(endpoint=vcsim.url, credentials=vcsim.credentials)
    with (
        serve(create(plain)) as provider,
        pytest.raises(errors.FailedPrecondition, match=r"not trusted.*caFile"),
    ):
        provider.list_vms()
    assert vcsim.ca_file is not None
    in_secret = dataclasses.replace(
        plain, credentials={**vcsim.credentials, "ca.crt": vcsim.ca_file.read_text()}
    )
    insecure = dataclasses.replace(plain, options={"insecureSkipTLSVerify": "true"})
    for cfg in (in_secret, insecure, config(vcsim)):
        with serve(create(cfg)) as provider:
            assert provider.list_vms().vms


def test_unreachable_endpoint_is_unavailable(vcsim: Vcsim) -> None:
    cfg = dataclasses.replace(config(vcsim), endpoint=f"https://127.0.0.1:{free_port()}/sdk")
    with serve(create(cfg)) as provider, pytest.raises(errors.Unavailable):
        provider.list_vms()


def test_validate_checks_each_placement(provider: ProviderClient) -> None:
    good = provider.validate(storage_hint=DATASTORE, networks=[PORTGROUP, "VM Network"])
    assert good.ok, [c.message for c in good.checks if not c.ok]
    names = [c.name for c in good.checks]
    assert names == [
        "connection",
        "datacenter",
        "resourcePool",
        f"storage:{DATASTORE}",
        f"network:{PORTGROUP}",
        "network:VM Network",
    ]
    bad = provider.validate(storage_hint="nope-ds", networks=["nope-net"])
    failed = {c.name: c.message for c in bad.checks if not c.ok}
    assert set(failed) == {"storage:nope-ds", "network:nope-net"}
    assert "not found" in failed["storage:nope-ds"]


def test_bad_placement_options_are_reported(vcsim: Vcsim) -> None:
    cfg = config(vcsim, datacenter="NoSuchDC")
    with serve(create(cfg)) as provider:
        checks = provider.validate(storage_hint=DATASTORE)
    by_name = {c.name: c for c in checks.checks}
    assert not by_name["datacenter"].ok and "NoSuchDC" in by_name["datacenter"].message
    cfg = config(vcsim, resourcePool="NoSuchPool", folder="no/such")
    with serve(create(cfg)) as provider:
        checks = provider.validate()
    by_name = {c.name: c for c in checks.checks}
    assert not by_name["resourcePool"].ok and "NoSuchPool" in by_name["resourcePool"].message
    assert not by_name["folder"].ok


def test_capabilities(provider: ProviderClient) -> None:
    caps = provider.get_capabilities()
    assert caps.provider_type == "vsphere"
    assert "VMware vCenter Server" in caps.hypervisor_version
    assert list(caps.import_formats) == [2]  # VMDK only: a datastore holds VMDKs
    assert caps.native_format == 2


def test_an_expired_session_is_renewed_once(vs: Lab, driver: VSphereDriver) -> None:
    """vCenter drops idle sessions; the next call logs in again on the same stub, so
    references made before (held by running tasks) keep working."""
    vm_id = vs.make_vm(vs.name("expiry"), [])
    ref = driver.client.ref(vim.VirtualMachine, vm_id)
    before = driver.client.generation
    driver.client.call(lambda c: c.sessionManager.Logout(), "test: end the session")
    with serve(driver) as provider:
        # (vcsim answers a property read of a dead session with NoPermission entries
        # rather than a NotAuthenticated fault; creating the list's view raises it.)
        assert vm_id in {vm.id for vm in provider.list_vms().vms}
        assert provider.describe_vm(vm_id).name == vs.name("expiry")
    assert driver.client.generation == before + 1
    assert driver.client.properties(ref, ["name"], "test")["name"] == vs.name("expiry")
    assert driver.client.generation == before + 1  # one login, not one per call
