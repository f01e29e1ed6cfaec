"""The demo behind `make demo`: a running two-disk VMware vSphere VM migrated to
libvirt/KVM through S3, with everything real and local.

1. starts the vSphere API simulator (vcsim, built once from Debian's govmomi source
   into .cache/vcsim), libvirtd + QEMU (TCG) and SeaweedFS (S3) on loopback, with a
   throwaway libvirt storage pool pair and an isolated network;
2. puts two disks holding data on the vSphere datastore and creates and starts a VM
   with them (the source);
3. fills in `examples/demo/vsphere-to-libvirt.yaml` (Secrets, Providers, the source
   VirtualMachine adopted by id, the VMMigration) and runs `virtrigaud run -f DIR`
   (one-machine mode: embedded store, provider processes, live progress per disk,
   a closing summary);
4. prints `virtrigaud describe vmmigration`, then proves the result: the target VM
   exists on libvirt, each of its disks holds exactly the source disk's data (content
   digest of the guest-visible bytes), nothing is left in the bucket, and the VM
   powers on;
5. removes everything it created (VMs, disks, pools, network, servers).

Run it again at will: nothing is reinstalled and no state is kept between runs.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import string
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from manager.store.sqlite import SQLiteStore  # noqa: E402
from providers.common import digest  # noqa: E402
from providers.libvirt import domxml  # noqa: E402
from tests.providers.vsphere.helpers import lab  # noqa: E402
from tests.servers.libvirtd import create_env, start_libvirtd  # noqa: E402
from tests.servers.seaweedfs import start_seaweedfs  # noqa: E402
from tests.servers.vcsim import start_vcsim  # noqa: E402

MiB = 1 << 20
TEMPLATE = REPO / "examples" / "demo" / "vsphere-to-libvirt.yaml"
MIGRATION = "web-01-to-kvm"


def say(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def disk_bytes(size: int, runs: list[tuple[int, int]]) -> bytes:
    """``size`` bytes: random data in each (offset, length) run, zeros elsewhere."""
    data = bytearray(size)
    for offset, length in runs:
        data[offset : offset + length] = os.urandom(length)
    return bytes(data)


def render(values: dict[str, str]) -> str:
    text = TEMPLATE.read_text()
    return string.Template(text).substitute(values)


def virtrigaud(*args: str) -> int:
    env = {**os.environ, "VIRTRIGAUD_STORAGE_ALLOWED_HOSTS": "127.0.0.1", "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "virtrigaud.cli", *args], cwd=REPO, env=env, check=False
    ).returncode


def verify(conn: Any, store_path: Path, target_name: str, want: list[str]) -> None:
    with SQLiteStore(store_path) as store:
        target = store.get("VirtualMachine", "default", target_name)
    dom = conn.lookupByUUIDString(target["status"]["id"])
    disks = [d for d in domxml.parse_domain(dom.XMLDesc(0)).disks if d.device == "disk"]
    if len(disks) != len(want):
        raise SystemExit(f"demo: the target VM has {len(disks)} disks, expected {len(want)}")
    for index, (disk, expected) in enumerate(zip(disks, want, strict=True)):
        got = digest.content_digest(disk.path, disk.format, force_share=True)
        verdict = "==" if got == expected else "!="
        print(f"  disk {index}: {disk.path} ({disk.format})")
        print(f"          content sha256 {got[:24]}... {verdict} source {expected[:24]}...")
        if got != expected:
            raise SystemExit("demo: a target disk differs from the source")
    dom.create()
    print(f"  target VM {dom.name()} powered on: running={bool(dom.isActive())}")
    if not dom.isActive():
        raise SystemExit("demo: the target VM did not start")


def _quietly(what: str, step: Callable[[], object]) -> None:
    """Run a cleanup step; report a failure and go on, so no server outlives the demo."""
    try:
        step()
    except Exception as exc:
        print(f"  cleanup: {what} failed: {exc}")


def main() -> int:
    started = time.monotonic()
    with contextlib.ExitStack() as stack:  # undone in reverse, every step, even on errors
        work = Path(tempfile.mkdtemp(prefix="virtrigaud-demo-"))
        stack.callback(shutil.rmtree, work, ignore_errors=True)
        stack.callback(say, "cleaning up")
        say("starting vcsim (vSphere), libvirtd + QEMU and SeaweedFS (S3) on loopback")
        vcsim = start_vcsim(work)  # builds .cache/vcsim the first time (~30 s)
        stack.callback(_quietly, "stopping vcsim", vcsim.stop)
        daemon = start_libvirtd()
        stack.callback(_quietly, "stopping libvirtd", daemon.stop)
        env = create_env(daemon.uri, daemon)
        stack.callback(_quietly, "removing the libvirt pools and network", env.destroy)
        s3 = start_seaweedfs(work / "s3")
        stack.callback(_quietly, "stopping SeaweedFS", s3.close)
        conn = env.connect()
        stack.callback(_quietly, "closing the libvirt connection", conn.close)
        vs = stack.enter_context(lab(vcsim))
        code = migrate(work, vcsim, env, s3, conn, vs)
        if code == 0:
            say(f"demo finished in {time.monotonic() - started:.0f}s: migrated and verified")
        return code
    return 1  # pragma: no cover - the with block always returns


def migrate(work: Path, vcsim: Any, env: Any, s3: Any, conn: Any, vs: Any) -> int:  # noqa: PLR0917
    bucket = s3.create_bucket(f"demo-{secrets.token_hex(3)}")
    say("creating the source VM on vSphere: two disks with data, powered on")
    contents = [
        disk_bytes(192 * MiB, [(0, 24 * MiB), (96 * MiB, 16 * MiB), (176 * MiB, 8 * MiB)]),
        disk_bytes(64 * MiB, [(0, 8 * MiB), (40 * MiB, 8 * MiB)]),
    ]
    disks = [
        (vs.put_disk(vs.name(f"web-01-disk{i}"), data), len(data))
        for i, data in enumerate(contents)
    ]
    vm_id = vs.make_vm(vs.name("web-01"), disks, power_on=True, firmware="bios")
    want = []
    for (path, _), data in zip(disks, contents, strict=True):
        flat = vs.root / path.split("] ", 1)[1].replace(".vmdk", "-flat.vmdk")
        want.append(digest.content_digest(str(flat), "raw"))
        print(f"  {path}: {len(data) // MiB} MiB, content sha256 {want[-1][:24]}...")
    print(f"  source VM {vs.name('web-01')} (id {vm_id}) is running on {vcsim.url}")

    target_name = env.name("web-01")
    ca = "".join(f"    {line}\n" for line in Path(vcsim.ca_file).read_text().splitlines())
    values = {
        "VCENTER_USER": vcsim.username,
        "VCENTER_PASSWORD": vcsim.password,
        "VCENTER_CA": ca.rstrip("\n"),
        "VCENTER_URL": vcsim.url,
        "S3_ACCESS_KEY": s3.access_key,
        "S3_SECRET_KEY": s3.secret_key,
        "S3_BUCKET": bucket,
        "S3_ENDPOINT": s3.endpoint,
        "LIBVIRT_URI": env.uri,
        "LIBVIRT_POOL": env.pool2,
        "LIBVIRT_NETWORK": env.network,
        "SOURCE_VM_ID": vm_id,
        "TARGET_NAME": target_name,
    }
    folder = work / "manifests"
    folder.mkdir()
    (folder / TEMPLATE.name).write_text(render(values))
    print(f"  manifests: {folder / TEMPLATE.name} (from {TEMPLATE.relative_to(REPO)})")

    say(f"virtrigaud run -f {folder}")
    store = work / "state.db"
    code = virtrigaud("run", "-f", str(folder), "--store", str(store), "--timeout", "600")
    say(f"virtrigaud describe vmmigration {MIGRATION}")
    virtrigaud("describe", "vmmigration", MIGRATION, "--store", str(store))
    if code != 0:
        return code
    say("proving the result on libvirt")
    verify(conn, store, target_name, want)
    left = s3.client().list_objects_v2(Bucket=bucket).get("KeyCount", 0)
    print(f"  objects left in the S3 bucket after cleanup: {left}")
    snapshots = vs.prop(vm_id, "snapshot")
    print(f"  migration snapshots left on the source: {0 if not snapshots else 'some'}")
    if left or snapshots:
        raise SystemExit("demo: cleanup left something behind")
    return 0


if __name__ == "__main__":
    sys.exit(main())
