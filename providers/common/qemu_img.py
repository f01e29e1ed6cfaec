"""qemu-img, in one module.

Every qemu-img invocation of virtrigaud goes through here, so that three rules hold
everywhere:

- **Argument lists, never shell strings.** Paths are made absolute before they reach
  the command line, so a name starting with ``-`` cannot be read as an option and a
  name containing ``:`` cannot be read as a protocol prefix (``json:``, ``nbd:``).
  ``-o`` option values are escaped (``,`` doubled) and option keys are validated.
- **Machine-readable output.** ``info``, ``check`` and ``map`` use ``--output=json``
  and are parsed into the dataclasses below; ``convert`` runs with ``-p`` and the
  ``    (12.34/100%)\\r`` lines it prints on stdout become ``progress(fraction)`` calls.
- **One translation of failures** (``_error_from``): qemu-img's stderr becomes a
  ``virtrigaud.errors`` class: ENOSPC -> OutOfSpace, a missing file -> NotFound,
  EACCES -> PermissionDenied, an image locked by a running VM -> FailedPrecondition,
  a file that is not an image of the stated format or is corrupt -> InvalidArgument
  (qemu-img's message kept), a missing binary or anything else -> InternalError.

Formats: raw, qcow2, vmdk (monolithicSparse, monolithicFlat, streamOptimized,
twoGbMaxExtentSparse/Flat), vdi, vpc and vhdx. ``vpc`` output always gets
``force_size=on``: without it qemu-img rounds the virtual size up to a CHS geometry and
the guest would see a different disk.

Probing: when ``format`` is None qemu-img guesses, and a file that is no known image is
reported as ``raw`` (that is qemu-img's behaviour, kept as is: ``info`` is how callers
find out what a file is). Anything that moves data (``convert``, the pipeline) requires
the source format explicitly, because a guest can write a qcow2 header into a raw disk
and make a probing reader follow a backing file of the guest's choosing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import selectors
import subprocess
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from virtrigaud.errors import (
    AlreadyExists,
    Cancelled,
    FailedPrecondition,
    InternalError,
    InvalidArgument,
    NotFound,
    OutOfSpace,
    PermissionDenied,
    VirtrigaudError,
)

BINARY_ENV = "VIRTRIGAUD_QEMU_IMG"
FORMATS = frozenset({"raw", "qcow2", "vmdk", "vdi", "vpc", "vhdx"})
SUBFORMATS: Mapping[str, frozenset[str]] = {
    "vmdk": frozenset(
        {
            "monolithicSparse",
            "monolithicFlat",
            "streamOptimized",
            "twoGbMaxExtentSparse",
            "twoGbMaxExtentFlat",
        }
    ),
    "vpc": frozenset({"dynamic", "fixed"}),
    "vhdx": frozenset({"dynamic", "fixed"}),
}
# qemu-img check: 0 clean, 2 corruptions, 3 leaks (JSON on stdout in all three),
# 63 the format has no check.
_CHECK_PARSED = (0, 2, 3)
_CHECK_UNSUPPORTED = 63
_PROGRESS = re.compile(rb"\((\d+(?:\.\d+)?)/100%\)")
_OPTION_KEY = re.compile(r"^[A-Za-z0-9_.-]+$")
_STDERR_CAP = 64 * 1024
_KILL_GRACE = 5.0

ProgressFn = Callable[[float], None]


class CancelToken(Protocol):
    """What cancellation is checked with (``threading.Event`` is one)."""

    def is_set(self) -> bool: ...


@dataclass(frozen=True)
class VmdkExtent:
    """One extent of a vmdk (from ``format-specific.data.extents``)."""

    filename: str
    format: str
    virtual_size: int
    compressed: bool


@dataclass(frozen=True)
class ImageInfo:
    """``qemu-img info --output=json`` of one image (one layer of a chain)."""

    filename: str
    format: str
    virtual_size: int
    actual_size: int | None
    cluster_size: int | None
    dirty: bool
    corrupt: bool
    compat: str | None
    encrypted: bool
    backing_filename: str | None  # resolved ("full-backing-filename") when qemu-img knows it
    backing_format: str | None
    data_file: str | None  # qcow2 external data file
    create_type: str | None  # vmdk subformat
    extents: tuple[VmdkExtent, ...]
    snapshots: int  # internal snapshots
    backing_chain: tuple[ImageInfo, ...] = ()  # the layers below this one, nearest first
    format_specific: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def layers(self) -> tuple[ImageInfo, ...]:
        """This image then its backing chain: index == ``Extent.depth``."""
        return (self, *self.backing_chain)


@dataclass(frozen=True)
class CheckResult:
    """``qemu-img check --output=json``. ``supported`` is False for formats with no check."""

    filename: str
    format: str
    supported: bool = True
    check_errors: int = 0
    corruptions: int = 0
    leaks: int = 0
    corruptions_fixed: int = 0
    leaks_fixed: int = 0
    image_end_offset: int | None = None
    total_clusters: int | None = None
    allocated_clusters: int | None = None
    fragmented_clusters: int | None = None
    compressed_clusters: int | None = None

    @property
    def clean(self) -> bool:
        return self.check_errors == 0 and self.corruptions == 0 and self.leaks == 0


@dataclass(frozen=True)
class Extent:
    """One entry of ``qemu-img map --output=json`` (virtual range -> where it lives).

    ``zero``: reads as zeros. ``data``: allocated data. ``offset``: host offset of the
    range in the layer at ``depth`` when it is stored there uncompressed (raw mapping);
    None when qemu-img cannot name one (compressed clusters, vhdx, unallocated).
    """

    start: int
    length: int
    depth: int
    present: bool
    zero: bool
    data: bool
    offset: int | None = None

    @property
    def end(self) -> int:
        return self.start + self.length


# ---------------------------------------------------------------- public commands


def info(
    path: str | os.PathLike[str],
    format: str | None = None,
    *,
    backing_chain: bool = True,
    force_share: bool = False,
) -> ImageInfo:
    """Describe an image; with ``backing_chain`` the whole chain is read (``--backing-chain``)."""
    args = ["info", "--output=json", *_format_args("-f", format)]
    if backing_chain:
        args.append("--backing-chain")
    if force_share:
        args.append("-U")
    args.append(safe_path(path))
    data = _json(_run(args).stdout, "info")
    if isinstance(data, list):
        if not data:
            raise InternalError("qemu-img info returned an empty backing chain")
        layers = [_image_info(item) for item in data]
        return dataclasses.replace(layers[0], backing_chain=tuple(layers[1:]))
    return _image_info(data)


def map(
    path: str | os.PathLike[str], format: str | None = None, *, force_share: bool = False
) -> list[Extent]:
    """Allocation map of the virtual disk (``qemu-img map --output=json``)."""
    args = ["map", "--output=json", *_format_args("-f", format)]
    if force_share:
        args.append("-U")
    args.append(safe_path(path))
    data = _json(_run(args).stdout, "map")
    if not isinstance(data, list):
        raise InternalError("qemu-img map: expected a JSON list")
    return [
        Extent(
            start=int(item["start"]),
            length=int(item["length"]),
            depth=int(item.get("depth", 0)),
            present=bool(item.get("present", True)),
            zero=bool(item["zero"]),
            data=bool(item["data"]),
            offset=int(item["offset"]) if "offset" in item else None,
        )
        for item in data
    ]


def check(path: str | os.PathLike[str], format: str | None = None) -> CheckResult:
    """Consistency check. Corruptions and leaks are results (exit 2/3), not errors."""
    args = ["check", "--output=json", *_format_args("-f", format), safe_path(path)]
    proc = _run(args, ok_codes=(*_CHECK_PARSED, 1, _CHECK_UNSUPPORTED))
    if proc.returncode == _CHECK_UNSUPPORTED:
        fmt = format or info(path, backing_chain=False).format
        return CheckResult(filename=str(path), format=fmt, supported=False)
    try:
        data = json.loads(proc.stdout)
    except ValueError:
        data = None
    if not isinstance(data, dict):  # exit 1 with no report: the image could not be opened
        raise _error_from(proc.stderr, "check")
    return CheckResult(
        filename=str(data.get("filename", path)),
        format=str(data.get("format", format or "")),
        check_errors=int(data.get("check-errors", 0)),
        corruptions=int(data.get("corruptions", 0)),
        leaks=int(data.get("leaks", 0)),
        corruptions_fixed=int(data.get("corruptions-fixed", 0)),
        leaks_fixed=int(data.get("leaks-fixed", 0)),
        image_end_offset=_opt_int(data, "image-end-offset"),
        total_clusters=_opt_int(data, "total-clusters"),
        allocated_clusters=_opt_int(data, "allocated-clusters"),
        fragmented_clusters=_opt_int(data, "fragmented-clusters"),
        compressed_clusters=_opt_int(data, "compressed-clusters"),
    )


def compare(
    a: str | os.PathLike[str],
    b: str | os.PathLike[str],
    *,
    a_format: str | None = None,
    b_format: str | None = None,
    strict: bool = False,
    force_share: bool = False,
) -> bool:
    """True when both images show the guest the same bytes (exit 0), False on exit 1.

    ``force_share`` (``-U``) reads images a running VM holds open.
    """
    args = ["compare", "-q", *_format_args("-f", a_format), *_format_args("-F", b_format)]
    if strict:
        args.append("-s")
    if force_share:
        args.append("-U")
    args += [safe_path(a), safe_path(b)]
    return _run(args, ok_codes=(0, 1)).returncode == 0


def create(
    path: str | os.PathLike[str],
    format: str,
    size: int,
    *,
    subformat: str | None = None,
    options: Mapping[str, str] | None = None,
) -> None:
    """Create an empty image of ``size`` virtual bytes."""
    if size < 0:
        raise InvalidArgument(f"size must not be negative, got {size}")
    opts = _output_options(format, subformat, options)
    args = ["create", "-q", *_format_args("-f", format, required=True)]
    if opts:
        args += ["-o", opts]
    args += [safe_path(path), str(size)]
    _run(args)


def rebase_unsafe(
    path: str | os.PathLike[str], format: str, backing: str | os.PathLike[str], backing_format: str
) -> None:
    """Point ``path`` at ``backing`` by rewriting its header only (``rebase -u``): no
    data is read or copied, so the caller vouches that ``backing`` holds the data the
    old backing file held (e.g. a local copy of it)."""
    args = [
        "rebase",
        "-u",
        *_format_args("-f", format, required=True),
        "-b",
        safe_path(backing),
        *_format_args("-F", backing_format, required=True),
        safe_path(path),
    ]
    _run(args)


def convert(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    src_format: str,
    dst_format: str,
    subformat: str | None = None,
    compress: bool = False,
    sparse: bool = True,
    options: Mapping[str, str] | None = None,
    progress: ProgressFn | None = None,
    cancel: CancelToken | None = None,
    force_share: bool = False,
    overwrite: bool = False,
    poll_interval: float = 0.1,
) -> None:
    """``qemu-img convert -p``; progress gets increasing fractions ending at 1.0.

    ``sparse=False`` allocates zero regions in the output (``-S 0``). ``compress`` is
    qcow2's ``-c`` (vmdk is compressed by asking for ``subformat=streamOptimized``).
    When ``cancel`` is set the subprocess is killed and ``Cancelled`` raised; on any
    failure the output file (and a vmdk's extent files) this call created is removed.
    """
    if compress and dst_format != "qcow2":
        raise InvalidArgument(
            f"compress applies to qcow2 only (use subformat=streamOptimized for vmdk), "
            f"not {dst_format}"
        )
    opts = _output_options(dst_format, subformat, options)
    args = ["convert", "-p", *_format_args("-f", src_format, required=True)]
    args += _format_args("-O", dst_format, required=True)
    if compress:
        args.append("-c")
    if not sparse:
        args += ["-S", "0"]
    if force_share:
        args.append("-U")
    if opts:
        args += ["-o", opts]
    dst_abs = safe_path(dst)
    if not overwrite and os.path.lexists(dst_abs):
        raise AlreadyExists(f"output image {dst_abs} already exists")
    before = set(_companions(dst_abs))
    args += [safe_path(src), dst_abs]
    try:
        _run_with_progress(args, progress, cancel, poll_interval)
    except BaseException:
        for leftover in [dst_abs, *(p for p in _companions(dst_abs) if p not in before)]:
            _unlink_quietly(leftover)
        raise


# ---------------------------------------------------------------- helpers (public)


def safe_path(path: str | os.PathLike[str]) -> str:
    """An absolute path, so qemu-img reads it as a file name and nothing else."""
    text = os.fspath(path)
    if not text or "\0" in text:
        raise InvalidArgument(f"invalid path {text!r}")
    return os.path.abspath(text)


def binary() -> str:
    """The qemu-img executable (``$VIRTRIGAUD_QEMU_IMG`` or ``qemu-img`` on PATH)."""
    return os.environ.get(BINARY_ENV) or "qemu-img"


def validate_format(format: str, subformat: str | None = None) -> None:
    if format not in FORMATS:
        raise InvalidArgument(f"unsupported image format {format!r}; use one of {sorted(FORMATS)}")
    if subformat is not None and subformat not in SUBFORMATS.get(format, frozenset()):
        allowed = sorted(SUBFORMATS.get(format, frozenset()))
        raise InvalidArgument(f"unsupported subformat {subformat!r} for {format}; use {allowed}")


# ---------------------------------------------------------------- internals


def _format_args(flag: str, format: str | None, *, required: bool = False) -> list[str]:
    if format is None:
        if required:
            raise InvalidArgument(f"an image format is required for {flag}")
        return []
    validate_format(format)
    return [flag, format]


def _output_options(format: str, subformat: str | None, options: Mapping[str, str] | None) -> str:
    validate_format(format, subformat)
    opts = dict(options or {})
    if subformat is not None:
        opts["subformat"] = subformat
    if format == "vpc":
        opts.setdefault("force_size", "on")
    parts = []
    for key, value in opts.items():
        if not _OPTION_KEY.match(key):
            raise InvalidArgument(f"invalid qemu-img option name {key!r}")
        parts.append(f"{key}={str(value).replace(',', ',,')}")
    return ",".join(parts)


def _companions(dst: str) -> list[str]:
    """Extent files qemu-img may create beside a vmdk descriptor (``x-flat.vmdk``...)."""
    directory, name = os.path.split(dst)
    stem, dot, ext = name.rpartition(".")
    prefix, postfix = (stem, dot + ext) if dot else (name, "")
    if not os.path.isdir(directory):
        return []
    pattern = re.compile(re.escape(prefix) + r"-(flat|[fs]\d{3})" + re.escape(postfix) + "$")
    return [os.path.join(directory, n) for n in os.listdir(directory) if pattern.match(n)]


def _unlink_quietly(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _env() -> dict[str, str]:
    return {**os.environ, "LC_ALL": "C", "LANG": "C"}


def _spawn(args: list[str]) -> subprocess.Popen[bytes]:
    try:
        return subprocess.Popen(
            [binary(), *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=_env(),
        )
    except FileNotFoundError as exc:
        raise InternalError(
            f"qemu-img not found ({binary()!r}): install qemu-utils or set ${BINARY_ENV}"
        ) from exc
    except PermissionError as exc:
        raise InternalError(f"qemu-img ({binary()!r}) is not executable: {exc}") from exc


@dataclass
class _Result:
    returncode: int
    stdout: str
    stderr: str


def _run(args: list[str], ok_codes: Iterable[int] = (0,)) -> _Result:
    proc = _spawn(args)
    out, err = proc.communicate()
    result = _Result(proc.returncode, out.decode(errors="replace"), err.decode(errors="replace"))
    if result.returncode not in tuple(ok_codes):
        raise _error_from(result.stderr, args[0], result.returncode)
    return result


def _run_with_progress(
    args: list[str], progress: ProgressFn | None, cancel: CancelToken | None, poll: float
) -> None:
    proc = _spawn(args)
    assert proc.stdout is not None and proc.stderr is not None
    parser = _ProgressParser(progress)
    err = bytearray()
    try:
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ, "out")
            sel.register(proc.stderr, selectors.EVENT_READ, "err")
            while sel.get_map():
                if cancel is not None and cancel.is_set():
                    raise Cancelled(f"qemu-img {args[0]} cancelled")
                for key, _ in sel.select(timeout=poll):
                    chunk = os.read(key.fd, 65536)
                    if not chunk:
                        sel.unregister(key.fileobj)
                    elif key.data == "out":
                        parser.feed(chunk)
                    elif len(err) < _STDERR_CAP:
                        err += chunk
        returncode = proc.wait()
    except BaseException:
        _kill(proc)
        raise
    finally:
        proc.stdout.close()
        proc.stderr.close()
    if cancel is not None and cancel.is_set():
        raise Cancelled(f"qemu-img {args[0]} cancelled")
    if returncode != 0:
        raise _error_from(err.decode(errors="replace"), args[0], returncode)
    parser.finish()


def _kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=_KILL_GRACE)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class _ProgressParser:
    """Turns ``    (12.34/100%)\\r`` records into strictly increasing fractions."""

    def __init__(self, callback: ProgressFn | None) -> None:
        self._callback = callback
        self._buffer = b""
        self._last = -1.0

    def feed(self, chunk: bytes) -> None:
        self._buffer += chunk
        *records, self._buffer = re.split(rb"[\r\n]", self._buffer)
        for record in records:
            match = _PROGRESS.search(record)
            if match:
                self._emit(min(float(match.group(1)) / 100.0, 1.0))

    def finish(self) -> None:
        self.feed(b"\n")
        self._emit(1.0)

    def _emit(self, fraction: float) -> None:
        if fraction > self._last:
            self._last = fraction
            if self._callback is not None:
                self._callback(fraction)


def _error_from(stderr: str, command: str, returncode: int | None = None) -> VirtrigaudError:
    """The one place where a failed qemu-img run becomes a virtrigaud error."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    message = "; ".join(line.removeprefix("qemu-img: ") for line in lines)
    if not message:
        message = f"exit status {returncode}"
    text = f"qemu-img {command}: {message}"
    low = message.lower()
    if "no space left on device" in low or "disk quota exceeded" in low:
        return OutOfSpace(text)
    if "no such file or directory" in low:
        return NotFound(text)
    if "permission denied" in low or "operation not permitted" in low:
        return PermissionDenied(text)
    if "lock" in low and ("failed to get" in low or "is another process using" in low):
        return FailedPrecondition(f"{text} (the image is in use; snapshot it or stop the VM)")
    image_problem = (
        "could not open",
        "not in",
        "corrupt",
        "invalid",
        "unknown driver",
        "unknown file format",
        "unsupported",
        "header",
        "does not support",
    )
    if any(marker in low for marker in image_problem):
        return InvalidArgument(text)
    return InternalError(text)


def _json(text: str, command: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise InternalError(f"qemu-img {command}: unparseable JSON output") from exc


def _opt_int(data: Mapping[str, Any], key: str) -> int | None:
    value = data.get(key)
    return int(value) if value is not None else None


def _image_info(data: Mapping[str, Any]) -> ImageInfo:
    specific = data.get("format-specific") or {}
    spec_data: Mapping[str, Any] = specific.get("data") or {}
    extents = tuple(
        VmdkExtent(
            filename=str(ext.get("filename", "")),
            format=str(ext.get("format", "")),
            virtual_size=int(ext.get("virtual-size", 0)),
            compressed=bool(ext.get("compressed", False)),
        )
        for ext in spec_data.get("extents", ())
    )
    backing = data.get("full-backing-filename") or data.get("backing-filename")
    return ImageInfo(
        filename=str(data.get("filename", "")),
        format=str(data["format"]),
        virtual_size=int(data["virtual-size"]),
        actual_size=_opt_int(data, "actual-size"),
        cluster_size=_opt_int(data, "cluster-size"),
        dirty=bool(data.get("dirty-flag", False)),
        corrupt=bool(spec_data.get("corrupt", False)),
        compat=spec_data.get("compat"),
        encrypted=bool(data.get("encrypted", False)),
        backing_filename=str(backing) if backing else None,
        backing_format=data.get("backing-filename-format"),
        data_file=spec_data.get("data-file"),
        create_type=spec_data.get("create-type"),
        extents=extents,
        snapshots=len(data.get("snapshots", ())),
        format_specific=dict(specific),
    )


def is_absolute_file(name: str) -> bool:
    """True for a plain absolute file name (not ``json:``/protocol syntax)."""
    return Path(name).is_absolute() and not name.startswith("json:")
