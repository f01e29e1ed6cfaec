"""Benchmark: our export/import pipeline vs the naive tool chain, against SeaweedFS S3.

    .venv/bin/python bench/transfer.py [--virtual-gib 2] [--data-percent 50] [--reps 3]
    .venv/bin/python bench/transfer.py --quick      # 1 GiB, 2 reps: does it still run?

Builds a qcow2 source of ``--virtual-gib`` GiB virtual size with ``--data-percent`` %
of it allocated (incompressible data in alternating 1 MiB runs), starts a local
SeaweedFS, and measures in the same run, alternating the variants each repetition:

  export  ours : providers.common.pipeline.export_image -> storage S3 writer
          naive: `qemu-img convert` to a temp file, then boto3 `upload_file`
  import  ours : storage S3 reader -> providers.common.pipeline.import_image
          naive: boto3 `download_file` to a temp file, then `qemu-img convert`

Each measurement runs in its own subprocess so that peak RSS is its own: "py RSS" is
the Python process (ru_maxrss of self; a qemu-img child's own ru_maxrss is not shown:
Linux counts the parent's pages it was forked with, so it would only repeat py RSS).
"cpu" is the CPU time (user + system) of the measured process and its qemu-img
children, "S3 cpu" that of the SeaweedFS process during the measurement: on a small
machine the client and the server share the cores, so CPU spent on one slows the
other. "wire" is the object payload sent to / read from S3 (HTTP framing excluded);
"scratch" is the disk space used for temporary files (allocated blocks for the naive
temp file, the pipeline's peak scratch reservation for ours). Medians of ``--reps``
runs; the machine's CPU count, tool versions and load average are printed with the
table, then the median wall time of every stage (as the pipeline announces them through
``on_stage``; "setup" is what comes before the first one) and every run's own ratio, so
the spread is visible: on a shared machine one run proves little.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MiB = 1 << 20
BUCKET = "bench"


def _rss() -> tuple[int, int]:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    return own, child


def _backend(cfg: dict[str, Any]) -> Any:
    from storage import open_backend

    return open_backend(
        "s3",
        {"type": "s3", "bucket": BUCKET, "endpoint": cfg["endpoint"]},
        cfg["credentials"],
        allowed_hosts=["127.0.0.1"],
    )


def _boto(cfg: dict[str, Any]) -> Any:
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=cfg["endpoint"],
        aws_access_key_id=cfg["credentials"]["accessKey"],
        aws_secret_access_key=cfg["credentials"]["secretKey"],
        region_name="us-east-1",
    )


def _allocated(path: Path) -> int:
    return path.stat().st_blocks * 512


Stage = Callable[[str], None]


def _ours_export(cfg: dict[str, Any], key: str, work: Path, stage: Stage) -> tuple[int, int]:
    from providers.common import pipeline

    with _backend(cfg).open_writer(key) as writer:
        out = pipeline.export_image(
            cfg["source"], "qcow2", cfg["format"], writer, scratch_dir=work, on_stage=stage
        )
    return out.size, out.scratch_reserved


def _naive_export(cfg: dict[str, Any], key: str, work: Path, stage: Stage) -> tuple[int, int]:
    tmp = work / f"naive.{cfg['format']}"
    stage("converting")
    subprocess.run(
        ["qemu-img", "convert", "-O", cfg["format"], cfg["source"], str(tmp)], check=True
    )
    scratch = _allocated(tmp)
    stage("uploading")
    _boto(cfg).upload_file(str(tmp), BUCKET, key)
    wire = tmp.stat().st_size
    tmp.unlink()
    return wire, scratch


def _ours_import(cfg: dict[str, Any], key: str, work: Path, stage: Stage) -> tuple[int, int]:
    from providers.common import pipeline

    backend = _backend(cfg)
    info = backend.stat(key)
    dest = work / "ours-imported.qcow2"
    reader = backend.open_reader(key, expected_sha256=cfg["sha256"], expected_size=info.size)
    out = pipeline.import_image(
        reader,
        cfg["format"],
        "qcow2",
        dest,
        expected_sha256=cfg["sha256"],
        size=info.size,
        scratch_dir=work,
        on_stage=stage,
        # As the providers call it (transfer.import_from_storage): the image is copied
        # into the hypervisor's storage next, so it is not flushed -- nor is the naive
        # chain's (qemu-img convert writes with cache=unsafe).
        durable=False,
    )
    dest.unlink()
    return info.size, out.scratch_reserved


def _naive_import(cfg: dict[str, Any], key: str, work: Path, stage: Stage) -> tuple[int, int]:
    tmp = work / f"naive-download.{cfg['format']}"
    dest = work / "naive-imported.qcow2"
    stage("downloading")
    _boto(cfg).download_file(BUCKET, key, str(tmp))
    wire = tmp.stat().st_size
    scratch = _allocated(tmp)
    stage("converting")
    subprocess.run(["qemu-img", "convert", "-O", "qcow2", str(tmp), str(dest)], check=True)
    tmp.unlink()
    dest.unlink()
    return wire, scratch


_VARIANTS = {
    "ours-export": _ours_export,
    "naive-export": _naive_export,
    "ours-import": _ours_import,
    "naive-import": _naive_import,
}


def run_variant(cfg: dict[str, Any]) -> dict[str, Any]:
    """One measurement (runs inside its own subprocess)."""
    variant = _VARIANTS.get(cfg["variant"])
    if variant is None:
        raise SystemExit(f"unknown variant {cfg['variant']}")
    stages: list[tuple[str, float]] = []
    cpu_before = os.times()
    started = time.monotonic()
    wire, scratch = variant(
        cfg,
        f"{cfg['key']}.{cfg['format']}",
        Path(cfg["work"]),
        lambda name: stages.append((name, time.monotonic())),
    )
    ended = time.monotonic()
    cpu_after = os.times()
    cpu = sum(cpu_after[:4]) - sum(cpu_before[:4])  # user + system, self and children
    own, _child = _rss()
    result = {"wall": ended - started, "wire": wire, "scratch": scratch, "py_rss": own, "cpu": cpu}
    # Wall time per stage ("setup": before the first stage was announced).
    marks = [("setup", started), *stages, ("end", ended)]
    for (name, at), (_next, until) in itertools.pairwise(marks):
        result[f"stage:{name}"] = result.get(f"stage:{name}", 0.0) + until - at
    return result


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a running process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _measure(cfg: dict[str, Any], server_pid: int) -> dict[str, Any]:
    server_before = _cpu_seconds(server_pid)
    done = subprocess.run(
        [sys.executable, __file__, "--variant-json", json.dumps(cfg)],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
    )
    if done.returncode != 0:
        raise SystemExit(f"{cfg['variant']} failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    result["server_cpu"] = _cpu_seconds(server_pid) - server_before
    return result


def _make_source(path: Path, virtual_gib: int, data_percent: int) -> int:
    raw = path.with_suffix(".raw")
    size = virtual_gib << 30
    block = MiB
    blocks = size // block
    period = max(1, round(100 / data_percent)) if data_percent else 0
    written = 0
    with raw.open("wb") as f:
        f.truncate(size)
        if period:
            for i in range(0, blocks, period):
                f.seek(i * block)
                f.write(os.urandom(block))
                written += block
    subprocess.run(["qemu-img", "convert", "-O", "qcow2", str(raw), str(path)], check=True)
    raw.unlink()
    return written


def _rate(run: dict[str, float]) -> float:
    return run["wire"] / MiB / run["wall"]


def _fmt_row(name: str, ours: dict[str, float], naive: dict[str, float]) -> str:
    rate = _rate
    return (
        f"{name:<7} | {ours['wall']:7.2f}s {rate(ours):8.1f} MiB/s | "
        f"{naive['wall']:7.2f}s {rate(naive):8.1f} MiB/s | {naive['wall'] / ours['wall']:5.2f}x | "
        f"py RSS {ours['py_rss'] / MiB:4.0f}/{naive['py_rss'] / MiB:4.0f} MiB | "
        f"cpu {ours['cpu']:5.2f}/{naive['cpu']:5.2f}s | "
        f"S3 cpu {ours['server_cpu']:5.2f}/{naive['server_cpu']:5.2f}s | "
        f"scratch {ours['scratch'] / MiB:7.0f}/{naive['scratch'] / MiB:7.0f} MiB | "
        f"wire {ours['wire'] / MiB:7.0f}/{naive['wire'] / MiB:7.0f} MiB"
    )


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _environment() -> str:
    """Versions and load: numbers from a busy or different machine are not comparable."""
    qemu = subprocess.run(["qemu-img", "--version"], capture_output=True, text=True, check=False)
    import boto3

    return (
        f"{qemu.stdout.splitlines()[0] if qemu.stdout else 'qemu-img ?'}, "
        f"boto3 {boto3.__version__}, Python {sys.version.split()[0]}, load average {_load()}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--virtual-gib", type=int, default=2)
    parser.add_argument("--data-percent", type=int, default=50)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--format", default="vmdk", help="object format (export target)")
    parser.add_argument(
        "--quick", action="store_true", help="1 GiB virtual, 2 reps: a smoke run, not a result"
    )
    parser.add_argument("--variant-json", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.virtual_gib, args.reps = 1, 2
    if args.variant_json:
        print(json.dumps(run_variant(json.loads(args.variant_json))))
        return

    from tests.servers.seaweedfs import start_seaweedfs

    with tempfile.TemporaryDirectory(prefix="vr-bench-") as tmp, start_seaweedfs() as s3:
        work = Path(tmp)
        s3.create_bucket(BUCKET)
        source = work / "source.qcow2"
        data = _make_source(source, args.virtual_gib, args.data_percent)
        print(
            f"source: {args.virtual_gib} GiB virtual qcow2, {data / MiB:.0f} MiB allocated; "
            f"object format {args.format}; {args.reps} reps; medians; ours/naive; "
            f"{os.cpu_count()} CPUs, SeaweedFS on loopback; {_environment()}"
        )
        base = {
            "endpoint": s3.endpoint,
            "credentials": s3.credentials(),
            "format": args.format,
            "source": str(source),
            "work": str(work),
        }
        assert s3.process is not None
        server = s3.process.pid
        runs: dict[str, list[dict[str, Any]]] = {}
        for rep in range(args.reps):
            order = ["ours", "naive"] if rep % 2 == 0 else ["naive", "ours"]
            for who in order:
                key = f"{who}-{rep}"
                exp = _measure({**base, "variant": f"{who}-export", "key": key}, server)
                runs.setdefault(f"{who}-export", []).append(exp)
                # Our writer stores the transport digest with the object; the naive
                # import does not verify anything (that is part of being naive).
                sha = _backend(base).stat(f"{key}.{args.format}").sha256 or ""
                imp = _measure(
                    {**base, "variant": f"{who}-import", "key": key, "sha256": sha}, server
                )
                runs.setdefault(f"{who}-import", []).append(imp)
        med = {
            name: {k: statistics.median(r.get(k, 0.0) for r in rows) for k in rows[0]}
            for name, rows in runs.items()
        }
        print("dir     |          ours           |          naive          | speed | ...")
        print(_fmt_row("export", med["ours-export"], med["naive-export"]))
        print(_fmt_row("import", med["ours-import"], med["naive-import"]))
        print(f"load average at the end: {_load()}")
        print(f"wire/allocated (ours export): {med['ours-export']['wire'] / data:.3f}")
        print("median wall per stage (s):")
        for name, row in med.items():
            parts = [f"{k[6:]} {v:.2f}" for k, v in row.items() if k.startswith("stage:")]
            print(f"  {name:<13} " + ", ".join(parts))
        print("every run (wall s, ours/naive ratio of the pair):")
        for direction in ("export", "import"):
            ours_w = [r["wall"] for r in runs[f"ours-{direction}"]]
            naive_w = [r["wall"] for r in runs[f"naive-{direction}"]]
            pairs = ", ".join(
                f"{o:.2f}/{n:.2f}={n / o:.2f}x" for o, n in zip(ours_w, naive_w, strict=True)
            )
            print(f"  {direction}: {pairs}")


if __name__ == "__main__":
    main()
