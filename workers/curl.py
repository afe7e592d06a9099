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
    are not for two threads at once), each keeping its connections alive between requests.

    A forked child never uses, closes or frees its parent's handles: freeing one would shut
    down the parent's TLS sessions on the sockets they share.
    """

    __slots__ = ("__weakref__", "_handles", "_lock", "pid", "timeout_s", "total_s")

    def __init__(self, timeout_s: float, limit: int) -> None:
        self.pid = os.getpid()
        self.timeout_s = timeout_s
        self.total_s = transfer_timeout_s(timeout_s, limit)
        self._handles: dict[int, pycurl.Curl] = {}
        self._lock = threading.Lock()
        _LIVE.add(self)

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
        for handle in handles:
            handle.close()


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
    body = _Body(limit)
    handle.setopt(pycurl.URL, quote(url, safe=URL_AS_IS))
    handle.setopt(pycurl.HTTPHEADER, headers)
    handle.setopt(pycurl.WRITEFUNCTION, body.write)
    handle.setopt(pycurl.MAXFILESIZE_LARGE, limit)
    if connect_to is None:
        handle.unsetopt(pycurl.CONNECT_TO)
    else:
        shown = f"[{connect_to}]" if ":" in connect_to else connect_to
        handle.setopt(pycurl.CONNECT_TO, [f"::{shown}:"])  # any host, any port: there
    if post is None:
        handle.setopt(pycurl.HTTPGET, 1)
    else:
        handle.setopt(pycurl.POSTFIELDS, post)
    try:
        handle.perform()
    except pycurl.error as exc:
        if len(exc.args) != 2:  # not libcurl's (code, reason): an option we set wrong
            raise
        code, reason = exc.args
        # over the limit by its Content-Length (unread), or as read (our write aborted it)
        if code != pycurl.E_FILESIZE_EXCEEDED and not (code == pycurl.E_WRITE_ERROR and body.over):
            transient = code in TRANSIENT_CODES or code in TLS_CODES
            raise FetchError(reason, transient=transient, tls=code in TLS_CODES) from None
        body.over = True
    status = int(handle.getinfo(pycurl.RESPONSE_CODE))
    location = handle.getinfo(pycurl.REDIRECT_URL) if 300 <= status < 400 else None
    return Answer(status, None if body.over else b"".join(body.parts), location)
