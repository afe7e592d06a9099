"""Image fetching never reaches an address outside the allow-list: loopback spelled every way,
names resolving to loopback, and redirects. Real HTTP servers on loopback count every request,
so "refused" means no byte ever left for them."""

from __future__ import annotations

import ipaddress
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace
from urllib.parse import unquote

import pytest

from workers.images import ImageError, ImageSource

PNG = b"\x89PNG\r\n\x1a\n"


@dataclass
class Server:
    """A loopback HTTP server that answers ``/image.png`` and redirects ``/to?<url>``."""

    port: int
    hits: list[str] = field(default_factory=list)


def _serve(family: socket.AddressFamily, host: str) -> Iterator[Server]:
    class Httpd(ThreadingHTTPServer):
        address_family = family

    box: list[Server] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            box[0].hits.append(self.path)
            if self.path.startswith("/to?"):
                self.send_response(302)
                self.send_header("Location", self.path[4:])
                self.end_headers()
                return
            self.send_response(200)
            self.end_headers()
            self.wfile.write(PNG)

        def log_message(self, *args: object) -> None:
            return

    httpd = Httpd((host, 0), Handler)
    box.append(Server(int(httpd.server_address[1])))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield box[0]
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def v4() -> Iterator[Server]:
    yield from _serve(socket.AF_INET, "127.0.0.1")


@pytest.fixture
def v6() -> Iterator[Server]:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    yield from _serve(socket.AF_INET6, "::1")


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


LOOPBACK_V4 = (
    "127.0.0.1",
    "127.1",  # inet_aton's short form
    "0x7f000001",  # hex
    "2130706433",  # one decimal number
    "0177.0.0.1",  # octal
    "127.000.000.001",
    "[::ffff:127.0.0.1]",  # IPv4-mapped IPv6 (dual-stack sockets reach the IPv4 server)
    "localhost",  # a name resolving to loopback
    "0.0.0.0",  # noqa: S104 - "this host": connecting to it reaches loopback servers
    "0",
)


@pytest.mark.parametrize("host", LOOPBACK_V4)
def test_loopback_spelled_any_way_is_refused_off_the_allow_list(v4: Server, host: str) -> None:
    source = ImageSource(allowed_hosts=("images.example.org",))
    with pytest.raises(ImageError, match="not on the allow-list"):
        source.read(f"http://{host}:{v4.port}/image.png")
    assert v4.hits == []


@pytest.mark.parametrize("host", [h for h in LOOPBACK_V4 if not _is_address(h.strip("[]"))])
def test_loopback_is_refused_even_when_its_spelling_is_allow_listed(v4: Server, host: str) -> None:
    """Allow-listing a spelling is not allow-listing the internal address it resolves to (only
    an address allow-listed as itself is reached: an internal image server on purpose)."""
    source = ImageSource(allowed_hosts=(host,))
    with pytest.raises(ImageError, match="internal address"):
        source.read(f"http://{host}:{v4.port}/image.png")
    assert v4.hits == []


def test_ipv6_loopback_is_refused(v6: Server) -> None:
    with pytest.raises(ImageError, match="not on the allow-list"):
        ImageSource(allowed_hosts=("images.example.org",)).read(f"http://[::1]:{v6.port}/x.png")
    names = [n for n in ("ip6-localhost", "ip6-loopback", "localhost6") if _resolves_to(n, "::1")]
    for host in ("0:0:0:0:0:0:0:1", "::1", *names[:1]):
        spelled = f"[{host}]" if ":" in host else host
        # "::1" allow-listed by name but reached through another spelling is still checked
        allowed = ("0:0:0:0:0:0:0:1",) if host == "::1" else (host,)
        with pytest.raises(ImageError, match=r"internal address|not on the allow-list"):
            ImageSource(allowed_hosts=allowed).read(f"http://{spelled}:{v6.port}/image.png")
    assert v6.hits == []


def test_userinfo_and_fragment_tricks_are_judged_by_the_real_host(v4: Server) -> None:
    source = ImageSource(allowed_hosts=("images.example.org",))
    for url in (
        f"http://images.example.org@127.0.0.1:{v4.port}/image.png",
        f"http://images.example.org:x@127.0.0.1:{v4.port}/image.png",
        f"http://127.0.0.1:{v4.port}#@images.example.org/image.png",
        f"http://127.0.0.1:{v4.port}\\@images.example.org/image.png",
    ):
        with pytest.raises(ImageError):
            source.read(url)
    assert v4.hits == []


def test_a_redirect_to_loopback_is_never_followed(v4: Server, v6: Server) -> None:
    """An allowed server (internal on purpose, allow-listed by address) redirects elsewhere."""
    source = ImageSource(allowed_hosts=("127.0.0.1",))
    assert source.read(f"http://127.0.0.1:{v4.port}/image.png") == PNG
    v4.hits.clear()
    targets = (
        f"http://127.0.0.1:{v4.port}/image.png",  # itself: any redirect is refused
        f"http://127.1:{v4.port}/image.png",
        f"http://[::1]:{v6.port}/image.png",
        f"http://localhost:{v4.port}/image.png",
        "http://169.254.169.254/latest/meta-data/",
    )
    for target in targets:
        with pytest.raises(ImageError, match=r"redirects to .*; refused"):
            source.read(f"http://127.0.0.1:{v4.port}/to?{target}")
    # the brackets of an IPv6 literal are sent percent-encoded (not allowed raw in a query)
    sent = [unquote(hit) for hit in v4.hits]
    assert sent == [f"/to?{t}" for t in targets], "only the redirecting request was made"
    assert v6.hits == []


def _resolves_to(name: str, address: str) -> bool:
    try:
        infos = socket.getaddrinfo(name, None)
    except socket.gaierror:
        return False
    return any(info[4][0] == address for info in infos)


def test_a_checked_address_is_reused_for_a_minute_then_looked_up_again(
    v4: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One lookup per host a minute, not one an image; a rebinding DNS answering an internal
    address at the next lookup is refused then. The first answer is loopback, allowed here by
    address (an internal server on purpose), so the images come from the real server."""
    answers = ["127.0.0.1", "169.254.169.254"]
    lookups: list[str] = []

    def resolver(host: str, *args: object, **kwargs: object) -> list[tuple[object, ...]]:
        lookups.append(host)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (answers[len(lookups) - 1], 0))]

    clock = [1000.0]
    # the workers' lookup only: the connection's own (urllib3) stays the real resolver's
    fake_dns = SimpleNamespace(
        getaddrinfo=resolver, IPPROTO_TCP=socket.IPPROTO_TCP, gaierror=socket.gaierror
    )
    monkeypatch.setattr("workers.images.socket", fake_dns)
    monkeypatch.setattr("workers.images.time.monotonic", lambda: clock[0])
    source = ImageSource(allowed_hosts=("images.example.org", "127.0.0.1"))
    url = f"http://images.example.org:{v4.port}/image.png"
    try:
        for _ in range(3):
            assert source.read(url) == PNG
        assert lookups == ["images.example.org"], "one lookup for three images"
        clock[0] += 61
        with pytest.raises(ImageError, match=r"internal address 169\.254\.169\.254"):
            source.read(url)
    finally:
        source.close()
    assert len(lookups) == 2, "looked up again after a minute, and refused"
    assert v4.hits == ["/image.png"] * 3


def _resolving_to(monkeypatch: pytest.MonkeyPatch, answers: list[str]) -> None:
    """The workers' lookup answers ``answers``, in that order (the connection is pinned to
    the address it picks, so this is the only lookup made)."""

    def resolver(host: str, *args: object, **kwargs: object) -> list[tuple[object, ...]]:
        family = {4: socket.AF_INET, 6: socket.AF_INET6}
        kind = [family[ipaddress.ip_address(a).version] for a in answers]
        return [(f, socket.SOCK_STREAM, 6, "", (a, 0)) for f, a in zip(kind, answers, strict=True)]

    fake = SimpleNamespace(
        getaddrinfo=resolver, IPPROTO_TCP=socket.IPPROTO_TCP, gaierror=socket.gaierror
    )
    monkeypatch.setattr("workers.images.socket", fake)


def test_the_resolvers_order_is_kept_ipv4_first_where_it_puts_it_first(
    v4: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A dual-stack host on a worker without IPv6: the resolver puts the IPv4 address first;
    sorting the answers put "0:0:...:1" (and a public "2606:..." before "93....") first."""
    _resolving_to(monkeypatch, ["127.0.0.1", "0:0:0:0:0:0:0:1"])
    source = ImageSource(allowed_hosts=("images.example.org", "127.0.0.1", "::1"))
    try:
        assert source.read(f"http://images.example.org:{v4.port}/image.png") == PNG
    finally:
        source.close()
    # every address is still checked, not only the one connected to
    _resolving_to(monkeypatch, ["127.0.0.1", "fd00::1"])  # the second a private IPv6
    source = ImageSource(allowed_hosts=("images.example.org", "127.0.0.1"))
    with pytest.raises(ImageError, match=r"internal address fd00::1"):
        source.read(f"http://images.example.org:{v4.port}/image.png")
    assert v4.hits == ["/image.png"], "no request for the refused host"
