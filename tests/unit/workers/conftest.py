"""Digit images on disk, a store holding their tasks, a worker config pointing at both."""

from __future__ import annotations

import io
import ssl
import struct
import sys
import threading
import time
import types
import zlib
from collections.abc import Callable, Iterator
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import trustme
from PIL import Image
from sklearn.datasets import load_digits
from sqlmodel import col, select

from planner.store import Store, ensure_project, open_store
from planner.store.models import Task
from workers.config import WorkerConfig

CLASSES = tuple(str(d) for d in range(10))


@pytest.fixture(scope="session")
def digit_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[int]]:
    root = tmp_path_factory.mktemp("images")
    digits = load_digits()
    (root / "digits").mkdir()
    for i in range(300):
        pixels = (digits.images[i] * 16).clip(0, 255).astype(np.uint8)
        Image.fromarray(pixels).resize((32, 32)).save(root / "digits" / f"{i:04d}.png")
    return root, [int(t) for t in digits.target[:300]]


@pytest.fixture
def project(tmp_path: Path, digit_files: tuple[Path, list[int]]) -> Iterator[tuple[Store, int]]:
    """A store with 300 digit tasks; the first 200 labelled with their true digit."""
    _root, targets = digit_files
    with open_store(f"sqlite:///{tmp_path / 'planner.db'}") as store:
        with store.session() as session:
            pid = int(ensure_project(session, ls_project_id=1).id or 0)
            for i, target in enumerate(targets):
                labelled = i < 200
                session.add(
                    Task(
                        project_id=pid,
                        ls_task_id=i + 1,
                        image=f"/data/local-files/?d=digits/{i:04d}.png",
                        state="labelled" if labelled else "unlabelled",
                        labels=[str(target)] if labelled else [],
                    )
                )
        yield store, pid


def show_images(store: Store, project_id: int, images: dict[int, str]) -> None:
    """Tasks ``images``' keys show its values now, as a sync would have stored them: a score
    row is written only for the image its task shows."""
    with store.session() as session:
        for task in session.exec(
            select(Task).where(
                Task.project_id == project_id, col(Task.ls_task_id).in_(list(images))
            )
        ):
            task.image = images[task.ls_task_id]
            session.add(task)


def worker_config(store: Store, root: Path, **extra: object) -> WorkerConfig:
    url = store.engine.url.render_as_string(hide_password=False)
    return WorkerConfig(
        store_url=url,
        classes=CLASSES,
        image_root=root,
        chunk_size=40,
        **extra,  # type: ignore[arg-type]
    )


@pytest.fixture
def entry_point(monkeypatch: pytest.MonkeyPatch) -> Callable[..., str]:
    """``entry_point(name, make=Factory)``: a module ``name`` importable for the test, holding
    the given factories, for ``workers.model = "name:make"``."""

    def register(name: str, **factories: object) -> str:
        module = types.ModuleType(name)
        for attr, factory in factories.items():
            setattr(module, attr, factory)
        monkeypatch.setitem(sys.modules, name, module)
        return name

    return register


class KeptAliveServer:
    """A Label Studio stand-in on 127.0.0.1 that keeps connections open (HTTP/1.1), as the
    real server does, answers a GET (or a POST, its body read and dropped) with
    ``body_for(path)`` and counts its connections and the paths it was asked for.
    ``status_for(path, headers)``, when given, may answer another status first (401 to a
    missing token, 503 to a server in trouble), with no body. With ``tls``, it serves https
    with that context; ``hosts`` holds the Host headers sent."""

    def __init__(
        self,
        body_for: Callable[[str], bytes],
        status_for: Callable[[str, Message], int] | None = None,
        *,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.opened = 0
        self.closed = 0
        self.paths: list[str] = []
        self.hosts: list[str] = []
        counts = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                counts.opened += 1

            def finish(self) -> None:
                super().finish()
                counts.closed += 1

            def do_POST(self) -> None:  # Label Studio's token refresh: read, then as a GET
                self.rfile.read(int(self.headers["Content-Length"] or 0))
                self.do_GET()

            def do_GET(self) -> None:
                counts.paths.append(self.path)
                counts.hosts.append(self.headers["Host"])
                status = 200 if status_for is None else status_for(self.path, self.headers)
                if status != 200:
                    self.send_response(status)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = body_for(self.path)
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                return

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if tls is not None:
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def open_now(self, settle_s: float = 5.0) -> int:
        """Connections still open, once those being closed have had time to go."""
        deadline = time.monotonic() + settle_s
        while self.opened != self.closed and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.opened - self.closed

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def broken_png() -> bytes:
    """A PNG whose pixels come in two IDAT chunks, the second's type garbled: Pillow opens it
    and fails only in ``load`` (``SyntaxError: broken PNG file``)."""
    buffer = io.BytesIO()
    Image.fromarray(np.full((32, 32, 3), 120, dtype=np.uint8)).save(buffer, "PNG")
    data = buffer.getvalue()
    start = data.index(b"IDAT") - 4
    (length,) = struct.unpack(">I", data[start : start + 4])
    pixels = data[start + 8 : start + 8 + length]

    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)

    half = len(pixels) // 2
    split = chunk(b"IDAT", pixels[:half]) + chunk(b"ID\x00T", pixels[half:])
    return data[:start] + split + data[start + 12 + length :]


def pillow_crashers() -> dict[str, bytes]:
    """Mutated files on which Pillow 13 raised neither ``OSError`` nor ``ValueError``, keyed
    by what it raised: a TIFF whose strip offsets are typed FLOAT (``TypeError``) or LONG8
    (``OverflowError``: eight pixel bytes read as the offset), a DDS with no pixel format
    flags (``NotImplementedError``)."""

    def tiff(offset_type: int) -> bytes:
        buffer = io.BytesIO()
        Image.new("RGB", (24, 20), (200, 200, 200)).save(buffer, "TIFF")
        data = bytearray(buffer.getvalue())
        (ifd,) = struct.unpack_from("<I", data, 4)
        (entries,) = struct.unpack_from("<H", data, ifd)
        for entry in range(ifd + 2, ifd + 2 + 12 * entries, 12):
            if struct.unpack_from("<H", data, entry) == (273,):  # StripOffsets
                struct.pack_into("<H", data, entry + 2, offset_type)
        return bytes(data)

    # DDS_HEADER: size, flags (caps, height, width, pitch), height, width, pitch, depth,
    # mipmaps, 11 reserved; DDS_PIXELFORMAT: size 32, flags 0; then caps (texture)
    dds = struct.pack("<4s7I", b"DDS ", 124, 0x100F, 20, 24, 72, 0, 0) + bytes(44)
    dds += struct.pack("<2I", 32, 0) + bytes(24) + struct.pack("<I", 0x1000) + bytes(16)
    return {
        "TypeError": tiff(11),
        "OverflowError": tiff(16),
        "NotImplementedError": dds + bytes(20 * 24 * 4),
    }


@pytest.fixture
def png(tmp_path: Path) -> Path:
    path = tmp_path / "one.png"
    Image.fromarray(np.full((8, 8), 200, dtype=np.uint8)).save(path)
    return path


@pytest.fixture
def tls_server(
    png: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[KeptAliveServer, list[str]]]:
    """An https image server on 127.0.0.1 whose certificate names localhost, issued by a test
    CA the process trusts (SSL_CERT_FILE); yields it and the server names (SNI) it was sent."""
    authority = trustme.CA()
    bundle = png.parent / "ca.pem"
    authority.cert_pem.write_to_path(str(bundle))
    monkeypatch.setenv("SSL_CERT_FILE", str(bundle))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("localhost").configure_cert(context)
    names: list[str] = []

    def record(_socket: ssl.SSLObject, name: str | None, _context: ssl.SSLContext) -> None:
        names.append(str(name))

    context.sni_callback = record
    body = png.read_bytes()
    server = KeptAliveServer(lambda path: body, tls=context)
    yield server, names
    server.stop()


@pytest.fixture
def kept_alive(png: Path) -> Iterator[KeptAliveServer]:
    body = png.read_bytes()
    server = KeptAliveServer(lambda path: body)
    yield server
    server.stop()
