"""The few file operations the provider performs on the node, as quoted commands.

Only standard tools a PVE node has (coreutils, qemu-img) are used, and every path is
passed as one quoted argument after ``--`` where the tool accepts it.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from providers.proxmox import node as nodeaccess
from providers.proxmox.node import NodeAccess
from virtrigaud import errors


def make_temp_dir(node: NodeAccess, parent: str, prefix: str) -> str:
    """A new private directory under ``parent`` on the node."""
    out = nodeaccess.run(node, ["mktemp", "-d", "-p", parent, f"{prefix}XXXXXXXX"])
    path = out.strip()
    if not path.startswith(parent.rstrip("/") + "/"):
        raise errors.InternalError(f"mktemp on the node returned an unexpected path {path!r}")
    return path


def remove(node: NodeAccess, *paths: str, recursive: bool = False) -> None:
    """Delete paths on the node; missing ones are fine."""
    if paths:
        nodeaccess.run(node, ["rm", "-rf" if recursive else "-f", "--", *paths])


def exists(node: NodeAccess, path: str) -> bool:
    out = nodeaccess.run(node, ["sh", "-c", 'test -e "$1" && echo yes || echo no', "sh", path])
    return out.strip() == "yes"


def file_size(node: NodeAccess, path: str) -> int:
    return int(nodeaccess.run(node, ["stat", "-c", "%s", "--", path]).strip())


def sha256(node: NodeAccess, path: str, cancel: threading.Event | None = None) -> str:
    out = nodeaccess.run(node, ["sha256sum", "--", path], cancel=cancel)
    return out.split()[0] if out.split() else ""


def mkdirs(node: NodeAccess, path: str) -> None:
    nodeaccess.run(node, ["mkdir", "-p", "--", path])


def link_no_clobber(node: NodeAccess, source: str, target: str) -> None:
    """Publish ``source`` as ``target`` unless ``target`` exists (hard link: atomic)."""
    try:
        nodeaccess.run(node, ["ln", "-T", "--", source, target])
    except nodeaccess.CommandFailed as exc:
        if "exists" in exc.stderr:
            raise errors.AlreadyExists(f"{target} already exists on the node") from None
        raise


def write_text(node: NodeAccess, path: str, text: str) -> None:
    nodeaccess.write_stream(node, ["sh", "-c", 'cat > "$1"', "sh", path], [text.encode()])


def read_text(node: NodeAccess, path: str) -> str | None:
    try:
        return nodeaccess.run(node, ["cat", "--", path])
    except nodeaccess.CommandFailed:
        return None


def image_info(node: NodeAccess, path: str, fmt: str | None = None) -> dict[str, Any]:
    """``qemu-img info`` of an image on the node (``-U``: the VM may hold it open)."""
    argv = ["qemu-img", "info", "-U", "--output=json"]
    if fmt:
        argv += ["-f", fmt]
    data = json.loads(nodeaccess.run(node, [*argv, path]))
    if not isinstance(data, dict):
        raise errors.InternalError("qemu-img info on the node returned no object")
    return data


_PERCENT = re.compile(rb"\((\d+(?:\.\d+)?)/100%\)")


def convert(
    node: NodeAccess,
    source: str,
    target: str,
    *,
    src_format: str,
    dst_format: str,
    snapshot: str = "",
    force_share: bool = True,
    cancel: threading.Event | None = None,
    progress: Callable[[float], None] | None = None,
) -> None:
    """``qemu-img convert`` on the node (the source may be read at an internal
    snapshot); ``progress`` gets the fraction done as qemu-img's ``-p`` reports it."""
    argv: list[str] = ["qemu-img", "convert", "-p"]
    if force_share:
        argv.append("-U")
    argv += ["-f", src_format, "-O", dst_format]
    if snapshot:
        argv += ["-l", f"snapshot.name={snapshot}"]
    argv += [source, target]
    tail = b""
    with nodeaccess.read_stream(node, argv, cancel) as chunks:
        for chunk in chunks:
            tail = (tail + chunk)[-256:]
            found = _PERCENT.findall(tail)
            if found and progress is not None:
                progress(min(float(found[-1]) / 100.0, 1.0))


def same_content(
    node: NodeAccess,
    first: tuple[str, str],
    second: tuple[str, str],
    cancel: threading.Event | None = None,
) -> None:
    """``qemu-img compare`` of the guest-visible data of two node images (allocation may
    differ); ChecksumMismatch if the data differs."""
    (path_a, fmt_a), (path_b, fmt_b) = first, second
    argv = ["qemu-img", "compare", "-f", fmt_a, "-F", fmt_b, path_a, path_b]
    try:
        nodeaccess.run(node, argv, cancel=cancel)
    except nodeaccess.CommandFailed as exc:
        if exc.status == 1:
            raise errors.ChecksumMismatch(
                f"the image converted on the node differs from the verified one: {exc.stderr}"
            ) from None
        raise


def stream_file(node: NodeAccess, path: str, cancel: threading.Event | None = None) -> Any:
    """Context manager yielding the chunks of a node file."""
    return nodeaccess.read_stream(node, ["cat", "--", path], cancel)


def receive_file(
    node: NodeAccess,
    path: str,
    chunks: Iterable[bytes],
    cancel: threading.Event | None = None,
) -> None:
    """Write ``chunks`` into a new node file; all-zero blocks become holes."""
    argv: Sequence[str] = [
        "dd",
        f"of={path}",
        "bs=1M",
        "iflag=fullblock",
        "conv=sparse,excl,fsync",
        "status=none",
    ]
    nodeaccess.write_stream(node, argv, chunks, cancel)
