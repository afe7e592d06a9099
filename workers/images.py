"""Reading a task's image: Label Studio URLs, local paths, and allow-listed http(s) hosts only.

Task data is user input: an image reference must never make the worker fetch an arbitrary
address or read an arbitrary file. Label Studio URLs (``/data/local-files/?d=...``,
``/data/upload/...``, and cloud storage objects, ``s3://`` and the like, read through the
server's ``/tasks/<id>/resolve/`` as its own editor reads them) go to the configured server
with its token (a legacy token as ``Token ...``; a personal access token, a JWT, exchanged at
``/api/token/refresh/`` for a short-lived ``Bearer`` access token), or straight to the disk
when the worker has the folder mounted (``/data/local-files/`` under the image root,
``/data/upload/`` under the upload root: Label Studio spends some 16 core-ms serving an image,
see docs/benchmarks.md); a local path (or ``file:`` URL) only to a regular file under the image
root, links resolved first; other http(s) URLs only to hosts on the allow-list, never following
redirects, and never to a loopback, private or link-local address unless that address itself
is allow-listed.
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import stat
import threading
import time
import weakref
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import SplitResult, parse_qs, unquote, urlsplit

from planner.errors import AuthError, ConfigError, TransientError, UnreachableError
from workers.curl import Answer, Connections, FetchError, Get, request
from workers.references import STORAGE_SCHEMES, is_resolver, stored_uri

MAX_BYTES = 64 * 1024 * 1024
UPLOAD_PREFIX = "/data/upload/"
"""Label Studio's URL of a file uploaded to it; the file lies under its ``media/upload``."""

TRANSIENT_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
REDIRECT_STATUS = frozenset({301, 302, 303, 307, 308})
ADDRESS_TTL_S = 60.0
"""How long the checked address of an allow-listed host serves its images before it is looked
up again: a lookup an image costs more than the fetch where the resolver is a network away.
Only a checked address is ever connected to, so a rebinding DNS gains nothing meanwhile."""


class ImageError(Exception):
    """The image cannot be scored; ``str()`` says why (recorded as the task's reason).

    ``transient``: the server may answer later (timeout, 5xx, 429); such a task is left
    unscored and its chunk retried, rather than recorded as unscorable for good.
    """

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient

    def __reduce__(self) -> tuple[object, ...]:
        # DataLoader workers pickle errors; keep the flag across the process boundary
        return (_image_error, (str(self), self.transient))


def _image_error(message: str, transient: bool) -> ImageError:
    return ImageError(message, transient=transient)


if TYPE_CHECKING:  # finalize is generic for the type checker only
    _Closer = weakref.finalize[[], "ImageSource"]
    """Closes a source's connections in its process: called by ``close``, or when it goes."""


@dataclass(frozen=True, slots=True, weakref_slot=True)
class ImageSource:
    """Where images may come from."""

    label_studio_url: str | None = None
    label_studio_token: str | None = field(default=None, repr=False)
    image_root: Path | None = None
    # Label Studio's upload folder (``<its data dir>/media/upload``): ``/data/upload/P/NAME``
    # is read from ``upload_root/P/NAME`` instead of asking the server
    upload_root: Path | None = None
    allowed_hosts: tuple[str, ...] = ()
    timeout_s: float = 30.0
    # the access token of a personal access token, refreshed when the server answers 401
    _access: dict[str, str] = field(default_factory=dict, compare=False, repr=False)
    # an allow-listed host's checked address and until when it serves (ADDRESS_TTL_S)
    _addresses: dict[str, tuple[str, float]] = field(
        default_factory=dict, compare=False, repr=False
    )
    # this process's curl handles (DataLoader workers get their own), their connections kept
    # alive between images (a TCP and TLS handshake per image would cost more than decoding
    # it) until ``close``
    _clients: dict[int, tuple[Connections, _Closer]] = field(
        default_factory=dict, compare=False, repr=False
    )
    # decoding threads share the source: the first reads of a run must not each build one
    _lock: threading.Lock = field(default_factory=threading.Lock, compare=False, repr=False)

    def __reduce__(self) -> tuple[object, ...]:
        # what crosses to a DataLoader worker: the settings, not the caches or clients
        fields_ = (self.label_studio_url, self.label_studio_token, self.image_root)
        return (ImageSource, (*fields_, self.upload_root, self.allowed_hosts, self.timeout_s))

    def _connections(self) -> Connections:
        pid = os.getpid()
        with self._lock:
            if pid not in self._clients:
                connections = Connections(self.timeout_s, MAX_BYTES)
                # a source dropped without ``close`` (an error held in a traceback, say)
                # closes its connections when it goes
                closer = weakref.finalize(self, connections.close)
                self._clients[pid] = (connections, closer)
            return self._clients[pid][0]

    def close(self) -> None:
        """Close this process's kept-alive connections; a later ``read`` opens new ones."""
        entry = self._clients.pop(os.getpid(), None)
        if entry is not None:
            entry[1]()  # a finalizer runs once: the source's going will not close it again

    def read(self, reference: str) -> bytes:
        """The image's bytes, or ``ImageError`` with the reason. What would fail every image
        alike is raised as the chunk's error instead: ``AuthError`` when Label Studio refuses
        the token (401 or 403), ``TransientError`` when a personal access token cannot be
        refreshed for now."""
        if not isinstance(reference, str) or not reference:
            raise ImageError("the task has no image reference")
        parts = _split(reference)
        if parts.scheme in STORAGE_SCHEMES:
            raise ImageError(
                f"{reference} is a cloud storage object: it is read through Label Studio's "
                "/tasks/<id>/resolve/, which needs its task (see workers.references)"
            )
        if is_resolver(parts):
            return self._from_storage(reference, parts)
        if parts.scheme in ("", "file") and parts.path.startswith("/data/local-files"):
            return self._local_files(parts.query, reference)
        upload = uploaded(parts)
        if upload is not None and self.upload_root is not None:
            return _under(self.upload_root, upload, reference, "workers.upload_root")
        if parts.scheme in ("", "file") and parts.path.startswith("/data/"):
            return self._from_label_studio(reference)
        if parts.scheme in ("", "file"):
            return self._under_root(parts.path, reference)
        if parts.scheme in ("http", "https"):
            return self._http(reference, parts)
        raise ImageError(f"unsupported image reference scheme {parts.scheme!r}")

    def read_many(
        self, references: Sequence[str], *, at_once: int
    ) -> Generator[tuple[int, bytes | ImageError], None, None]:
        """Each of ``references``' index and its image's bytes (or ``ImageError``), as
        ``read`` gives them, in the order they come: the ones a server sends (Label Studio,
        an allow-listed host) fetched ``at_once`` at a time on this thread
        (:class:`workers.curl.Transfers`), then the others read one after another. What
        ``read`` raises for the chunk (a refused token) is raised here too."""
        gets: list[Get] = []
        asked: list[int] = []
        others: list[int] = []
        for index, reference in enumerate(references):
            try:
                get = self._served(reference)
            except ImageError as exc:  # a host off the allow-list, say
                yield index, exc
                continue
            if get is None:
                others.append(index)
            else:
                gets.append(get)
                asked.append(index)
        if gets:
            transfers = self._connections().transfers()
            for position, outcome in transfers.fetch(gets, limit=MAX_BYTES, at_once=at_once):
                index = asked[position]
                yield index, self._fetched(references[index], gets[position], outcome)
        for index in others:
            yield index, self._read_or_error(references[index])

    def _served(self, reference: str) -> Get | None:
        """The GET ``read`` would send for ``reference`` when a server sends it plainly
        (Label Studio's ``/data/`` paths, an allow-listed host); None for the rest, which
        ``read`` reads (files, cloud storage objects and their redirects, malformed ones)."""
        parts = reference_parts(reference)
        if parts is None or is_resolver(parts) or parts.scheme in STORAGE_SCHEMES:
            return None
        if parts.scheme in ("http", "https"):
            return self._http_get(reference, parts)
        if parts.scheme not in ("", "file") or not parts.path.startswith("/data/"):
            return None
        if not self.label_studio_url or self.local_file(reference) is not None:
            return None
        return Get(self.label_studio_url.rstrip("/") + reference, self._auth())

    def _fetched(
        self, reference: str, get: Get, outcome: Answer | FetchError
    ) -> bytes | ImageError:
        """The image ``outcome`` brings for ``reference``, or why not. Label Studio refusing
        it is read again with ``read``, which renews an expired access token or raises the
        token's refusal for the chunk."""
        if isinstance(outcome, FetchError):
            return _not_fetched(outcome, reference)
        try:
            return _body(outcome, reference)
        except _RefusedError as refused:
            if get.connect_to is not None:  # an allow-listed host's refusal: the image's
                return refused
            return self._read_or_error(reference)
        except ImageError as exc:
            return exc

    def _read_or_error(self, reference: str) -> bytes | ImageError:
        try:
            return self.read(reference)
        except ImageError as exc:
            return exc

    def local_file(self, reference: str) -> str | None:
        """The file ``read`` reads for ``reference``, without resolving links (``read`` still
        refuses a path outside the image root); None where a server sends the image, or
        ``read`` takes no such reference."""
        parts = reference_parts(reference)
        if parts is None or parts.scheme not in ("", "file") or is_resolver(parts):
            return None
        if parts.path.startswith("/data/local-files"):
            relative = _relative(parts.query)
            if self.image_root is None or not relative:
                return None  # Label Studio serves it
            return os.path.join(self.image_root, relative)
        upload = uploaded(parts)
        if upload is not None and self.upload_root is not None:
            return os.path.join(self.upload_root, upload)
        if parts.path.startswith("/data/") or self.image_root is None:
            return None
        return os.path.join(self.image_root, parts.path)

    def remote(self, reference: str) -> bool:
        """Whether ``read`` waits on a server for ``reference`` (an allow-listed host, or
        Label Studio serving it), so reading several at once pays; a local file is read
        where it is asked for (a thread an image costs more than reading it)."""
        parts = reference_parts(reference)
        if parts is None:  # refused by read, no wait
            return False
        if parts.scheme in ("http", "https") or is_resolver(parts):
            return True
        served = parts.path.startswith("/data/") and self.local_file(reference) is None
        return parts.scheme in ("", "file") and served

    def _local_files(self, query: str, reference: str) -> bytes:
        relative = _relative(query)
        if self.image_root is not None and relative:
            return self._under_root(relative, reference)
        return self._from_label_studio(reference)

    def _under_root(self, path: str, reference: str) -> bytes:
        if self.image_root is None:
            raise ImageError(
                f"{reference} is a local path, read only under workers.image_root, which is "
                "not set; set it to the folder holding the images"
            )
        return _under(self.image_root, path, reference)

    def _from_label_studio(self, reference: str, shown: str | None = None) -> bytes:
        """``reference`` (a path on the server) from Label Studio with the token; ``shown``:
        what errors name instead."""
        shown = shown or reference
        if not self.label_studio_url:
            raise ImageError(f"{shown} is a Label Studio URL but no server is configured")
        url = self.label_studio_url.rstrip("/") + reference
        try:
            return _get(self._connections(), url, self._auth(), shown=shown)
        except _RefusedError as refused:
            if refused.status != 401 or not _is_jwt(self.label_studio_token):
                raise _token_refused(refused.status, shown, self.label_studio_token) from None
        self._access.clear()  # the access token expired: exchange the refresh token again
        try:
            return _get(self._connections(), url, self._auth(), shown=shown)
        except _RefusedError as refused:
            raise _token_refused(refused.status, shown, self.label_studio_token) from None

    def _from_storage(self, reference: str, parts: SplitResult) -> bytes:
        """A cloud storage object through Label Studio's resolver: the bytes it proxies (the
        storage's "Use pre-signed URLs" off), or the pre-signed URL it redirects to, fetched
        without the token and only from an allow-listed host, as any other http(s) image."""
        stored = stored_uri(parts.query) or reference
        try:
            return self._from_label_studio(reference, shown=stored)
        except _RedirectError as moved:
            target = _split(moved.location)
            host = (target.hostname or "").lower()
            if target.scheme not in ("http", "https") or host not in self.allowed_names():
                raise ImageError(
                    f"Label Studio sends {stored} from a pre-signed URL on {host or '?'!r}, "
                    "which is not on workers.allowed_hosts: add that host there, or turn off "
                    '"Use pre-signed URLs" on the project\'s cloud storage so that Label '
                    "Studio sends the image itself"
                ) from None
            # the pre-signed URL carries a credential: errors name the object instead
            return self._http(moved.location, target, shown=stored)
        except _AnswerError as answer:
            if answer.status != 404:
                raise
            raise ImageError(
                f"Label Studio finds no import storage of this project holding {stored} "
                "(404): add its bucket as a cloud storage of the project, or the object is gone"
            ) from None

    def _auth(self) -> list[str]:
        token = self.label_studio_token
        if not token:
            return []
        if not _is_jwt(token):
            return [f"Authorization: Token {token}"]
        if "access" not in self._access:
            base_url = self.label_studio_url or ""
            self._access["access"] = _refresh(self._connections(), base_url, token)
        return [f"Authorization: Bearer {self._access['access']}"]

    def allowed_names(self) -> set[str]:
        """The allow-listed hosts (and addresses), lowercased as ``hostname`` gives them."""
        return {h.lower() for h in self.allowed_hosts}

    def _http(self, url: str, parts: SplitResult, shown: str | None = None) -> bytes:
        get = self._http_get(url, parts)
        return _get(self._connections(), get.url, [], shown=shown or url, connect_to=get.connect_to)

    def _http_get(self, url: str, parts: SplitResult) -> Get:
        """The GET of an http(s) image, or ``ImageError`` for a host not on the allow-list
        (or resolving to an internal address not on it)."""
        host = (parts.hostname or "").lower()
        allowed = self.allowed_names()
        if host not in allowed:
            raise ImageError(f"host {host!r} is not on the allow-list (workers.allowed_hosts)")
        try:
            number = parts.port
        except ValueError as exc:  # not a number, or past 65535
            raise ImageError(f"{url} is not a valid URL: {exc}") from None
        address = self._address(host, allowed)
        # connect to the checked address, not a second lookup a rebinding DNS could answer
        # differently; the name still goes in the Host header and the TLS server name. The
        # URL is rebuilt from its parts: no userinfo (never sent) and no fragment
        name = f"[{host}]" if ":" in host else host
        port = "" if number is None else f":{number}"
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        return Get(f"{parts.scheme}://{name}{port}{path}", [], connect_to=address)

    def _address(self, host: str, allowed: set[str]) -> str:
        """``host``'s checked address: the one looked up less than ``ADDRESS_TTL_S`` ago, or
        a new lookup's (a refused or failed lookup is not kept)."""
        now = time.monotonic()
        known = self._addresses.get(host)
        if known is not None and now < known[1]:
            return known[0]
        address = _public_address(host, allowed)
        self._addresses[host] = (address, now + ADDRESS_TTL_S)
        return address


def reference_parts(reference: object) -> SplitResult | None:
    """``reference``'s URL parts; None for no reference or one ``read`` refuses as
    malformed (it says why)."""
    if not isinstance(reference, str) or not reference:
        return None
    try:
        return _split(reference)
    except ImageError:
        return None


def _split(reference: str) -> SplitResult:
    """``reference``'s parts, or ``ImageError`` for a malformed URL (an unclosed ``[``) or
    text no URL or file name holds (a lone surrogate, which JSON can carry)."""
    try:
        reference.encode()
        return urlsplit(reference)
    except ValueError as exc:
        raise ImageError(f"{reference!r} is not a valid URL: {exc}") from None


def _resolved(path: Path, reference: str) -> Path:
    """``path`` with its links resolved, or ``ImageError`` for a name no file can have (a
    NUL byte)."""
    try:
        return path.resolve()
    except ValueError:
        raise ImageError(f"{reference!r} is not a valid file name") from None


def _under(root: Path, path: str, reference: str, what: str = "the image root") -> bytes:
    """The file at ``path`` (relative to ``root``, or absolute) when it lies under the root
    once its links are resolved. A path outside is refused with one reason, whether or not a
    file is there: task data must not learn what the disk holds.

    Where Linux names an open file's path (``/proc/self/fd``), a path under the root as
    written is opened and its bytes returned when the file opened lies under the root: one
    ``readlink`` instead of resolving every folder of the path, and the root's resolution
    kept (33 us an image of 2.5 kB against 14 here, the read included). Anything else (not
    there, outside, no ``/proc``) is judged with every link resolved first, as before."""
    resolved_root = _root_path(root)
    inside = resolved_root.rstrip(os.sep) + os.sep  # strings: Path's methods cost 10 us here
    target = os.path.normpath(os.path.join(resolved_root, path))  # ".." taken as written
    if _OPEN_FILES and target.startswith(inside):
        try:
            descriptor = os.open(target, _READ_FLAGS)
        except (OSError, ValueError):  # why not, as the path resolves (below)
            pass
        else:
            try:
                opened = os.readlink(f"{_OPEN_FILES}/{descriptor}")
            except OSError:  # /proc gone meanwhile (a container's): judged below
                opened = ""
            if opened.startswith(inside):
                return _read_open(descriptor, opened)
            os.close(descriptor)
    resolved = _resolved(Path(resolved_root) / path, reference)
    if not resolved.is_relative_to(resolved_root):
        raise ImageError(f"{reference} points outside {what}; not read")
    return _read_file(resolved)


_OPEN_FILES = "/proc/self/fd" if os.path.isdir("/proc/self/fd") else ""
"""Linux: each open file descriptor, a link to the file's path with its links resolved."""
_READ_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC
"""Not blocking: opening a FIFO would wait for a writer, holding the worker."""
_ROOTS: dict[Path, tuple[int, int, str]] = {}


def _root_path(root: Path) -> str:
    """``root`` with its links resolved, kept while it is the same folder (device and inode:
    a link re-pointed to another folder is resolved again); a root not there, every time."""
    try:
        facts = os.stat(root)
    except (OSError, ValueError):
        return os.path.realpath(root)
    known = _ROOTS.get(root)
    if known is None or known[:2] != (facts.st_dev, facts.st_ino):
        known = _ROOTS[root] = (facts.st_dev, facts.st_ino, os.path.realpath(root))
    return known[2]


def uploaded(parts: SplitResult) -> str | None:
    """The path under Label Studio's upload folder of a ``/data/upload/`` reference (its URL
    is percent-encoded, as Django writes a file's URL), None for any other reference."""
    if parts.scheme not in ("", "file") or not parts.path.startswith(UPLOAD_PREFIX):
        return None
    return unquote(parts.path.removeprefix(UPLOAD_PREFIX)) or None


def _relative(query: str) -> str:
    """The path under the image root of a ``/data/local-files/`` reference's query."""
    return (parse_qs(query).get("d") or [""])[0]


def _public_address(host: str, allowed: set[str]) -> str:
    """The first of ``host``'s addresses in the resolver's order (its preference: IPv4
    first on a worker without IPv6, say); refused when any is internal and not itself
    allow-listed."""
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError) as exc:
        raise ImageError(f"cannot resolve {host!r}: {exc}", transient=True) from None
    addresses = list(dict.fromkeys(str(info[4][0]).split("%")[0] for info in infos))
    for address in addresses:
        ip = ipaddress.ip_address(address)
        mapped = getattr(ip, "ipv4_mapped", None)
        effective = mapped if mapped is not None else ip
        internal = not effective.is_global or effective.is_multicast
        if internal and address not in allowed and str(effective) not in allowed:
            raise ImageError(f"host {host!r} resolves to the internal address {address}; refused")
    if not addresses:
        raise ImageError(f"cannot resolve {host!r}: no address", transient=True)
    return addresses[0]


class _AnswerError(ImageError):
    """The server answered neither the image nor a status worth another try."""

    def __init__(self, url: str, status: int) -> None:
        super().__init__(f"fetching {url} answered {status}")
        self.status = status


class _RedirectError(ImageError):
    """The server answered with a redirect, which ``_get`` never follows."""

    def __init__(self, url: str, location: str) -> None:
        super().__init__(f"{url} redirects to {location}; refused")
        self.location = location


class _RefusedError(_AnswerError):
    """The server answered 401 or 403: from an allow-listed host, the image's own failure;
    from Label Studio, the token's (:func:`_token_refused`), after one renewal of an expired
    access token on a 401."""


def _token_refused(status: int, reference: str, token: str | None) -> AuthError:
    """Label Studio refusing an image is a refusal of the token (or of its user's rights),
    which every image of the chunk would meet alike: the chunk fails with what to fix, and
    no task is marked unscorable for it."""
    if not token:
        return AuthError(
            f"Label Studio answered {status} for {reference}: set label_studio.token (the "
            "workers read its images with it)"
        )
    kind = "personal access token" if _is_jwt(token) else "token"
    return AuthError(
        f"Label Studio answered {status} for {reference}: it refused the {kind}; check "
        "label_studio.token and that its user may read the project (a 403 on "
        "/data/local-files/ may also mean the server does not serve local files)"
    )


def _is_jwt(token: str | None) -> bool:
    """A personal access token is a JWT refresh token (three dot-separated parts)."""
    return bool(token) and str(token).count(".") == 2


def _refresh(connections: Connections, base_url: str, refresh_token: str) -> str:
    """A short-lived access token for a personal access token (Label Studio's refresh).

    Whatever goes wrong here goes wrong for every image alike, so it is the chunk's error,
    not an image's: ``TransientError`` while the server cannot answer (unreachable, 5xx,
    429), ``AuthError`` when it refuses the token, ``ConfigError`` when what answers is not
    Label Studio's refresh.
    """
    url = base_url.rstrip("/") + "/api/token/refresh/"
    post = json.dumps({"refresh": refresh_token}).encode()
    headers = ["Content-Type: application/json"]
    try:
        answer = request(connections.handle(), url, headers, limit=MAX_BYTES, post=post)
    except FetchError as exc:
        if exc.transient:
            raise UnreachableError(f"cannot reach {url} to refresh the token: {exc}") from None
        raise ConfigError(f"cannot refresh the token at {url}: {exc}") from None
    if answer.status in TRANSIENT_STATUS:
        raise TransientError(f"refreshing the token at {url} answered {answer.status}")
    try:
        tokens = json.loads(answer.body or b"") if answer.status == 200 else {}
    except ValueError:  # not JSON
        raise ConfigError(
            f"cannot refresh the token at {url}: the answer is not JSON; check label_studio.url"
        ) from None
    if not isinstance(tokens, dict) or not isinstance(tokens.get("access"), str):
        raise AuthError(
            f"Label Studio refused the personal access token ({answer.status}); "
            "check label_studio.token"
        )
    access: str = tokens["access"]
    return access


def _read_file(path: Path) -> bytes:
    try:
        descriptor = os.open(path, _READ_FLAGS)
    except FileNotFoundError:
        raise ImageError(f"image file {path} does not exist") from None
    except OSError as exc:
        raise ImageError(f"cannot read image file {path}: {exc.strerror}") from None
    return _read_open(descriptor, path)


def _read_open(descriptor: int, path: Path | str) -> bytes:
    """The bytes of ``path``, open as ``descriptor`` (closed here), or why not."""
    try:
        facts = os.fstat(descriptor)
    except OSError as exc:
        os.close(descriptor)
        raise ImageError(f"cannot read image file {path}: {exc.strerror}") from None
    if not stat.S_ISREG(facts.st_mode):  # a FIFO, a device, a folder
        os.close(descriptor)
        raise ImageError(f"image file {path} is not a regular file")
    try:
        with open(descriptor, "rb") as handle:
            # a read sized to the file: one of MAX_BYTES would allocate 64 MiB an image
            # (tripling the read of a small one); a file grown since is read on to the limit
            expected = min(facts.st_size, MAX_BYTES)
            data = handle.read(expected + 1)
            if len(data) > expected:
                data += handle.read(MAX_BYTES + 1 - len(data))
    except OSError as exc:
        raise ImageError(f"cannot read image file {path}: {exc.strerror}") from None
    if len(data) > MAX_BYTES:
        raise ImageError(f"image file {path} is larger than {MAX_BYTES} bytes")
    return data


def _get(
    connections: Connections,
    url: str,
    headers: list[str],
    *,
    shown: str | None = None,
    connect_to: str | None = None,
) -> bytes:
    """The body of a GET of ``url`` (on this thread's kept-alive connections), at most
    ``MAX_BYTES`` of it read; ``shown``: the URL errors name (the task's, not the rebuilt
    one); ``connect_to``: the checked address to connect to."""
    shown = shown or url
    try:
        answer = request(connections.handle(), url, headers, limit=MAX_BYTES, connect_to=connect_to)
    except FetchError as exc:
        raise _not_fetched(exc, shown) from None
    return _body(answer, shown)


def _not_fetched(exc: FetchError, shown: str) -> ImageError:
    """The image's error for a request that got no answer."""
    if exc.tls:  # a certificate fixed on the server lets a later retry through
        message = f"cannot fetch {shown}: TLS failed ({exc}); check the server's certificate"
        return ImageError(message, transient=True)
    return ImageError(f"cannot fetch {shown}: {exc}", transient=exc.transient)


def _body(answer: Answer, shown: str) -> bytes:
    """The image an answer carries, or why not (``_RefusedError`` for a 401 or 403)."""
    status = answer.status
    if status in REDIRECT_STATUS:
        raise _RedirectError(shown, answer.location or "")
    if status in (401, 403):
        raise _RefusedError(shown, status)
    if status in TRANSIENT_STATUS:
        raise ImageError(f"fetching {shown} answered {status}", transient=True)
    if status != 200:
        raise _AnswerError(shown, status)
    if answer.body is None:
        raise ImageError(f"{shown} is larger than {MAX_BYTES} bytes")
    return answer.body
