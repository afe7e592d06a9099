"""A TCP proxy in front of a real service that injects network faults on command.

``FaultProxy(host, port)`` listens on a free loopback port and forwards every connection to
``host:port``. While it runs, a test switches what the service looks like from outside:

    down()           connections cut now, new ones reset at once (the server stopped)
    slow(seconds)    every answer held back that long (a timeout on the client's side)
    answer(status)   every request answered with that HTTP status, never forwarded (a 5xx)
    heal()           forwarding again
    down_after(marker, n)   forward, and go down the moment the ``n``-th request whose first
                     line contains ``marker`` arrives (that request is not forwarded): a
                     server that stops in the middle of a sync or a push
    answer_next(marker, status, times)   forward, but answer the next ``times`` requests
                     whose first line contains ``marker`` with ``status`` (not forwarded): one
                     page of a listing refused or failing

``seen(marker)`` counts the requests whose first line contained ``marker``. Plain threads and
sockets: HTTP/1.1 to Label Studio and PostgreSQL's wire protocol pass through alike (request
lines are only read for HTTP).
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from dataclasses import dataclass, field


@dataclass
class _Mode:
    down: bool = False
    delay_s: float = 0.0
    status: int | None = None
    trip: tuple[bytes, int] | None = None
    refuse: tuple[bytes, int] | None = None
    refusals: int = 0


@dataclass
class FaultProxy:
    host: str
    port: int
    mode: _Mode = field(default_factory=_Mode)
    _counts: dict[bytes, int] = field(default_factory=dict)
    _conns: set[socket.socket] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self._server = socket.create_server(("127.0.0.1", 0))
        self.listen_port = int(self._server.getsockname()[1])
        self._stopped = False
        threading.Thread(target=self._accept, daemon=True, name="fault-proxy").start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.listen_port}"

    # -- switches -------------------------------------------------------------------------
    def down(self) -> None:
        self.mode = _Mode(down=True)
        self._cut_all()

    def slow(self, seconds: float) -> None:
        self.mode = _Mode(delay_s=seconds)

    def answer(self, status: int) -> None:
        self.mode = _Mode(status=status)

    def heal(self) -> None:
        self.mode = _Mode()

    def down_after(self, marker: bytes, n: int) -> None:
        self.mode = _Mode(trip=(marker, self.seen(marker) + n))

    def answer_next(self, marker: bytes, status: int, times: int = 1) -> None:
        self.mode = _Mode(refuse=(marker, status), refusals=times)

    def seen(self, marker: bytes) -> int:
        with self._lock:
            return sum(n for key, n in self._counts.items() if marker in key)

    def close(self) -> None:
        self._stopped = True
        self._server.close()
        self._cut_all()

    # -- plumbing -------------------------------------------------------------------------
    def _accept(self) -> None:
        while not self._stopped:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            if self.mode.down:
                _reset(client)
                continue
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        if self.mode.status is not None:
            self._answer(client, self.mode.status)
            return
        try:
            upstream = socket.create_connection((self.host, self.port), timeout=10)
        except OSError:
            _reset(client)
            return
        upstream.settimeout(None)
        with self._lock:
            self._conns.update((client, upstream))
        threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
        self._pump(upstream, client, False)

    def _pump(self, src: socket.socket, dst: socket.socket, requests: bool) -> None:
        try:
            while chunk := src.recv(65536):
                if requests and self._count(chunk):
                    self.down()
                    return
                if requests and (status := self._refused(chunk)) is not None:
                    _send_status(src, status)
                    return
                if requests and self.mode.status is not None:  # kept-alive ones answer too
                    _send_status(src, self.mode.status)
                    return
                if not requests and self.mode.delay_s:
                    time.sleep(self.mode.delay_s)
                if self.mode.down:
                    return
                dst.sendall(chunk)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                self._forget(sock)

    def _count(self, chunk: bytes) -> bool:
        """Count a request line in ``chunk``; True when it trips ``down_after``."""
        line = chunk.split(b"\r\n", 1)[0]
        if not line.endswith(b"HTTP/1.1"):
            return False
        with self._lock:
            self._counts[line] = self._counts.get(line, 0) + 1
        trip = self.mode.trip
        return trip is not None and self.seen(trip[0]) >= trip[1]

    def _refused(self, chunk: bytes) -> int | None:
        """The status to answer the request in ``chunk`` with (``answer_next``), or None."""
        mode = self.mode
        line = chunk.split(b"\r\n", 1)[0]
        if mode.refuse is None or mode.refuse[0] not in line:
            return None
        with self._lock:
            if mode.refusals <= 0:
                return None
            mode.refusals -= 1
        return mode.refuse[1]

    def _answer(self, client: socket.socket, status: int) -> None:
        with contextlib.suppress(OSError):
            client.recv(65536)
            _send_status(client, status)
        client.close()

    def _cut_all(self) -> None:
        with self._lock:
            conns, self._conns = list(self._conns), set()
        for sock in conns:
            _reset(sock)

    def _forget(self, sock: socket.socket) -> None:
        with self._lock:
            self._conns.discard(sock)
        with contextlib.suppress(OSError):
            sock.close()


def _reset(sock: socket.socket) -> None:
    """Close with a TCP reset, as a server process that died leaves its connections."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()


def _send_status(client: socket.socket, status: int) -> None:
    body = f"injected {status}\n".encode()
    head = (
        f"HTTP/1.1 {status} Injected\r\nContent-Type: text/plain\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    with contextlib.suppress(OSError):
        client.sendall(head.encode() + body)
