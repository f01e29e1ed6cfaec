"""Run the memory provider through the real runtime in its own process.

``python -m tests.fakes.serve_memory --listen 127.0.0.1:PORT --root DIR`` serves
exactly as ``virtrigaud provider`` does (same ``run``: signals, graceful shutdown,
JSON logs), with the test-only driver. Used by process-level tests.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from providers.runtime import server
from tests.fakes.memory_provider import MemoryProvider
from virtrigaud import logging as vlog

MiB = 1 << 20


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--listen", required=True)
    parser.add_argument("--root", required=True)
    parser.add_argument("--chunk-delay", type=float, default=0.0)
    parser.add_argument("--grace", type=float, default=30.0)
    parser.add_argument("--disk-mib", type=int, default=8)
    args = parser.parse_args()
    vlog.configure("debug")
    driver = MemoryProvider(root=Path(args.root), chunk_delay=args.chunk_delay)
    driver.add_vm("source-vm", {"vda": b"\x07" * (args.disk_mib * MiB)})
    server.run(driver, args.listen, grace=args.grace)


if __name__ == "__main__":
    main()
