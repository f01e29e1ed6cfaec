"""A TCP proxy that cuts response streams, to test resumed downloads deterministically.

``FaultProxy(upstream_port, cut_after=N, cuts=1)`` forwards loopback connections to the
upstream port. The first ``cuts`` connections whose server-to-client byte count reaches
``N`` are closed right there, mid-response; later connections pass untouched. By default
the cut is a FIN after exactly ``N`` bytes (the client sees a short response, at a
deterministic offset); ``reset=True`` sends a RST instead (the client may lose data it
had not read yet, as after a crash).
``requests`` records the beginning of what each client sent (to assert on headers such
as ``Range``), ``cut_count`` how many cuts happened.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading

from tests.servers.net import LOOPBACK

_BUFFER = 64 * 1024
_HEAD_BYTES = 16 * 1024


class FaultProxy:
    def __init__(
        self, upstream_port: int, *, cut_after: int, cuts: int = 1, reset: bool = False
    ) -> None:
        self.upstream_port = upstream_port
        self.reset = reset
        self.cut_after = cut_after
        self._cuts_left = cuts
        self.cut_count = 0
        self.requests: list[bytes] = []
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((LOOPBACK, 0))
        self._listener.listen(16)
        self.port = int(self._listener.getsockname()[1])
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="faultproxy", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection((LOOPBACK, self.upstream_port))
            except OSError:
                client.close()
                continue
            with self._lock:
                index = len(self.requests)
                self.requests.append(b"")
                self._sockets += [client, upstream]
            threading.Thread(
                target=self._pump_up, args=(client, upstream, index), daemon=True
            ).start()
            threading.Thread(target=self._pump_down, args=(upstream, client), daemon=True).start()

    def _pump_up(self, client: socket.socket, upstream: socket.socket, index: int) -> None:
        try:
            while data := client.recv(_BUFFER):
                with self._lock:
                    head = self.requests[index]
                    if len(head) < _HEAD_BYTES:
                        self.requests[index] = head + data[: _HEAD_BYTES - len(head)]
                upstream.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                upstream.shutdown(socket.SHUT_WR)

    def _pump_down(self, upstream: socket.socket, client: socket.socket) -> None:
        sent = 0
        try:
            while data := upstream.recv(_BUFFER):
                if sent + len(data) >= self.cut_after and self._take_cut():
                    client.sendall(data[: max(0, self.cut_after - sent)])
                    self._cut(client)
                    upstream.close()
                    return
                client.sendall(data)
                sent += len(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                client.shutdown(socket.SHUT_WR)

    def _take_cut(self) -> bool:
        with self._lock:
            if self._cuts_left <= 0:
                return False
            self._cuts_left -= 1
            self.cut_count += 1
            return True

    def _cut(self, sock: socket.socket) -> None:
        """Close the client side mid-response.

        ``shutdown`` first: it wakes the other pump thread blocked in ``recv`` on this
        socket (a plain ``close`` would not act while that thread holds the socket).
        With ``reset``, SO_LINGER 0 makes the final ``close`` send a RST.
        """
        if self.reset:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            sock.close()

    def stop(self) -> None:
        self._closed.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.close()

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
