"""The demo behind `make demo`: a running two-disk libvirt VM migrated to another
libvirt storage pool through S3, with everything real and local.

1. starts libvirtd + QEMU (TCG) and SeaweedFS (S3) on loopback, with a throwaway
   storage pool pair and an isolated network;
2. creates a source VM with two disks holding data and starts it;
3. writes Provider / Secret / VirtualMachine / VMMigration manifests and runs
   `virtrigaud run -f DIR` (one-machine mode: embedded store, providers started as
   local processes, live progress);
4. prints `virtrigaud describe vmmigration`, then proves the result: the target VM
   exists, each of its disks equals the source disk (qemu-img compare and content
   digest), and it powers on;
5. removes everything it created (VMs, volumes, pools, network, servers).

The cross-hypervisor demo (vSphere -> libvirt) of issue #8 needs the vSphere provider,
which does not exist yet.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from providers.common import digest, qemu_img  # noqa: E402
from providers.libvirt import domxml, volxml  # noqa: E402
from tests.servers.libvirtd import create_env, start_libvirtd  # noqa: E402
from tests.servers.seaweedfs import start_seaweedfs  # noqa: E402

MiB = 1 << 20
API = "infra.virtrigaud.io/v1beta1"


def say(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def make_source(conn: Any, env: Any) -> tuple[str, list[tuple[str, str]]]:
    pool = conn.storagePoolLookupByName(env.pool)
    disks = []
    for name, fmt, size in (("root.qcow2", "qcow2", 256 * MiB), ("data.img", "raw", 128 * MiB)):
        path = str(pool.createXML(volxml.build_volume(env.name(name), size, fmt), 0).path())
        for i, offset in enumerate(range(0, size, size // 4)):
            subprocess.run(
                ["qemu-io", "-f", fmt, "-c", f"write -P {0x40 + i} {offset} {16 * MiB}", path],
                check=True,
                capture_output=True,
            )
        disks.append((path, fmt))
    plan = domxml.DomainPlan(
        name=env.name("web-01"),
        vcpus=1,
        memory_mib=64,
        virt_type="qemu",
        disks=[
            domxml.DiskPlan(disks[0][0], "qcow2", "virtio", "vda", boot_order=1),
            domxml.DiskPlan(disks[1][0], "raw", "virtio", "vdb"),
        ],
        nics=[domxml.NicPlan("network", env.network, "52:54:00:de:00:01")],
    )
    dom = conn.defineXML(domxml.build_domain(plan))
    dom.create()
    return dom.UUIDString(), disks


def manifests(env: Any, s3: Any, bucket: str, vm_uuid: str) -> list[dict[str, Any]]:
    def provider(name: str, pool: str) -> dict[str, Any]:
        return {
            "apiVersion": API,
            "kind": "Provider",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"type": "libvirt", "endpoint": env.uri, "defaults": {"storagePool": pool}},
        }

    return [
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "s3-credentials", "namespace": "default"},
            "stringData": {"accessKey": s3.access_key, "secretKey": s3.secret_key},
        },
        provider("kvm-old", env.pool),
        provider("kvm-new", env.pool2),
        {
            "apiVersion": API,
            "kind": "VirtualMachine",
            "metadata": {"name": "web-01", "namespace": "default"},
            "spec": {"providerRef": {"name": "kvm-old"}, "vmId": vm_uuid},
        },
        {
            "apiVersion": API,
            "kind": "VMMigration",
            "metadata": {"name": "move-web-01", "namespace": "default"},
            "spec": {
                "sourceName": "web-01",
                "sourceNamespace": "default",
                "targetProviderRef": {"name": "kvm-new", "namespace": "default"},
                "targetName": env.name("web-01-new"),
                "targetStorageHint": env.pool2,
                "targetNetworkHints": [{"name": "eth0", "network": env.network}],
                "storage": {
                    "type": "s3",
                    "bucket": bucket,
                    "region": "us-east-1",
                    "endpoint": s3.endpoint,
                    "credentialsSecretRef": {"name": "s3-credentials", "namespace": "default"},
                },
            },
        },
    ]


def virtrigaud(*args: str) -> int:
    env = {**os.environ, "VIRTRIGAUD_STORAGE_ALLOWED_HOSTS": "127.0.0.1", "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "virtrigaud.cli", *args], cwd=REPO, env=env, check=False
    ).returncode


def verify(env: Any, conn: Any, store_path: Path, source_disks: list[tuple[str, str]]) -> None:
    from manager.store.sqlite import SQLiteStore

    with SQLiteStore(store_path) as store:
        target = store.get("VirtualMachine", "default", env.name("web-01-new"))
    dom = conn.lookupByUUIDString(target["status"]["id"])
    disks = [d for d in domxml.parse_domain(dom.XMLDesc(0)).disks if d.device == "disk"]
    for (src, src_fmt), disk in zip(source_disks, disks, strict=True):
        same = qemu_img.compare(
            src, disk.path, a_format=src_fmt, b_format=disk.format, force_share=True
        )
        want = digest.content_digest(src, src_fmt, force_share=True)
        got = digest.content_digest(disk.path, disk.format, force_share=True)
        print(
            f"  {Path(src).name:>24} -> {disk.path}  identical={same}  "
            f"content sha256 {got[:16]}... {'==' if got == want else '!='} source"
        )
        if not same or got != want:
            raise SystemExit("demo: the target disk differs from the source")
    dom.create()
    print(f"  target VM {dom.name()} powered on: running={bool(dom.isActive())}")
    if not dom.isActive():
        raise SystemExit("demo: the target VM did not start")


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="virtrigaud-demo-"))
    say("starting libvirtd + QEMU and SeaweedFS (S3) on loopback")
    daemon = start_libvirtd()
    env = create_env(daemon.uri, daemon)
    s3 = start_seaweedfs(work / "s3")
    conn = env.connect()
    try:
        bucket = s3.create_bucket(f"demo-{secrets.token_hex(3)}")
        say("creating the source VM (two disks with data) and starting it")
        vm_uuid, disks = make_source(conn, env)
        folder = work / "manifests"
        folder.mkdir()
        (folder / "demo.yaml").write_text(
            yaml.safe_dump_all(manifests(env, s3, bucket, vm_uuid), sort_keys=False)
        )
        print(f"  manifests: {folder / 'demo.yaml'}")
        say("virtrigaud run -f " + str(folder))
        store = work / "state.db"
        code = virtrigaud("run", "-f", str(folder), "--store", str(store), "--timeout", "900")
        say("virtrigaud describe vmmigration move-web-01")
        virtrigaud("describe", "vmmigration", "move-web-01", "--store", str(store))
        if code != 0:
            return code
        say("proving the result")
        verify(env, conn, store, disks)
        left = s3.client().list_objects_v2(Bucket=bucket).get("KeyCount", 0)
        print(f"  objects left in the S3 bucket after cleanup: {left}")
        say("demo finished: the VM was migrated and verified")
        return 0
    finally:
        say("cleaning up")
        conn.close()
        env.destroy()
        daemon.stop()
        s3.close()


if __name__ == "__main__":
    sys.exit(main())
