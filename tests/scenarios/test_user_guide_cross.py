"""The user guide's scenarios 1-3 through the engine, across hypervisors, real servers.

Each test writes the manifests a user would (Secrets, Providers, the source
VirtualMachine, the VMMigration), runs ``virtrigaud run -f`` (one-machine mode: the
launcher starts one real provider process per Provider) and then checks the data that
arrived (content digests of every target disk against the source disk, read back
from the target's own files, not from the code under test), the final status fields,
the events and what cleanup left behind. The servers are the session's: libvirtd +
QEMU (``tests.servers.libvirtd``), vcsim (``tests.servers.vcsim``; its datastore is a
local folder, so the flat VMDKs are read directly), fakepve for the Proxmox API with a
real sshd as the node over a directory storage of real images
(``tests.providers.proxmox.env``), SeaweedFS (S3) and nginx (WebDAV).

1. libvirt -> vSphere through S3: a running libvirt VM with a qcow2 and a raw disk
   arrives on the vcsim datastore as two vmfs flat VMDKs holding the guest data; the
   bucket is empty and the source has no migration snapshot afterwards.
2. vSphere -> Proxmox through an NFS-style directory: a running vcsim VM with two
   disks arrives as qcow2 import volumes on the node's directory storage, and the VM
   PVE creates imports exactly those volumes (``import-from=``).
3. Proxmox -> libvirt through HTTP (WebDAV, bearer token): a running PVE VM with two
   qcow2 disks is exported from its snapshot and arrives as libvirt volumes; nothing
   is left on the WebDAV server. The source NIC is VLAN-tagged on a PVE bridge and
   mapped to a libvirt network: the tag is not put on the target NIC, and the Created
   condition says so.

Around scenario 3: a token the WebDAV server refuses fails the migration with a clear
UNAUTHENTICATED message and leaves the running source and its data as they were.
"""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest
from pyVmomi import vim

from manager.store.sqlite import SQLiteStore
from providers.common import digest
from providers.libvirt import domxml
from tests.providers.proxmox.env import BRIDGE, NODE, STORAGE, PveEnv
from tests.providers.proxmox.env import session_env as pve_session_env
from tests.providers.vsphere.helpers import TEST_FOLDER, Lab, lab, pattern
from tests.servers.libvirtd import LibvirtEnv
from tests.servers.libvirtd import session_env as libvirt_session_env
from tests.servers.nginx import NginxDav
from tests.servers.seaweedfs import SeaweedFS
from tests.servers.vcsim import DATASTORE, PORTGROUP, Vcsim, session_vcsim
from tests.support.libvirt_vms import Source, define_source, remove_all
from tests.support.onemachine import run

MiB = 1 << 20
API = "infra.virtrigaud.io/v1beta1"
EVENTS = {"ExportCompleted", "ImportCompleted", "VMCreated", "MigrationCompleted"}


# -- the session's servers ---------------------------------------------------------------


@pytest.fixture(scope="module")
def kvm(pytestconfig: pytest.Config) -> LibvirtEnv:
    return libvirt_session_env(pytestconfig)


@pytest.fixture(scope="module")
def vcsim(pytestconfig: pytest.Config) -> Vcsim:
    return session_vcsim(pytestconfig)


@pytest.fixture(scope="module")
def pve(pytestconfig: pytest.Config) -> PveEnv:
    return pve_session_env(pytestconfig)


@pytest.fixture
def vs(vcsim: Vcsim) -> Iterator[Lab]:
    """This test's VMs and files on vcsim (removed at the end)."""
    with lab(vcsim) as created:
        yield created


@pytest.fixture
def kvm_cleanup(kvm: LibvirtEnv) -> Iterator[None]:
    yield
    remove_all(kvm)


# -- manifests ---------------------------------------------------------------------------


def _secret(name: str, data: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": "default"},
        "stringData": data,
    }


def _provider(
    name: str, spec: dict[str, Any], options: dict[str, str] | None = None
) -> dict[str, Any]:
    annotations = {f"options.virtrigaud.io/{k}": v for k, v in (options or {}).items()}
    return {
        "apiVersion": API,
        "kind": "Provider",
        "metadata": {"name": name, "namespace": "default", "annotations": annotations},
        "spec": spec,
    }


def _libvirt(kvm: LibvirtEnv, pool: str) -> list[dict[str, Any]]:
    return [
        _provider(
            "kvm", {"type": "libvirt", "endpoint": kvm.uri, "defaults": {"storagePool": pool}}
        )
    ]


def _vsphere(vcsim: Vcsim) -> list[dict[str, Any]]:
    """vCenter credentials and its CA (``ca.crt``) in one Secret, as the docs say."""
    assert vcsim.ca_file is not None
    return [
        _secret("vcenter-creds", {**vcsim.credentials, "ca.crt": vcsim.ca_file.read_text()}),
        _provider(
            "vcenter",
            {
                "type": "vsphere",
                "endpoint": vcsim.url,
                "credentialsSecretRef": {"name": "vcenter-creds"},
                "defaults": {"datastore": DATASTORE},
            },
        ),
    ]


def _proxmox(pve: PveEnv, scratch: Path) -> list[dict[str, Any]]:
    """API token + the node's SSH key and pinned host key in a Secret; node options
    without a spec field as ``options.virtrigaud.io/`` annotations."""
    return [
        _secret("pve-creds", pve.credentials()),
        _provider(
            "pve",
            {
                "type": "proxmox",
                "endpoint": pve.pve_server.url,
                "credentialsSecretRef": {"name": "pve-creds"},
                "defaults": {"node": NODE},
            },
            {
                "sshHost": "127.0.0.1",
                "sshPort": str(pve.ssh.port),
                "caFile": pve.pve_server.cafile,
                "storage": STORAGE,
                "nodeScratchDir": str(pve.node_tmp),
                "scratchDir": str(scratch),
            },
        ),
    ]


def _move(  # noqa: PLR0917 - the migration's fields
    source: str,
    vm_id: str,
    target: str,
    target_name: str,
    hint: str,
    network: str,
    storage: dict[str, Any],
) -> list[dict[str, Any]]:
    return [
        {
            "apiVersion": API,
            "kind": "VirtualMachine",
            "metadata": {"name": "app", "namespace": "default"},
            "spec": {"providerRef": {"name": source}, "vmId": vm_id},
        },
        {
            "apiVersion": API,
            "kind": "VMMigration",
            "metadata": {"name": "move", "namespace": "default"},
            "spec": {
                "sourceName": "app",
                "sourceNamespace": "default",
                "targetProviderRef": {"name": target},
                "targetName": target_name,
                "targetStorageHint": hint,
                "targetNetworkHints": [{"name": "eth0", "network": network}],
                "storage": storage,
                "retryPolicy": {"maxAttempts": 1},
            },
        },
    ]


# -- running and reading back --------------------------------------------------------------


def _migrate(workdir: Path, manifests: list[Any]) -> dict[str, Any]:
    """Run to the end; the migration with its events and the target VirtualMachine."""
    proc = run(workdir, manifests, timeout=300)
    out, err = proc.communicate(timeout=600)
    store = SQLiteStore(workdir / "state.db")
    try:
        migration = store.get("VMMigration", "default", "move")
        migration["events"] = [
            (e.reason, e.message) for e in store.events_for("VMMigration", "default", "move")
        ]
        targets = [o for o in store.list("VirtualMachine") if o["metadata"]["name"] != "app"]
        migration["target"] = targets[0] if targets else None
    finally:
        store.close()
    assert proc.returncode == 0, f"{out}\n{err}\n{migration.get('status')}"
    return migration


def _assert_finished(
    migration: dict[str, Any], formats: list[tuple[str, str]], converted_reason: str
) -> None:
    """Ready at 100 %, both checksums of every disk, the formats (source -> target),
    the Converted condition, cleanup and the events of a whole migration."""
    status = migration["status"]
    assert status["phase"] == "Ready", status
    assert status["progress"] == 100
    assert status["snapshotId"]
    assert status["checksum"].startswith("sha256:")
    disks = status["disks"]
    assert [(d["sourceFormat"], d["format"]) for d in disks] == formats
    for disk in disks:
        assert disk["checksum"].startswith("sha256:") and len(disk["checksum"]) == 71
        assert disk["contentChecksum"].startswith("sha256:")
        assert disk["importedDiskId"]
    conditions = {c["type"]: c for c in status["conditions"]}
    for kind in ("Validated", "Snapshotted", "Exported", "Transferred", "Imported", "Created"):
        assert conditions[kind]["status"] == "True", conditions[kind]
    converted = conditions["Converted"]
    assert (converted["status"], converted["reason"]) == ("True", converted_reason), converted
    cleaned = conditions["CleanedUp"]
    assert cleaned["status"] == "True", cleaned
    assert f"snapshot {status['snapshotId']}" in cleaned["message"]
    for src, dst in {pair for pair in formats if pair[0] != pair[1]}:
        assert f"{src} -> {dst}" in converted["message"], converted
    reasons = [reason for reason, _ in migration["events"]]
    assert set(reasons) >= EVENTS, reasons
    assert reasons.index("MigrationCompleted") < reasons.index("CleanupCompleted"), reasons
    assert migration["target"] is not None
    assert migration["target"]["spec"]["importedDisk"]["migrationRef"]["name"] == "move"


def _content(migration: dict[str, Any]) -> list[str]:
    return [d["contentChecksum"].removeprefix("sha256:") for d in migration["status"]["disks"]]


# -- 1. libvirt -> vSphere through S3 -----------------------------------------------------------


def test_scenario_1_libvirt_to_vsphere_through_s3(
    kvm: LibvirtEnv, kvm_cleanup: None, vs: Lab, seaweed: SeaweedFS, tmp_path: Path
) -> None:
    src: Source = define_source(
        kvm, [("qcow2", 40 * MiB, 0x13), ("raw", 24 * MiB, 0x27)], label="x1"
    )
    want = [digest.content_digest(p, f, force_share=True) for p, f in src.disks]
    bucket = seaweed.create_bucket(f"x1-{secrets.token_hex(3)}")
    storage = {
        "type": "s3",
        "bucket": bucket,
        "region": "us-east-1",
        "endpoint": seaweed.endpoint,
        "credentialsSecretRef": {"name": "s3-creds"},
    }
    target = vs.name("from-kvm")
    manifests = [
        _secret("s3-creds", {"accessKey": seaweed.access_key, "secretKey": seaweed.secret_key}),
        *_vsphere(vs.server),
        *_libvirt(kvm, kvm.pool),
        *_move("kvm", src.uuid, "vcenter", target, DATASTORE, PORTGROUP, storage),
    ]
    try:
        migration = _migrate(tmp_path, manifests)
    finally:
        disks = _adopt_vsphere_target(vs, target)
    _assert_finished(migration, [("qcow2", "vmdk"), ("raw", "vmdk")], "ConvertedOnSource")
    assert _content(migration) == want
    # The VM exists in vcsim with two disks whose flat extents hold the guest data.
    assert migration["target"]["status"]["id"] == disks.moid
    assert disks.paths == [d["importedDiskId"] for d in migration["status"]["disks"]]
    arrived = [digest.content_digest(str(flat), "raw") for flat in disks.flats]
    assert arrived == want
    sizes = [flat.stat().st_size for flat in disks.flats]
    assert sizes == [40 * MiB, 24 * MiB]
    # Shape: the source's CPU and memory, its NIC's MAC on the mapped portgroup.
    assert vs.prop(disks.moid, "config.hardware.numCPU") == 1
    assert vs.prop(disks.moid, "config.hardware.memoryMB") == 64
    assert vs.prop(disks.moid, "config.firmware") == "bios"
    devices = vs.prop(disks.moid, "config.hardware.device")
    nics = [d for d in devices if isinstance(d, vim.vm.device.VirtualEthernetCard)]
    assert [n.macAddress for n in nics] == [src.mac]
    networks = vs.prop(disks.moid, "network") or []
    names = [vs.client.properties(n, ["name"], "test")["name"] for n in networks]
    assert names == [PORTGROUP]
    # Cleanup: nothing in the bucket, no migration snapshot on the still running source.
    assert seaweed.client().list_objects_v2(Bucket=bucket).get("Contents", []) == []
    conn = kvm.connect()
    try:
        source = conn.lookupByUUIDString(src.uuid)
        assert source.snapshotNum(0) == 0
        assert source.isActive()
    finally:
        conn.close()


@dataclass
class _VsphereTarget:
    """The target VM found in vcsim by name: its id, disk paths and flat extents."""

    moid: str
    paths: list[str]  # "[datastore] folder/name.vmdk", in device order
    flats: list[Path]  # the extents behind them in the datastore folder


def _adopt_vsphere_target(vs: Lab, name: str) -> _VsphereTarget:
    """Find the VM the migration made and hand it (and its files) to the lab's cleanup."""
    listed = vs.client.retrieve_all({vim.VirtualMachine: ["name"]}, "test: find the target")
    found = [o for o in listed if o.props.get("name") == name]
    assert len(found) <= 1
    if not found:
        return _VsphereTarget("", [], [])
    vs.vms.append(found[0].ref)
    devices = vs.prop(found[0].moid, "config.hardware.device") or []
    disks = [d for d in devices if isinstance(d, vim.vm.device.VirtualDisk)]
    paths = [str(getattr(d.backing, "fileName", "")) for d in disks]
    flats = []
    for path in paths:
        descriptor = vs.root / path.split("] ", 1)[1]
        flat = descriptor.with_name(descriptor.name.replace(".vmdk", "-flat.vmdk"))
        vs.paths += [flat, descriptor]
        flats.append(flat)
    return _VsphereTarget(str(found[0].moid), paths, flats)


# -- 2. vSphere -> Proxmox through NFS ------------------------------------------------------------


def test_scenario_2_vsphere_to_proxmox_through_nfs(vs: Lab, pve: PveEnv, tmp_path: Path) -> None:
    first = pattern(3 * MiB, 201) + bytes(13 * MiB) + pattern(MiB, 202) + bytes(7 * MiB)
    second = bytes(2 * MiB) + pattern(2 * MiB, 203) + bytes(12 * MiB)
    disks = [
        (vs.put_disk(vs.name("x2-a"), first), len(first)),
        (vs.put_disk(vs.name("x2-b"), second), len(second)),
    ]
    flats = [vs.root / TEST_FOLDER / f"{vs.name(n)}-flat.vmdk" for n in ("x2-a", "x2-b")]
    want = [digest.content_digest(str(flat), "raw") for flat in flats]
    vm_id = vs.make_vm(vs.name("x2"), disks, power_on=True, firmware="bios")
    nfs = tmp_path / "nfs"
    nfs.mkdir()
    scratch = tmp_path / "pve-scratch"
    scratch.mkdir()
    target = vs.name("from-vcenter")
    requests_before = len(pve.pve.requests)
    manifests = [
        *_vsphere(vs.server),
        *_proxmox(pve, scratch),
        *_move(
            "vcenter",
            vm_id,
            "pve",
            target,
            STORAGE,
            BRIDGE,
            {"type": "nfs", "path": str(nfs)},
        ),
    ]
    try:
        migration = _migrate(tmp_path, manifests)
        _assert_finished(migration, [("vmdk", "qcow2"), ("vmdk", "qcow2")], "ConvertedOnSource")
        assert _content(migration) == want
        # The import volumes on the node's directory storage hold the source's content.
        volumes = [d["importedDiskId"] for d in migration["status"]["disks"]]
        assert all(v.startswith(f"{STORAGE}:import/") and v.endswith(".qcow2") for v in volumes)
        files = [pve.import_dir() / v.split(":import/", 1)[1] for v in volumes]
        assert [digest.content_digest(str(f), "qcow2") for f in files] == want
        # PVE was asked to create the VM importing exactly those volumes ...
        vmid = migration["target"]["status"]["id"]
        posted = [
            parse_qs(bytes(body).decode())
            for method, path, body in pve.pve.requests[requests_before:]
            if method == "POST" and path.endswith(f"/nodes/{NODE}/qemu")
        ]
        assert len(posted) == 1 and posted[0]["name"] == [target]
        imports = sorted(
            value[0].split("import-from=", 1)[1].split(",", 1)[0]
            for value in posted[0].values()
            if "import-from=" in value[0]
        )
        assert imports == sorted(volumes)
        # ... and the VM exists with two disks (copied by the node) of that content.
        made = pve.pve.vm(int(vmid))
        assert made is not None and made.name == target
        drives = {
            key: value
            for key, value in made.config.items()
            if key[:4] in ("scsi", "virt", "sata") and key[-1].isdigit() and ":" in value
        }
        assert len(drives) == 2, made.config
        vm_files = sorted(
            pve.storage_path / "images" / value.split(",", 1)[0].split(":", 1)[1]
            for value in drives.values()
        )
        assert sorted(digest.content_digest(str(f), "qcow2") for f in vm_files) == sorted(want)
        net0 = dict(p.split("=", 1) for p in made.config["net0"].split(","))
        assert {k: v.lower() for k, v in net0.items()} == {
            "vmxnet3": "00:50:56:3f:00:01",  # the source NIC's model and MAC
            "bridge": BRIDGE,
        }, made.config["net0"]
        assert int(made.config["cores"]) * int(made.config.get("sockets", 1)) == 2
        assert int(str(made.config["memory"]).removeprefix("current=")) == 256
        assert made.config.get("bios", "seabios") == "seabios"  # the source boots BIOS
    finally:
        _remove_pve_target(pve, target)
    # Nothing left in the directory storage, the node's or the provider's scratch,
    # and the source's migration snapshot is gone while it keeps running.
    assert [p for p in nfs.rglob("*") if p.is_file()] == []
    assert list(pve.node_tmp.iterdir()) == []
    assert list(scratch.iterdir()) == []
    assert not vs.prop(vm_id, "snapshot")
    assert vs.prop(vm_id, "runtime.powerState") == "poweredOn"


def qemu_img_snapshots(path: Path) -> str:
    """``qemu-img snapshot -l`` of an image (the internal snapshots PVE made)."""
    done = subprocess.run(
        ["qemu-img", "snapshot", "-U", "-l", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout


def _remove_pve_target(pve: PveEnv, name: str) -> None:
    for vm in [v for v in pve.pve.vms if v.name == name]:
        pve.remove_vm(str(vm.vmid))
    if pve.import_dir().exists():
        for path in pve.import_dir().iterdir():
            if name in path.name or path.name.startswith("."):
                path.unlink()


# -- 3. Proxmox -> libvirt through HTTP (WebDAV) -----------------------------------------------


def test_scenario_3_proxmox_to_libvirt_through_webdav(
    kvm: LibvirtEnv, kvm_cleanup: None, pve: PveEnv, nginx: NginxDav, tmp_path: Path
) -> None:
    vm = pve.add_vm(
        f"x3-{secrets.token_hex(3)}",
        {
            "scsi0": ("qcow2", 32 * MiB, pattern(MiB + 4096, 301)),
            "scsi1": ("qcow2", 16 * MiB, pattern(300_000, 302)),
        },
        status="running",
        # The usual PVE NIC: on a VLAN-aware bridge with a tag (net0 of add_vm).
    )
    net0 = pve.pve.vm(int(vm.vmid)).config["net0"]
    assert net0.endswith(f"bridge={BRIDGE},tag=12"), net0
    mac = net0.split(",", 1)[0].split("=", 1)[1].lower()
    want = [digest.content_digest(str(vm.disks[k]), "qcow2") for k in ("scsi0", "scsi1")]
    folder = f"x3-{secrets.token_hex(3)}"
    storage = {
        "type": "http",
        "endpoint": f"{nginx.bearer_url.rstrip('/')}/{folder}",
        "credentialsSecretRef": {"name": "http-creds"},
    }
    scratch = tmp_path / "pve-scratch"
    scratch.mkdir()
    target = kvm.name(f"x3-{secrets.token_hex(2)}")
    manifests = [
        _secret("http-creds", {"token": f"Bearer_{nginx.token}"}),
        *_proxmox(pve, scratch),
        *_libvirt(kvm, kvm.pool2),
        *_move("pve", vm.vmid, "kvm", target, kvm.pool2, kvm.network, storage),
    ]
    try:
        migration = _migrate(tmp_path, manifests)
        # No migration snapshot is left on the source: not in PVE, not in the files.
        source = pve.pve.vm(int(vm.vmid))
        assert source is not None and source.status == "running"
        assert [s for s in source.snapshots if s != "current"] == []
        for path in vm.disks.values():
            assert qemu_img_snapshots(path).strip() == "", path
    finally:
        pve.remove_vm(vm.vmid)
    _assert_finished(migration, [("qcow2", "qcow2"), ("qcow2", "qcow2")], "NoConversionNeeded")
    assert _content(migration) == want
    created = {c["type"]: c for c in migration["status"]["conditions"]}["Created"]
    assert "VLAN tag 12 of source NIC net0 not carried" in created["message"], created
    # The domain exists with two disks in the second pool holding the source's content.
    conn = kvm.connect()
    try:
        dom = conn.lookupByName(target)
        assert dom.UUIDString() == migration["target"]["status"]["id"]
        parsed = domxml.parse_domain(dom.XMLDesc(0))
        assert (parsed.vcpus, parsed.memory_kib, parsed.firmware) == (2, 256 * 1024, "bios")
        disks = [d for d in parsed.disks if d.device == "disk"]
        assert len(disks) == 2
        assert all(d.path and d.path.startswith(str(kvm.pool2_path)) for d in disks)
        arrived = [digest.content_digest(str(d.path), d.format, force_share=True) for d in disks]
        assert arrived == want
        nics = domxml.parse_domain(dom.XMLDesc(0)).nics
        # The user's network is the segment: the source's tag is not put on the NIC
        # (libvirt would refuse a per-NIC VLAN) and the Created condition says so.
        assert [(n.kind, n.source, n.mac, n.vlan) for n in nics] == [
            ("network", kvm.network, mac, 0)
        ]
    finally:
        conn.close()
    # Nothing left on the WebDAV server (the uploads did land in that folder), in the
    # node's scratch or in the provider's.
    root = nginx.path_of("bearer", folder)
    assert root.is_dir()
    assert [p for p in root.rglob("*") if p.is_file()] == []
    assert list(pve.node_tmp.iterdir()) == []
    assert list(scratch.iterdir()) == []


def test_a_wrong_webdav_token_fails_clearly_and_keeps_the_proxmox_source_intact(
    kvm: LibvirtEnv, kvm_cleanup: None, pve: PveEnv, nginx: NginxDav, tmp_path: Path
) -> None:
    """Scenario 3 with a token the WebDAV server refuses: the target provider's storage
    probe is refused during validation, so the migration fails before the source is
    even snapshotted; the source keeps running with its data and nothing is created."""
    vm = pve.add_vm(
        f"x3t-{secrets.token_hex(3)}",
        {"scsi0": ("qcow2", 8 * MiB, pattern(70_000, 311))},
        status="running",
    )
    before = digest.content_digest(str(vm.disks["scsi0"]), "qcow2")
    folder = f"x3t-{secrets.token_hex(3)}"
    storage = {
        "type": "http",
        "endpoint": f"{nginx.bearer_url.rstrip('/')}/{folder}",
        "credentialsSecretRef": {"name": "http-creds"},
    }
    scratch = tmp_path / "pve-scratch"
    scratch.mkdir()
    target = kvm.name(f"x3t-{secrets.token_hex(2)}")
    manifests = [
        _secret("http-creds", {"token": "Bearer_not-the-token"}),
        *_proxmox(pve, scratch),
        *_libvirt(kvm, kvm.pool2),
        *_move("pve", vm.vmid, "kvm", target, kvm.pool2, kvm.network, storage),
    ]
    try:
        proc = run(tmp_path, manifests, timeout=300)
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 1, f"{out}\n{err}"
        source = pve.pve.vm(int(vm.vmid))
        assert source is not None and source.status == "running"
        assert digest.content_digest(str(vm.disks["scsi0"]), "qcow2") == before
        # Refused before anything happened: no snapshot was ever taken.
        assert [s for s in source.snapshots if s != "current"] == []
    finally:
        pve.remove_vm(vm.vmid)
    store = SQLiteStore(tmp_path / "state.db")
    try:
        status = store.get("VMMigration", "default", "move")["status"]
        reasons = [e.reason for e in store.events_for("VMMigration", "default", "move")]
    finally:
        store.close()
    assert status["phase"] == "Failed", status
    validated = {c["type"]: c for c in status["conditions"]}["Validated"]
    assert validated["reason"] == "StorageAuthenticationFailed", validated
    assert "cannot use the intermediate storage: UNAUTHENTICATED" in status["message"], status
    assert "401" in status["message"] and "not-the-token" not in status["message"]
    assert reasons[-1] == "MigrationFailed" and "SnapshotCreated" not in reasons, reasons
    conn = kvm.connect()
    try:
        assert target not in [d.name() for d in conn.listAllDomains(0)]
    finally:
        conn.close()
    assert not nginx.path_of("bearer", folder).exists() or not any(
        p.is_file() for p in nginx.path_of("bearer", folder).rglob("*")
    )
    assert list(pve.node_tmp.iterdir()) == []
    assert list(scratch.iterdir()) == []


def test_a_stopped_proxmox_vm_with_a_raw_disk_moves_without_a_snapshot(
    kvm: LibvirtEnv, kvm_cleanup: None, pve: PveEnv, tmp_path: Path
) -> None:
    """PVE cannot snapshot a raw disk on directory storage. A powered-off source is
    consistent without one: its disk is exported as it is (Snapshotted:
    SourceOffNoSnapshot) and the migration finishes with the same data on libvirt."""
    vm = pve.add_vm(
        f"x3r-{secrets.token_hex(3)}",
        {"scsi0": ("raw", 16 * MiB, pattern(2 * MiB, 303))},
        status="stopped",
    )
    want = [digest.content_digest(str(vm.disks["scsi0"]), "raw")]
    nfs = tmp_path / "nfs"
    nfs.mkdir()
    scratch = tmp_path / "pve-scratch"
    scratch.mkdir()
    target = kvm.name(f"x3r-{secrets.token_hex(2)}")
    storage = {"type": "nfs", "path": str(nfs)}
    manifests = [
        *_proxmox(pve, scratch),
        *_libvirt(kvm, kvm.pool2),
        *_move("pve", vm.vmid, "kvm", target, kvm.pool2, kvm.network, storage),
    ]
    try:
        migration = _migrate(tmp_path, manifests)
        source = pve.pve.vm(int(vm.vmid))
        assert source is not None and source.status == "stopped"  # never started by us
    finally:
        pve.remove_vm(vm.vmid)
    status = migration["status"]
    snapshotted = {c["type"]: c for c in status["conditions"]}["Snapshotted"]
    assert (snapshotted["status"], snapshotted["reason"]) == ("True", "SourceOffNoSnapshot")
    assert not status.get("snapshotId")
    assert _content(migration) == want
    conn = kvm.connect()
    try:
        dom = conn.lookupByName(target)
        disks = [d for d in domxml.parse_domain(dom.XMLDesc(0)).disks if d.device == "disk"]
        arrived = [digest.content_digest(str(d.path), d.format, force_share=True) for d in disks]
        assert arrived == want
    finally:
        conn.close()
