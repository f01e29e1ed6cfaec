"""`virtrigaud inventory`: browse a real libvirt provider started from the manifests."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

from manager.api import VirtualMachine
from tests.manager.onemachine.test_run import provider_manifest
from tests.providers.libvirt.helpers import Lab, SetupDisk, SetupNic, domain_xml
from tests.servers.libvirtd import LibvirtEnv
from tests.support import venv_tool

MiB = 1 << 20


def inventory(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [venv_tool("virtrigaud"), "inventory", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_inventory_lists_vms_with_disks_and_nics_and_prints_adoption_yaml(
    env: LibvirtEnv, lv: Lab, tmp_path: Path
) -> None:
    vda = lv.volume(env.name("inv-vda.qcow2"), 24 * MiB)
    vdb = lv.volume(env.name("inv-vdb.img"), 8 * MiB, fmt="raw")
    name = env.name("inv-web")
    dom = lv.define(
        domain_xml(
            name,
            [SetupDisk(vda, "qcow2", "vda"), SetupDisk(vdb, "raw", "vdb")],
            [
                SetupNic("network", env.network, "52:54:00:aa:00:01"),
                SetupNic("bridge", env.bridge, "52:54:00:aa:00:02"),
            ],
            memory_mib=96,
        )
    )
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    (manifests / "provider.yaml").write_text(yaml.safe_dump(provider_manifest(env)))

    listed = inventory(tmp_path, "lv", "-f", str(manifests))
    assert listed.returncode == 0, listed.stderr
    block = next(b for b in listed.stdout.split("\n\n") if name in b)
    lines = block.splitlines()
    assert lines[1].split() == [name, dom.UUIDString(), "Off", "2", "96Mi"]
    disks = {line.split()[0]: line.split() for line in lines if line.strip().startswith("vd")}
    assert disks["vda"][1:4] == ["24.0MiB", disks["vda"][2], "qcow2"]
    assert disks["vdb"][1] == "8.0MiB" and disks["vdb"][3] == "raw"
    assert vda in disks["vda"] and vdb in disks["vdb"]
    nics = [line.split() for line in lines if "52:54:00:aa:00:0" in line]
    assert [n[1:3] for n in nics] == [
        [env.network, "52:54:00:aa:00:01"],
        [f"bridge:{env.bridge}", "52:54:00:aa:00:02"],
    ]

    as_yaml = inventory(tmp_path, "lv", "-f", str(manifests), "-o", "yaml")
    assert as_yaml.returncode == 0, as_yaml.stderr
    documents = [d for d in yaml.safe_load_all(as_yaml.stdout) if d]
    mine = next(d for d in documents if d["spec"]["vmId"] == dom.UUIDString())
    vm = VirtualMachine.from_dict(mine)  # a valid manifest
    assert vm.metadata.name == name
    assert vm.spec.adopted and vm.spec.provider_ref.name == "lv"
    assert mine["spec"]["resources"] == {"cpu": 2, "memoryMiB": 96}
    assert [(n.network, n.bridge, n.mac) for n in vm.spec.networks] == [
        (env.network, None, "52:54:00:aa:00:01"),
        (None, env.bridge, "52:54:00:aa:00:02"),
    ]
    assert f"# {name}: Off; disks: vda 24.0MiB qcow2, vdb 8.0MiB raw" in as_yaml.stdout


def test_inventory_of_an_unknown_provider_is_an_error(env: LibvirtEnv, tmp_path: Path) -> None:
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    (manifests / "provider.yaml").write_text(yaml.safe_dump(provider_manifest(env)))
    done = inventory(tmp_path, "nope", "-f", str(manifests))
    assert done.returncode == 2
    assert "Provider default/nope not found" in done.stderr
