"""Loopback port helpers shared by the server modules."""

from __future__ import annotations

import random
import socket
import subprocess
import time

LOOPBACK = "127.0.0.1"
GRPC_OFFSET = 10_000  # SeaweedFS derives gRPC ports as port + 10000


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A port the kernel reports free right now (bind to 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def free_ports(count: int, *, with_offset: int = 0, exclude: set[int] | None = None) -> list[int]:
    """``count`` distinct free ports; with ``with_offset``, port + offset is free too."""
    chosen: list[int] = []
    taken = set(exclude or ())
    rng = random.Random()
    for _ in range(10_000):
        if len(chosen) == count:
            return chosen
        port = rng.randint(20_000, 65_535 - max(with_offset, 1))
        pair = {port, port + with_offset} if with_offset else {port}
        if pair & taken:
            continue
        if all(port_is_free(p) for p in pair):
            chosen.append(port)
            taken |= pair
    raise RuntimeError("no free loopback ports found")


def wait_for_port(port: int, process: subprocess.Popen[bytes], timeout: float) -> None:
    """Wait until something accepts on ``port``; fail early if ``process`` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode} before listening")
        try:
            with socket.create_connection((LOOPBACK, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {LOOPBACK}:{port} after {timeout}s")


def terminate(
    process: subprocess.Popen[bytes], timeout: float = 20.0, *, kill: bool = False
) -> None:
    """SIGTERM, wait, SIGKILL if needed (only this process); ``kill``: SIGKILL at once."""
    if process.poll() is not None:
        return
    if kill:
        process.kill()
        process.wait(timeout=timeout)
        return
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)
