"""Image references: what is read, and what is refused with a reason."""

from __future__ import annotations

import gc
import json
import os
import socket
import threading
import time
import tracemalloc
from collections.abc import Iterator
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from torch import nn

from planner.errors import AuthError, TransientError
from tests.unit.workers.conftest import KeptAliveServer
from workers.images import ImageError, ImageSource
from workers.inference import score_items
from workers.pixels import pixel_key


@pytest.fixture
def server(png: Path) -> Iterator[str]:
    body = png.read_bytes()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/image.png":
                self.send_response(200)
                self.end_headers()
                self.wfile.write(body)
            else:
                self.send_response(302)
                self.send_header("Location", "http://169.254.169.254/latest/meta-data")
                self.end_headers()

        def log_message(self, *args: object) -> None:
            return

    yield from _serving(Handler)


@pytest.fixture(params=["proc", "resolved"])
def lookup(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """How a file under a root is checked: the opened file's path from Linux's /proc, or
    every link of the path resolved first (where there is no /proc)."""
    if request.param == "resolved":
        monkeypatch.setattr("workers.images._OPEN_FILES", "")
    elif not os.path.isdir("/proc/self/fd"):
        pytest.skip("needs Linux's /proc")
    return str(request.param)


def _serving(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """``handler`` serving on 127.0.0.1 until the fixture ends; yields its URL."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_local_paths_and_label_studio_local_files(png: Path, lookup: str) -> None:
    source = ImageSource(image_root=png.parent)
    assert source.read(str(png)) == png.read_bytes()
    assert source.read(f"/data/local-files/?d={png.name}") == png.read_bytes()
    with pytest.raises(ImageError, match="outside the image root"):
        source.read("/data/local-files/?d=../../etc/passwd")
    with pytest.raises(ImageError, match="does not exist"):
        source.read(str(png.parent / "missing.png"))


def test_a_local_path_is_read_only_under_the_image_root(
    tmp_path: Path, png: Path, lookup: str
) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "in.png").write_bytes(png.read_bytes())
    (root / "link.png").symlink_to(png)  # png lies beside the root, not under it
    source = ImageSource(image_root=root)
    assert source.read("in.png") == source.read(str(root / "in.png")) == png.read_bytes()
    assert source.read(f"file://{root / 'in.png'}") == png.read_bytes()
    outside = (
        str(png),  # there
        str(tmp_path / "absent.png"),  # not there: the same answer
        f"file://{png}",
        "/etc/passwd",
        str(root / ".." / png.name),
        str(root / "link.png"),
    )
    for reference in outside:
        with pytest.raises(ImageError) as refused:
            source.read(reference)
        assert str(refused.value) == f"{reference} points outside the image root; not read"
        assert not refused.value.transient
    with pytest.raises(ImageError, match=r"workers\.image_root, which is not set") as unset:
        ImageSource().read(str(png))
    assert not unset.value.transient
    assert pixel_key(ImageSource(), str(png), 32) is None, "nothing to store: read refuses it"


def test_label_studio_uploads_are_read_under_the_upload_root_with_no_request(
    tmp_path: Path, png: Path, lookup: str
) -> None:
    """``/data/upload/P/NAME`` is ``upload_root/P/NAME`` (percent-decoded, as Django writes a
    file's URL); the server, a closed port here, is never asked. Outside the root: refused."""
    upload = tmp_path / "media" / "upload"
    (upload / "3").mkdir(parents=True)
    (upload / "3" / "a1b2-my car.png").write_bytes(png.read_bytes())
    with socket.socket() as held:  # bound, not listening: a request would be refused
        held.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{held.getsockname()[1]}"
        source = ImageSource(label_studio_url=closed, label_studio_token="t", upload_root=upload)
        reference = "/data/upload/3/a1b2-my%20car.png"
        assert source.read(reference) == png.read_bytes()
        assert source.local_file(reference) == str(upload / "3" / "a1b2-my car.png")
        assert not source.remote(reference)
        assert [body for _, body in source.read_many([reference], at_once=4)] == [png.read_bytes()]
        for outside in ("/data/upload/../../../etc/passwd", "/data/upload/%2E%2E/x.png"):
            with pytest.raises(ImageError, match=r"outside workers\.upload_root; not read"):
                source.read(outside)
        with pytest.raises(ImageError, match="does not exist"):
            source.read("/data/upload/3/gone.png")
        # without the root the server sends it (refused here: it is not listening)
        served = ImageSource(label_studio_url=closed, label_studio_token="t")
        assert served.remote(reference)
        with pytest.raises(ImageError):
            served.read(reference)
    # the root is in the pixel cache's key, as the image root is
    (tmp_path / "other" / "3").mkdir(parents=True)
    other = ImageSource(upload_root=tmp_path / "other")
    copy = tmp_path / "other" / "3" / "a1b2-my car.png"
    copy.write_bytes(png.read_bytes())
    first = (upload / "3" / "a1b2-my car.png").stat()
    os.utime(copy, ns=(first.st_atime_ns, first.st_mtime_ns))  # only the root tells them apart
    assert pixel_key(source, reference, 32) != pixel_key(other, reference, 32)
    assert pixel_key(source, reference, 32) is not None


def test_a_folder_linked_from_under_the_root_to_outside_is_outside_file_or_none(
    tmp_path: Path, png: Path, lookup: str
) -> None:
    root, beside = tmp_path / "root", tmp_path / "beside"
    root.mkdir()
    beside.mkdir()
    (beside / "there.png").write_bytes(png.read_bytes())
    (root / "linked").symlink_to(beside)
    (root / "inner").symlink_to(root / "linked")  # a link to a link, still outside
    source = ImageSource(image_root=root)
    for reference in ("linked/there.png", "linked/absent.png", "inner/there.png"):
        with pytest.raises(ImageError) as refused:
            source.read(reference)
        assert str(refused.value) == f"{reference} points outside the image root; not read"
    (root / "kept").mkdir()
    (root / "kept" / "in.png").write_bytes(png.read_bytes())
    (root / "here").symlink_to(root / "kept")  # a link that stays under the root: read
    assert source.read("here/in.png") == png.read_bytes()
    assert source.read("kept/../kept/in.png") == png.read_bytes()
    with pytest.raises(ImageError, match="does not exist"):
        source.read("here/absent.png")


def test_an_open_file_whose_path_linux_cannot_give_is_judged_the_other_way(
    tmp_path: Path, png: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """/proc unmounted under a running worker (here its folder of links, empty): the file is
    read, the link outside refused, and no descriptor is left open."""
    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("needs Linux's /proc")
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "in.png").write_bytes(png.read_bytes())
    (tmp_path / "root" / "out.png").symlink_to(png)

    (tmp_path / "no-proc").mkdir()  # where the open files' links were: nothing there now
    source = ImageSource(image_root=tmp_path / "root")
    before = len(os.listdir("/proc/self/fd"))
    monkeypatch.setattr("workers.images._OPEN_FILES", str(tmp_path / "no-proc"))
    assert source.read("in.png") == png.read_bytes()
    with pytest.raises(ImageError, match="points outside the image root"):
        source.read("out.png")
    monkeypatch.undo()
    assert len(os.listdir("/proc/self/fd")) == before


def test_a_root_given_as_a_link_is_followed_again_once_re_pointed(
    tmp_path: Path, png: Path, lookup: str
) -> None:
    """A worker's image root may be a link an operator re-points to the next copy of the
    images: what it points to now is the root, not what it pointed to at the first read."""
    first, second = tmp_path / "v1", tmp_path / "v2"
    for folder, body in ((first, b"first"), (second, png.read_bytes())):
        folder.mkdir()
        (folder / "a.png").write_bytes(body)
    current = tmp_path / "current"
    current.symlink_to(first)
    source = ImageSource(image_root=current)
    assert source.read("a.png") == b"first"
    assert source.read(str(current / "a.png")) == b"first"
    current.unlink()
    current.symlink_to(second)
    assert source.read("a.png") == png.read_bytes()
    with pytest.raises(ImageError, match="points outside the image root"):
        source.read(str(first / "a.png"))  # the folder it was: outside now


def test_a_fifo_or_a_folder_under_the_root_is_refused_not_waited_on(
    tmp_path: Path, lookup: str
) -> None:
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    source = ImageSource(image_root=tmp_path)
    failed: list[ImageError] = []

    def read() -> None:
        try:
            source.read(str(fifo))
        except ImageError as exc:
            failed.append(exc)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout=10)
    if reader.is_alive():  # a writer lets the blocked open go: no thread left hanging
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        reader.join()
        pytest.fail("opening the FIFO waited for a writer")
    assert [str(e) for e in failed] == [f"image file {fifo} is not a regular file"]
    with pytest.raises(ImageError, match="is not a regular file"):
        source.read(str(tmp_path))


@pytest.mark.parametrize(
    ("reference", "reason"),
    [
        ("http://localhost:99999/x.png", "Port out of range"),
        ("http://localhost:abc/x.png", "Port could not be cast to integer"),
        ("http://[::1/x.png", "Invalid IPv6 URL"),
        ("/data/local-files/?d=a%00.png", "not a valid file name"),
        ("http://localhost/a\ud800.png", "surrogates not allowed"),  # JSON's "\\ud800"
    ],
)
def test_a_malformed_reference_is_refused_for_good(
    tmp_path: Path, reference: str, reason: str
) -> None:
    source = ImageSource(image_root=tmp_path, allowed_hosts=("localhost", "127.0.0.1"))
    with pytest.raises(ImageError, match=reason) as refused:
        source.read(reference)
    assert not refused.value.transient, "the same URL fails the same way on every retry"


def test_an_unparsable_url_has_no_cache_key_and_no_wait() -> None:
    source = ImageSource(allowed_hosts=("::1",))
    for reference in ("http://[::1/x.png", "http://[::1]/\ud800.png"):
        assert pixel_key(source, reference, 32) is None
        assert not source.remote(reference), "read refuses it at once"


def test_http_only_to_allowed_hosts_and_never_a_redirect(server: str) -> None:
    refused = ImageSource(allowed_hosts=("example.org",))
    with pytest.raises(ImageError, match="not on the allow-list"):
        refused.read(f"{server}/image.png")
    allowed = ImageSource(allowed_hosts=("127.0.0.1",))
    assert allowed.read(f"{server}/image.png").startswith(b"\x89PNG")
    with pytest.raises(ImageError, match=r"redirects to http://169\.254\.169\.254"):
        allowed.read(f"{server}/elsewhere")


def test_a_name_resolving_to_loopback_is_refused(server: str) -> None:
    port = server.rsplit(":", 1)[1]
    source = ImageSource(allowed_hosts=("localhost",))
    with pytest.raises(ImageError, match="internal address"):
        source.read(f"http://localhost:{port}/image.png")


def test_label_studio_urls_need_a_server_and_unknown_schemes_are_refused() -> None:
    with pytest.raises(ImageError, match="no server is configured"):
        ImageSource().read("/data/upload/1/x.png")
    with pytest.raises(ImageError, match="scheme 'gopher'"):
        ImageSource().read("gopher://example.org/x")
    with pytest.raises(ImageError, match="no image reference"):
        ImageSource().read("")


def test_the_checked_address_is_the_one_connected_to_with_the_name_as_host(png: Path) -> None:
    body = png.read_bytes()
    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.headers["Host"])
            self.send_response(200 if self.path == "/ok.png" else 503)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            return

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    port = httpd.server_address[1]
    try:
        # localhost is allowed by name and its address by number: an internal server on purpose
        source = ImageSource(allowed_hosts=("localhost", "127.0.0.1", "::1"))
        assert source.read(f"http://localhost:{port}/ok.png") == body
        assert seen == [f"localhost:{port}"]
        with pytest.raises(ImageError, match="answered 503") as failed:
            source.read(f"http://localhost:{port}/busy.png")
        assert failed.value.transient, "a 503 is worth a retry, not an unscorable mark"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_https_goes_to_the_checked_address_with_the_name_as_server_name(
    png: Path, tls_server: tuple[KeptAliveServer, list[str]]
) -> None:
    server, names = tls_server
    source = ImageSource(allowed_hosts=("localhost", "127.0.0.1", "::1"))
    try:
        assert source.read(f"https://localhost:{server.port}/ok.png#part") == png.read_bytes()
    finally:
        source.close()
    assert names == ["localhost"]
    assert server.hosts == [f"localhost:{server.port}"]
    assert server.paths == ["/ok.png"]


def test_a_certificate_for_another_name_is_refused(
    tls_server: tuple[KeptAliveServer, list[str]],
) -> None:
    server, _ = tls_server
    source = ImageSource(allowed_hosts=("127.0.0.1",))  # the address: the name is not localhost
    try:
        with pytest.raises(ImageError, match=r"TLS failed .*check the server's certificate") as no:
            source.read(f"{server.url}/ok.png")
    finally:
        source.close()
    assert no.value.transient, "a certificate put right on the server lets a retry through"
    assert server.paths == [], "no request sent over it"


def test_a_missing_file_is_not_transient(png: Path) -> None:
    with pytest.raises(ImageError) as failed:
        ImageSource(image_root=png.parent).read(str(png.parent / "gone.png"))
    assert not failed.value.transient


def test_a_file_over_the_limit_is_refused_and_one_at_it_read_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("workers.images.MAX_BYTES", 1000)
    (tmp_path / "at.bin").write_bytes(b"a" * 1000)
    (tmp_path / "over.bin").write_bytes(b"o" * 1001)
    source = ImageSource(image_root=tmp_path)
    assert source.read(str(tmp_path / "at.bin")) == b"a" * 1000
    with pytest.raises(ImageError, match="larger than 1000 bytes"):
        source.read(str(tmp_path / "over.bin"))


def test_a_file_longer_than_its_stated_size_is_read_to_its_end(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # a /proc file states size 0, as a file grown between the stat and the read would state
    # less than it holds: reading goes on to the end (or the limit)
    status = Path("/proc/self/status")
    if not status.exists():
        pytest.skip("needs Linux's /proc")
    source = ImageSource(image_root=status.parent)
    data = source.read(str(status))
    assert data.startswith(b"Name:")
    assert len(data) > 100
    monkeypatch.setattr("workers.images.MAX_BYTES", 50)
    with pytest.raises(ImageError, match="larger than 50 bytes"):
        source.read(str(status))


def test_label_studio_images_share_one_kept_alive_connection_until_close(
    png: Path, kept_alive: KeptAliveServer
) -> None:
    body = png.read_bytes()
    source = ImageSource(label_studio_url=kept_alive.url)
    try:
        for i in range(5):
            assert source.read(f"/data/upload/1/{i}.png") == body
        assert kept_alive.opened == 1, "five images, one TCP connection"
        ((_, closer),) = source._clients.values()
        source.close()
        assert not closer.alive, "closed once: the source's going has nothing left to close"
        assert kept_alive.open_now() == 0
        assert source.read("/data/upload/1/again.png") == body
        assert kept_alive.opened == 2, "after close a read opens a new connection"
    finally:
        source.close()


ACCESS = "fresh.access.token"


def _label_studio(png: Path, refresh: list[int], images: int = 200) -> KeptAliveServer:
    """Serves ``png`` to ``Bearer ACCESS`` (401 otherwise, or ``images``); its token refresh
    answers the statuses of ``refresh`` in turn, then 200 with ``ACCESS``."""
    body = png.read_bytes()

    def status(path: str, headers: Message) -> int:
        if path == "/api/token/refresh/":
            return refresh.pop(0) if refresh else 200
        return images if headers["Authorization"] == f"Bearer {ACCESS}" else 401

    def answer(path: str) -> bytes:
        return json.dumps({"access": ACCESS}).encode() if path.startswith("/api/") else body

    return KeptAliveServer(answer, status)


@pytest.mark.parametrize(("token", "status"), [("legacy", 401), (None, 401), ("legacy", 403)])
def test_label_studio_refusing_the_token_fails_the_chunk_not_the_images(
    png: Path, token: str | None, status: int
) -> None:
    server = KeptAliveServer(lambda path: png.read_bytes(), lambda path, headers: status)
    source = ImageSource(
        label_studio_url=server.url, label_studio_token=token, allowed_hosts=("127.0.0.1",)
    )
    items = [(1, "/data/upload/1/a.png"), (2, "/data/upload/1/b.png")]
    try:
        with pytest.raises(AuthError, match=rf"answered {status} .*label_studio\.token"):
            source.read("/data/upload/1/a.png")
        # every image would be refused alike: no task may be marked unscorable for it
        for processes in (0, 1):
            with pytest.raises(AuthError) as chunk:
                score_items(nn.Flatten(), items, source, num_workers=processes)
            assert str(chunk.value).startswith(f"Label Studio answered {status} for /data/")
            assert "\n" not in str(chunk.value), "one line, not a decode process's traceback"
        # an allow-listed host refusing an image refuses that image only
        with pytest.raises(ImageError, match=f"answered {status}") as refused:
            source.read(f"{server.url}/a.png")
        assert not refused.value.transient
    finally:
        source.close()
        server.stop()


def test_a_personal_access_token_refused_after_its_renewal_fails_the_chunk(png: Path) -> None:
    server = _label_studio(png, [], images=401)
    source = ImageSource(label_studio_url=server.url, label_studio_token="a.b.c")
    try:
        with pytest.raises(AuthError, match="refused the personal access token"):
            source.read("/data/upload/1/a.png")
    finally:
        source.close()
        server.stop()
    assert server.paths.count("/api/token/refresh/") == 2, "renewed once, then refused"


@pytest.mark.parametrize("status", [503, 429])
def test_a_token_refresh_the_server_cannot_answer_now_is_tried_again_later(
    png: Path, status: int
) -> None:
    server = _label_studio(png, [status])
    source = ImageSource(label_studio_url=server.url, label_studio_token="a.b.c")
    try:
        with pytest.raises(TransientError, match=f"answered {status}") as later:
            source.read("/data/upload/1/a.png")
        assert not isinstance(later.value, ImageError), "the chunk's error, not an image's"
        assert source.read("/data/upload/1/a.png") == png.read_bytes()
    finally:
        source.close()
        server.stop()


def test_a_personal_access_token_the_refresh_refuses_fails_the_chunk(png: Path) -> None:
    server = _label_studio(png, [401])
    source = ImageSource(label_studio_url=server.url, label_studio_token="a.b.c")
    try:
        with pytest.raises(AuthError, match=r"refused the personal access token \(401\)"):
            source.read("/data/upload/1/a.png")
    finally:
        source.close()
        server.stop()


def test_a_body_over_the_limit_is_refused_unread_and_the_next_image_comes_through(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("workers.images.MAX_BYTES", 1000)
    server = KeptAliveServer(lambda path: b"x" * (5000 if "big" in path else 1000))
    source = ImageSource(label_studio_url=server.url)
    try:
        with pytest.raises(ImageError, match="larger than 1000 bytes") as refused:
            source.read("/data/upload/1/big.png")
        assert not refused.value.transient
        assert source.read("/data/upload/1/small.png") == b"x" * 1000
        assert source.read("/data/upload/1/small.png") == b"x" * 1000
        assert server.opened == 2, "the half-read connection dropped, the next one kept alive"
    finally:
        source.close()
        server.stop()


def test_a_source_dropped_unclosed_closes_its_connection_as_it_goes(
    kept_alive: KeptAliveServer,
) -> None:
    """Even inside a reference cycle (an error held with its traceback): the collector must
    not find a socket unclosed, which is a ResourceWarning and here a failure."""
    source = ImageSource(label_studio_url=kept_alive.url)
    source.read("/data/upload/1/one.png")
    del source
    assert kept_alive.open_now() == 0, "dropped, the source closed its connection"
    cycle: list[object] = [ImageSource(label_studio_url=kept_alive.url)]
    cycle.append(cycle)
    cycle[0].read("/data/upload/1/one.png")  # type: ignore[attr-defined]
    del cycle
    # a collection another thread has under way makes gc.collect() return at once, having
    # collected nothing (a server thread of an earlier test, say): collected again until then
    deadline = time.monotonic() + 10
    while True:
        gc.collect()
        if kept_alive.open_now(settle_s=0.5) == 0 or time.monotonic() > deadline:
            break
    assert kept_alive.open_now() == 0, "collected, the source closed its connection"


@pytest.fixture
def unsized() -> Iterator[str]:
    """Answers with no Content-Length, the body ending as the connection closes (HTTP/1.0):
    100,000 bytes, or 5,000 for a path with "big" in it."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"

        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"u" * (5000 if "big" in self.path else 100_000))

        def log_message(self, *args: object) -> None:
            return

    yield from _serving(Handler)


def test_a_body_of_unknown_length_is_read_in_pieces_not_into_the_whole_limit(
    unsized: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = ImageSource(label_studio_url=unsized)
    try:
        tracemalloc.start()
        data = source.read("/data/upload/1/a.png")
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert data == b"u" * 100_000
        assert peak < 8 * 2**20, f"{peak / 2**20:.0f} MB held to read 100 KB"
        monkeypatch.setattr("workers.images.MAX_BYTES", 3000)
        with pytest.raises(ImageError, match="larger than 3000 bytes"):
            source.read("/data/upload/1/big.png")  # 5,000 bytes, no length: cut off as read
    finally:
        tracemalloc.stop()
        source.close()
