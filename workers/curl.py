"""The workers' HTTP client for images: libcurl (``pycurl``), connections kept alive.

A pool's first pass fetches every image, and on a CPU the client's own work shares the cores
with decoding and the forward pass: libcurl spends about a third of the CPU urllib3 did on a
request (bench/fetch_bench.py), which was itself two thirds of httpx's.

Nothing here follows a redirect, reads a proxy from the environment, or speaks anything but
http(s). :func:`get` may pin the connection to an address the caller checked
(``connect_to``): libcurl then connects there whatever the URL's host, which still goes in
the Host header and the TLS server name, so no second lookup (a rebinding DNS) and no
parser difference between ours and libcurl's can send a request elsewhere.
"""

from __future__ import annotations

import math
import os
import ssl
import threading
import weakref
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass
from urllib.parse import quote

import pycurl

TRANSIENT_CODES = frozenset(
    {
        pycurl.E_COULDNT_RESOLVE_HOST,
        pycurl.E_COULDNT_CONNECT,
        pycurl.E_OPERATION_TIMEDOUT,
        pycurl.E_GOT_NOTHING,
        pycurl.E_SEND_ERROR,
        pycurl.E_RECV_ERROR,
        pycurl.E_PARTIAL_FILE,
        pycurl.E_HTTP2,
        92,  # CURLE_HTTP2_STREAM, which pycurl does not name
    }
)
"""A server not reached, not answering in time, or dropping the connection: worth a retry."""
TLS_CODES = frozenset(
    {
        pycurl.E_SSL_CONNECT_ERROR,
        pycurl.E_PEER_FAILED_VERIFICATION,
        pycurl.E_SSL_CACERT_BADFILE,
        pycurl.E_SSL_CERTPROBLEM,
        pycurl.E_SSL_CIPHER,
        pycurl.E_SSL_ISSUER_ERROR,
    }
)
"""The TLS handshake failed: a certificate put right on the server lets a retry through."""
MIN_RATE = 256 * 1024
"""Bytes a second a transfer must average at the least (2 Mbit/s): with the read timeout it
bounds a whole request (:func:`transfer_timeout_s`). The low-speed limit alone (a byte within
the read timeout) let a server dripping a byte a second hold a fetch, and its thread, until the
chunk's time limit."""
URL_AS_IS = "!#$%&'()*+,/:;=?@[]~"
"""What stands in a URL as it is: the reserved characters and ``%`` (a reference already
percent-encoded stays so); anything else, a space or a non-ASCII letter of a file name, is
percent-encoded (UTF-8), as urllib3 and browsers send it (libcurl refuses it raw)."""


class FetchError(Exception):
    """The request failed before an answer: ``str()`` is libcurl's reason; ``tls`` for a
    failed handshake; ``transient`` when a retry may succeed."""

    def __init__(self, reason: str, *, transient: bool, tls: bool = False) -> None:
        super().__init__(reason)
        self.transient = transient
        self.tls = tls


@dataclass(frozen=True, slots=True)
class Answer:
    """A server's answer: ``body`` None when it was over the limit (left unread or cut off);
    ``location`` a redirect's target."""

    status: int
    body: bytes | None
    location: str | None


class Connections:
    """One process's curl handles for one image source, a handle a thread (libcurl's handles
    are not for two threads at once), each keeping its connections alive between requests,
    and a :class:`Transfers` for several requests at once.

    A forked child never uses, closes or frees its parent's handles: freeing one would shut
    down the parent's TLS sessions on the sockets they share.
    """

    __slots__ = ("__weakref__", "_handles", "_lock", "_transfers", "pid", "timeout_s", "total_s")

    def __init__(self, timeout_s: float, limit: int) -> None:
        self.pid = os.getpid()
        self.timeout_s = timeout_s
        self.total_s = transfer_timeout_s(timeout_s, limit)
        self._handles: dict[int, pycurl.Curl] = {}
        self._transfers: Transfers | None = None
        self._lock = threading.Lock()
        _LIVE.add(self)

    def transfers(self) -> Transfers:
        """This process's multi handle (see :class:`Transfers`), its connections kept alive."""
        with self._lock:
            if self._transfers is None:
                self._transfers = Transfers(self.timeout_s, self.total_s)
            return self._transfers

    def handle(self) -> pycurl.Curl:
        """This thread's handle (its kept-alive connections with it)."""
        ident = threading.get_ident()
        handle = self._handles.get(ident)
        if handle is None:
            handle = _new_handle(self.timeout_s, self.total_s)
            with self._lock:
                self._handles[ident] = handle
        return handle

    def close(self) -> None:
        """Close every handle and its connections, in the process that opened them."""
        if os.getpid() != self.pid:
            return
        with self._lock:
            handles, self._handles = list(self._handles.values()), {}
            transfers, self._transfers = self._transfers, None
        for handle in handles:
            handle.close()
        if transfers is not None:
            transfers.close()


_LIVE: weakref.WeakSet[Connections] = weakref.WeakSet()
_INHERITED: list[Connections] = []


def _keep_inherited() -> None:
    """In a forked child: hold the parent's handles for good (see :class:`Connections`)."""
    _INHERITED.extend(_LIVE)
    _LIVE.clear()


os.register_at_fork(after_in_child=_keep_inherited)


def transfer_timeout_s(timeout_s: float, limit: int) -> float:
    """The longest one request may take, start to end: the read timeout ``timeout_s`` (to
    connect and for a first byte) plus ``limit`` bytes at ``MIN_RATE``; 286 s for the
    workers' 30 s and 64 MiB."""
    return timeout_s + limit / MIN_RATE


def _new_handle(timeout_s: float, total_s: float) -> pycurl.Curl:
    handle = pycurl.Curl()
    handle.setopt(pycurl.NOSIGNAL, 1)  # threads: no alarm signal for timeouts
    handle.setopt(pycurl.PROTOCOLS, pycurl.PROTO_HTTP | pycurl.PROTO_HTTPS)
    handle.setopt(pycurl.PROXY, "")  # never a proxy from the environment
    handle.setopt(pycurl.CONNECTTIMEOUT_MS, max(1, round(timeout_s * 1000)))
    # no byte for ``timeout_s``: the read timeout (libcurl counts whole seconds)
    handle.setopt(pycurl.LOW_SPEED_LIMIT, 1)
    handle.setopt(pycurl.LOW_SPEED_TIME, max(1, math.ceil(timeout_s)))
    handle.setopt(pycurl.TIMEOUT_MS, max(1, round(total_s * 1000)))  # the whole transfer
    # the certificates Python's ssl trusts (SSL_CERT_FILE / SSL_CERT_DIR included), not the
    # paths the wheel's own libcurl was built with
    paths = ssl.get_default_verify_paths()
    if paths.cafile:
        handle.setopt(pycurl.CAINFO, paths.cafile)
    if paths.capath:
        handle.setopt(pycurl.CAPATH, paths.capath)
    return handle


class _Body:
    """Collects a body as libcurl hands it over, up to ``limit`` bytes (then aborts)."""

    __slots__ = ("limit", "over", "parts", "size")

    def __init__(self, limit: int) -> None:
        self.limit, self.over, self.size = limit, False, 0
        self.parts: list[bytes] = []

    def write(self, piece: bytes) -> int | None:
        self.size += len(piece)
        if self.size > self.limit:
            self.over = True
            return 0  # fewer bytes taken than given: libcurl aborts the transfer
        self.parts.append(piece)
        return None


def request(
    handle: pycurl.Curl,
    url: str,
    headers: list[str],
    *,
    limit: int,
    connect_to: str | None = None,
    post: bytes | None = None,
) -> Answer:
    """GET ``url`` (POST ``post`` with ``post``), at most ``limit`` bytes of the body read;
    ``connect_to``: the address to connect to, whatever the URL's host. ``FetchError`` when
    no answer came."""
    body = _prepared(handle, Get(url, headers, connect_to), limit, post)
    try:
        handle.perform()
    except pycurl.error as exc:
        return _answer(handle, body, exc)
    return _answer(handle, body, None)


@dataclass(frozen=True, slots=True)
class Get:
    """A GET to send: ``connect_to`` the address to connect to, whatever the URL's host."""

    url: str
    headers: list[str]
    connect_to: str | None = None


def _prepared(handle: pycurl.Curl, get: Get, limit: int, post: bytes | None = None) -> _Body:
    """``handle`` set up for ``get`` (a POST of ``post`` with one); the body it collects."""
    body = _Body(limit)
    handle.setopt(pycurl.URL, quote(get.url, safe=URL_AS_IS))
    handle.setopt(pycurl.HTTPHEADER, get.headers)
    handle.setopt(pycurl.WRITEFUNCTION, body.write)
    handle.setopt(pycurl.MAXFILESIZE_LARGE, limit)
    if get.connect_to is None:
        handle.unsetopt(pycurl.CONNECT_TO)
    else:
        shown = f"[{get.connect_to}]" if ":" in get.connect_to else get.connect_to
        handle.setopt(pycurl.CONNECT_TO, [f"::{shown}:"])  # any host, any port: there
    if post is None:
        handle.setopt(pycurl.HTTPGET, 1)
    else:
        handle.setopt(pycurl.POSTFIELDS, post)
    return body


def _answer(handle: pycurl.Curl, body: _Body, failed: pycurl.error | None) -> Answer:
    """What the transfer on ``handle`` came to (``failed``: libcurl's error, if any):
    ``FetchError`` when no answer came."""
    if failed is not None:
        if len(failed.args) != 2:  # not libcurl's (code, reason): an option we set wrong
            raise failed
        code, reason = failed.args
        # over the limit by its Content-Length (unread), or as read (our write aborted it)
        if code != pycurl.E_FILESIZE_EXCEEDED and not (code == pycurl.E_WRITE_ERROR and body.over):
            transient = code in TRANSIENT_CODES or code in TLS_CODES
            raise FetchError(reason, transient=transient, tls=code in TLS_CODES) from None
        body.over = True
    status = int(handle.getinfo(pycurl.RESPONSE_CODE))
    location = handle.getinfo(pycurl.REDIRECT_URL) if 300 <= status < 400 else None
    return Answer(status, None if body.over else b"".join(body.parts), location)


class Transfers:
    """Several GETs at once on one thread: libcurl's multi interface, its handles and their
    kept-alive connections kept from one call to the next.

    Threads each waiting on a request of their own cost a decode process 1.4 times the CPU an
    image (the GIL handed over at every answer; bench/fetch_bench.py); here one thread waits
    on every transfer at once and libcurl does the rest. One thread at a time.
    """

    def __init__(self, timeout_s: float, total_s: float) -> None:
        self.timeout_s, self.total_s = timeout_s, total_s
        self._multi = pycurl.CurlMulti()
        self._handles: list[pycurl.Curl] = []
        self._lock = threading.Lock()

    def fetch(
        self, gets: Sequence[Get], *, limit: int, at_once: int
    ) -> Generator[tuple[int, Answer | FetchError], None, None]:
        """Each of ``gets``' index and answer (or why none came) as its transfer ends, at
        most ``at_once`` of them under way, at most ``limit`` bytes of a body read. The
        transfers left when the caller stops early are dropped. While an earlier call's
        answers are still being taken (a caller that stopped without closing them), this one
        runs on handles of its own, closed at its end."""
        if not self._lock.acquire(blocking=False):
            spare = Transfers(self.timeout_s, self.total_s)
            try:
                yield from spare.fetch(gets, limit=limit, at_once=at_once)
            finally:
                spare.close()
            return
        try:
            pending = iter(enumerate(gets))
            idle = list(self._handles)
            running: dict[pycurl.Curl, tuple[int, _Body]] = {}
            try:
                while True:
                    while len(running) < at_once and self._start(pending, idle, running, limit):
                        pass
                    if not running:
                        return
                    self._perform()
                    ended = 0
                    for outcome in self._ended(running, idle):
                        ended += 1
                        yield outcome
                    if running and not ended:
                        self._wait()
            finally:
                for handle in running:
                    self._multi.remove_handle(handle)
        finally:
            self._lock.release()

    def _start(
        self,
        pending: Iterator[tuple[int, Get]],
        idle: list[pycurl.Curl],
        running: dict[pycurl.Curl, tuple[int, _Body]],
        limit: int,
    ) -> bool:
        got = next(pending, None)
        if got is None:
            return False
        if not idle:
            handle = _new_handle(self.timeout_s, self.total_s)
            self._handles.append(handle)
            idle.append(handle)
        handle = idle.pop()
        running[handle] = (got[0], _prepared(handle, got[1], limit))
        self._multi.add_handle(handle)
        return True

    def _perform(self) -> None:
        while self._multi.perform()[0] == pycurl.E_CALL_MULTI_PERFORM:
            pass

    def _wait(self) -> None:
        wait_ms = self._multi.timeout()
        self._multi.select(1.0 if wait_ms < 0 else max(wait_ms, 1) / 1000)

    def _ended(
        self, running: dict[pycurl.Curl, tuple[int, _Body]], idle: list[pycurl.Curl]
    ) -> Iterator[tuple[int, Answer | FetchError]]:
        while True:
            queued, done, failed = self._multi.info_read()
            ended: list[tuple[pycurl.Curl, pycurl.error | None]] = [(h, None) for h in done]
            ended += [(handle, pycurl.error(code, reason)) for handle, code, reason in failed]
            for handle, error in ended:
                self._multi.remove_handle(handle)
                index, body = running.pop(handle)
                idle.append(handle)
                try:
                    outcome: Answer | FetchError = _answer(handle, body, error)
                except FetchError as exc:
                    outcome = exc
                yield index, outcome
            if not queued:
                return

    def close(self) -> None:
        """Close the handles and their connections; while a call's answers are still being
        taken (a caller that kept it suspended), they close as these transfers go."""
        if not self._lock.acquire(blocking=False):
            return
        try:
            for handle in self._handles:
                handle.close()
            self._handles = []
            self._multi.close()
        finally:
            self._lock.release()
