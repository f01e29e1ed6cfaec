"""Commands and byte streams on the PVE node: over SSH (paramiko) or locally.

The PVE API has no disk download or upload for VM images, so the provider reads and
writes disk data on the node itself, where the volume paths the API reports are
real: ``qemu-img`` converts there, ``cat`` streams a file out, ``dd`` writes one in.
``NodeAccess`` is that one seam, with two implementations:

* ``SshNode`` -- a paramiko connection to the node. The host key must be listed in
  ``knownHosts`` from the Secret; an unknown or different key is refused
  (``AuthenticationError``), never accepted. Each command runs on its own channel of
  the one connection, so concurrent tasks share it. SSH flow control bounds memory:
  a stream never holds more than the channel window.
* ``LocalNode`` -- the provider pod runs on the node (``nodeAccess=local``): the same
  commands as local subprocesses.

Every command is started as ``echo VRPID:$$; exec <argv>`` so its process id is known:
cancelling kills exactly that process (``kill -TERM <pid>``), because closing an SSH
channel does not stop a remote ``qemu-img`` that never writes to it. Arguments are
always quoted with ``shlex``; nothing from a request reaches a shell unquoted.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import subprocess
import tempfile
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import IO, Protocol

import paramiko

from virtrigaud import errors
from virtrigaud.logging import get_logger

log = get_logger("virtrigaud.proxmox")

CHUNK = 1024 * 1024
PID_TAG = b"VRPID:"
_STDERR_KEEP = 4000


class CommandFailed(errors.FailedPrecondition):
    """A node command exited non-zero (the message carries its stderr tail)."""

    def __init__(self, command: str, status: int, stderr: str) -> None:
        tail = stderr.strip()[-_STDERR_KEEP:]
        super().__init__(f"node command {command!r} exited with {status}: {tail}")
        self.status = status
        self.stderr = stderr


def failure(argv: Sequence[str], status: int, stderr: str) -> errors.VirtrigaudError:
    """The error of a failed node command: OutOfSpace when the node's disk is full
    (retryable once space is freed), else ``CommandFailed``."""
    if "No space left on device" in stderr or "Disk quota exceeded" in stderr:
        return errors.OutOfSpace(
            f"node command {argv[0]}: the node ran out of space: {stderr.strip()[-500:]}"
        )
    return CommandFailed(_command_text(argv), status, stderr)


class Process(Protocol):
    """A started node command."""

    def read(self, size: int) -> bytes: ...

    def write(self, data: bytes) -> None: ...

    def close_stdin(self) -> None: ...

    def wait(self) -> int: ...

    def stderr_text(self) -> str: ...

    def kill(self) -> None: ...

    def close(self) -> None: ...


class NodeAccess(Protocol):
    """Runs commands on the node (module docstring)."""

    description: str

    def start(self, argv: Sequence[str]) -> Process: ...

    def close(self) -> None: ...


def _command_text(argv: Sequence[str]) -> str:
    return shlex.join(argv)


# -- running -----------------------------------------------------------------------


def run(
    node: NodeAccess,
    argv: Sequence[str],
    *,
    cancel: threading.Event | None = None,
    ok_codes: Iterable[int] = (0,),
) -> str:
    """Run ``argv`` to completion; its stdout (text). Raise ``CommandFailed`` on a bad
    exit status and ``Cancelled`` (after killing it) when ``cancel`` is set."""
    proc = node.start(argv)
    watcher = _Watch(proc, cancel)
    try:
        proc.close_stdin()
        out = bytearray()
        while chunk := proc.read(CHUNK):
            out += chunk
        status = proc.wait()
    finally:
        watcher.stop()
        proc.close()
    if watcher.fired:
        raise errors.Cancelled(f"node command {argv[0]} cancelled")
    if status not in tuple(ok_codes):
        raise failure(argv, status, proc.stderr_text())
    return out.decode("utf-8", errors="replace")


@contextlib.contextmanager
def read_stream(
    node: NodeAccess, argv: Sequence[str], cancel: threading.Event | None = None
) -> Iterator[Iterator[bytes]]:
    """The stdout of ``argv`` as chunks; the exit status is checked when the stream
    ends (a short stream from a failed command is never taken as complete)."""
    proc = node.start(argv)
    proc.close_stdin()
    watcher = _Watch(proc, cancel)

    def chunks() -> Iterator[bytes]:
        while chunk := proc.read(CHUNK):
            yield chunk
        status = proc.wait()
        if watcher.fired:
            raise errors.Cancelled(f"node command {argv[0]} cancelled")
        if status != 0:
            raise failure(argv, status, proc.stderr_text())

    try:
        yield chunks()
    finally:
        watcher.stop()
        proc.kill()
        proc.close()


def write_stream(
    node: NodeAccess,
    argv: Sequence[str],
    chunks: Iterable[bytes],
    cancel: threading.Event | None = None,
) -> None:
    """Feed ``chunks`` to the stdin of ``argv`` and wait for it to succeed."""
    proc = node.start(argv)
    watcher = _Watch(proc, cancel)
    write_error: errors.VirtrigaudError | None = None
    try:
        try:
            for chunk in chunks:
                if watcher.fired:
                    break
                proc.write(chunk)
        except (errors.Unavailable, errors.FailedPrecondition) as exc:
            write_error = exc  # the command stopped reading: its own error says why
        finally:
            proc.close_stdin()
        while proc.read(CHUNK):
            pass
        status = proc.wait()
    except BaseException:
        proc.kill()
        raise
    finally:
        watcher.stop()
        proc.close()
    if watcher.fired:
        raise errors.Cancelled(f"node command {argv[0]} cancelled")
    if status != 0:
        raise failure(argv, status, proc.stderr_text())
    if write_error is not None:
        raise write_error


class _Watch:
    """Kills ``proc`` as soon as ``cancel`` is set (a thread waiting on the event)."""

    def __init__(self, proc: Process, cancel: threading.Event | None) -> None:
        self.fired = False
        self._proc = proc
        self._cancel = cancel
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        if cancel is not None:
            self._thread = threading.Thread(target=self._run, name="node-cancel", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        assert self._cancel is not None
        while not self._done.is_set():
            if self._cancel.wait(0.1):
                with self._lock:
                    if self._done.is_set():
                        return
                    self.fired = True
                with contextlib.suppress(Exception):
                    self._proc.kill()
                return

    def stop(self) -> None:
        """No kill after this returns (the thread checks ``_done`` first); it is not
        joined, so a finished command costs no wait for the thread's next poll."""
        self._done.set()


# -- SSH -----------------------------------------------------------------------------


@dataclass(frozen=True)
class SshSettings:
    host: str
    port: int = 22
    user: str = "root"
    private_key: str = ""  # PEM / OpenSSH text from the Secret
    key_passphrase: str = ""
    known_hosts: str = ""  # known_hosts lines from the Secret
    connect_timeout: float = 15.0

    def __repr__(self) -> str:
        return f"SshSettings(host={self.host!r}, port={self.port}, user={self.user!r})"


def _load_key(text: str, passphrase: str) -> paramiko.PKey:
    fd, path = tempfile.mkstemp(prefix="vr-key-")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text if text.endswith("\n") else text + "\n")
        return paramiko.PKey.from_path(path, passphrase or None)
    except (paramiko.SSHException, ValueError, TypeError) as exc:
        raise errors.InvalidArgument(
            f"sshPrivateKey: not a usable private key ({type(exc).__name__})"
        ) from None
    finally:
        os.unlink(path)


def _host_keys(text: str) -> paramiko.HostKeys:
    keys = paramiko.HostKeys()
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            entry = paramiko.hostkeys.HostKeyEntry.from_line(line, number)
        except (paramiko.SSHException, ValueError) as exc:
            raise errors.InvalidArgument(f"knownHosts: line {number} is not valid: {exc}") from None
        if entry is None or entry.key is None:
            raise errors.InvalidArgument(f"knownHosts: line {number} is not a host key line")
        for name in entry.hostnames:
            keys.add(name, entry.key.get_name(), entry.key)
    return keys


class SshNode:
    """The node over SSH (module docstring)."""

    def __init__(self, settings: SshSettings) -> None:
        if not settings.known_hosts.strip():
            raise errors.InvalidArgument(
                "knownHosts: required for SSH to the node (host keys are always verified)"
            )
        if not settings.private_key.strip():
            raise errors.InvalidArgument("sshPrivateKey: required for SSH to the node")
        self.settings = settings
        self.description = f"{settings.user}@{settings.host}:{settings.port}"
        self._key = _load_key(settings.private_key, settings.key_passphrase)
        self._host_keys = _host_keys(settings.known_hosts)
        self._lock = threading.Lock()
        self._client: paramiko.SSHClient | None = None

    def _connect(self) -> paramiko.SSHClient:
        s = self.settings
        client = paramiko.SSHClient()
        hosts = client.get_host_keys()
        for name in self._host_keys:
            for key_type, key in self._host_keys[name].items():
                hosts.add(name, key_type, key)
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        try:
            client.connect(
                s.host,
                port=s.port,
                username=s.user,
                pkey=self._key,
                timeout=s.connect_timeout,
                banner_timeout=s.connect_timeout,
                auth_timeout=s.connect_timeout,
                allow_agent=False,
                look_for_keys=False,
            )
        except paramiko.BadHostKeyException:
            client.close()
            raise errors.AuthenticationError(
                f"ssh {self.description}: the node's host key does not match knownHosts; "
                "refusing to connect (possible man-in-the-middle, or the node was reinstalled)"
            ) from None
        except paramiko.AuthenticationException:
            client.close()
            raise errors.AuthenticationError(
                f"ssh {self.description}: the node refused the key in sshPrivateKey"
            ) from None
        except paramiko.SSHException as exc:
            client.close()
            if "known_hosts" in str(exc) or "not found in" in str(exc):
                raise errors.AuthenticationError(
                    f"ssh {self.description}: the node's host key is not in knownHosts; refusing"
                ) from None
            raise errors.Unavailable(f"ssh {self.description}: {exc}") from None
        except OSError as exc:
            client.close()
            raise errors.Unavailable(f"ssh {self.description}: cannot connect: {exc}") from None
        transport = client.get_transport()
        if transport is not None:
            transport.set_keepalive(30)
        return client

    def _transport(self) -> paramiko.Transport:
        with self._lock:
            transport = self._client.get_transport() if self._client is not None else None
            if transport is None or not transport.is_active():
                if self._client is not None:
                    self._client.close()
                self._client = self._connect()
                transport = self._client.get_transport()
            assert transport is not None
            return transport

    def start(self, argv: Sequence[str]) -> Process:
        try:
            channel = self._transport().open_session()
            channel.exec_command(f"echo {PID_TAG.decode()}$$; exec {_command_text(argv)}")
        except paramiko.SSHException as exc:
            raise errors.Unavailable(f"ssh {self.description}: {exc}") from None
        return _SshProcess(self, channel)

    def kill_pid(self, pid: int) -> None:
        try:
            channel = self._transport().open_session()
            channel.exec_command(f"kill -TERM {pid} 2>/dev/null")
            channel.recv_exit_status()
            channel.close()
        except (paramiko.SSHException, OSError, errors.VirtrigaudError) as exc:
            log.warning("node_kill_failed", node=self.description, pid=pid, error=str(exc))

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None


class _SshProcess:
    def __init__(self, node: SshNode, channel: paramiko.Channel) -> None:
        self._node = node
        self._channel = channel
        self._stderr = bytearray()
        self._pid: int | None = None
        self._pending = b""
        self._killed = False
        self._stderr_thread = threading.Thread(target=self._drain_stderr, daemon=True)
        self._stderr_thread.start()
        self._read_pid()

    def _drain_stderr(self) -> None:
        while True:
            try:
                data = self._channel.recv_stderr(65536)
            except (OSError, EOFError):
                return
            if not data:
                return
            self._stderr += data
            if len(self._stderr) > 4 * _STDERR_KEEP:
                del self._stderr[: -2 * _STDERR_KEEP]

    def _read_pid(self) -> None:
        """Consume the ``VRPID:<pid>`` line the command wrapper prints first (anything a
        login script printed before it is dropped, never taken as command output)."""
        buf = b""
        while True:
            line, sep, rest = buf.partition(b"\n")
            if sep:
                if line.startswith(PID_TAG):
                    with contextlib.suppress(ValueError):
                        self._pid = int(line[len(PID_TAG) :].strip())
                    self._pending = rest
                    return
                buf = rest
                continue
            if len(buf) > 65536:
                break
            data = self._channel.recv(4096)
            if not data:
                break
            buf += data
        self._pending = b""  # the wrapper never ran (the shell failed): no output

    def read(self, size: int) -> bytes:
        if self._pending:
            data, self._pending = self._pending[:size], self._pending[size:]
            return data
        try:
            return bytes(self._channel.recv(size))
        except (OSError, EOFError):
            return b""

    def write(self, data: bytes) -> None:
        try:
            self._channel.sendall(data)
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise errors.Unavailable(f"ssh {self._node.description}: write failed: {exc}") from None

    def close_stdin(self) -> None:
        with contextlib.suppress(OSError, EOFError):
            self._channel.shutdown_write()

    def wait(self) -> int:
        status = self._channel.recv_exit_status()
        self._stderr_thread.join(5)
        return -1 if self._killed else int(status)

    def stderr_text(self) -> str:
        return self._stderr.decode("utf-8", errors="replace")

    def kill(self) -> None:
        if self._channel.exit_status_ready():
            return
        self._killed = True
        if self._pid is not None:
            self._node.kill_pid(self._pid)
        self._channel.close()

    def close(self) -> None:
        self._channel.close()


# -- local ----------------------------------------------------------------------------


class LocalNode:
    """The node is this machine (``nodeAccess=local``)."""

    description = "local"

    def start(self, argv: Sequence[str]) -> Process:
        try:
            popen = subprocess.Popen(
                list(argv),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
        except OSError as exc:
            raise errors.FailedPrecondition(f"cannot run {argv[0]}: {exc}") from None
        return _LocalProcess(popen)

    def close(self) -> None:
        pass


class _LocalProcess:
    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        self._popen = popen
        self._stderr = bytearray()
        self._killed = False
        self._thread = threading.Thread(target=self._drain, daemon=True)
        self._thread.start()

    def _pipe(self, which: IO[bytes] | None) -> IO[bytes]:
        assert which is not None
        return which

    def _drain(self) -> None:
        pipe = self._pipe(self._popen.stderr)
        while data := pipe.read(65536):
            self._stderr += data
            if len(self._stderr) > 4 * _STDERR_KEEP:
                del self._stderr[: -2 * _STDERR_KEEP]

    def read(self, size: int) -> bytes:
        return self._pipe(self._popen.stdout).read1(size)  # type: ignore[attr-defined,no-any-return]

    def write(self, data: bytes) -> None:
        try:
            self._pipe(self._popen.stdin).write(data)
        except BrokenPipeError:
            raise errors.FailedPrecondition("local node command stopped reading") from None

    def close_stdin(self) -> None:
        with contextlib.suppress(OSError):
            self._pipe(self._popen.stdin).close()

    def wait(self) -> int:
        status = self._popen.wait()
        self._thread.join(5)
        return -1 if self._killed else status

    def stderr_text(self) -> str:
        return self._stderr.decode("utf-8", errors="replace")

    def kill(self) -> None:
        if self._popen.poll() is None:
            self._killed = True
            self._popen.terminate()

    def close(self) -> None:
        for pipe in (self._popen.stdin, self._popen.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()
        if self._popen.poll() is None:
            self._popen.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._popen.wait(timeout=10)
