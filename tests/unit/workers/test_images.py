"""Image references: what is read, and what is refused with a reason."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from workers.images import ImageError, ImageSource, decode


@pytest.fixture
def png(tmp_path: Path) -> Path:
    path = tmp_path / "one.png"
    Image.fromarray(np.full((8, 8), 200, dtype=np.uint8)).save(path)
    return path


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

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_local_paths_and_label_studio_local_files(png: Path) -> None:
    source = ImageSource(image_root=png.parent)
    assert source.read(str(png)) == png.read_bytes()
    assert source.read(f"/data/local-files/?d={png.name}") == png.read_bytes()
    with pytest.raises(ImageError, match="outside the image root"):
        source.read("/data/local-files/?d=../../etc/passwd")
    with pytest.raises(ImageError, match="does not exist"):
        source.read(str(png.parent / "missing.png"))


def test_decode_gives_channels_first_bytes_and_refuses_corrupt_bytes(png: Path) -> None:
    array = decode(png.read_bytes(), 16)
    assert array.shape == (3, 16, 16)
    assert array.dtype == np.uint8
    assert int(array.max()) == 200
    with pytest.raises(ImageError, match="corrupt"):
        decode(b"\x89PNG\r\n\x1a\nnot really", 16)


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


def test_a_missing_file_is_not_transient(png: Path) -> None:
    with pytest.raises(ImageError) as failed:
        ImageSource().read(str(png.parent / "gone.png"))
    assert not failed.value.transient
