"""The workers' libcurl client: a handle a thread, forks, proxies, timeouts, what is sent."""

from __future__ import annotations

import gc
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from email.message import Message
from pathlib import Path

import pytest

from tests.unit.workers.conftest import KeptAliveServer
from workers.curl import transfer_timeout_s
from workers.images import ImageError, ImageSource


def test_each_thread_reads_on_its_own_connection_and_close_closes_them_all(
    png: Path, kept_alive: KeptAliveServer
) -> None:
    body = png.read_bytes()
    source = ImageSource(label_studio_url=kept_alive.url)
    both = threading.Barrier(2)
    read: list[bytes] = []

    def reader(name: str) -> None:
        read.append(source.read(f"/data/upload/1/{name}-0.png"))
        both.wait(timeout=10)  # each thread holds its handle while the other reads
        read.extend(source.read(f"/data/upload/1/{name}-{i}.png") for i in (1, 2))

    threads = [threading.Thread(target=reader, args=(name,)) for name in ("a", "b")]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        assert read == [body] * 6
        assert kept_alive.opened == 2, "a connection a thread, kept alive for its next images"
        source.close()
        assert kept_alive.open_now() == 0, "close closed every thread's connection"
    finally:
        source.close()


def test_a_forked_child_leaves_its_parents_tls_connection_alone(
    png: Path, tls_server: tuple[KeptAliveServer, list[str]]
) -> None:
    """The child reads on a connection of its own and drops the source; the parent's
    kept-alive TLS connection (whose socket the child holds a copy of) still serves it."""
    server, _ = tls_server
    body = png.read_bytes()
    source = ImageSource(allowed_hosts=("localhost", "127.0.0.1", "::1"))
    url = f"https://localhost:{server.port}/one.png"
    try:
        assert source.read(url) == body
        child = os.fork()
        if child == 0:  # pragma: no cover - the child's outcome is its exit status
            ok = source.read(url) == body
            del source
            gc.collect()
            os._exit(0 if ok else 1)
        _, status = os.waitpid(child, 0)
        assert os.waitstatus_to_exitcode(status) == 0, "the child read its image"
        assert source.read(url) == body
        assert server.opened == 2, "the parent's connection and the child's, none reopened"
    finally:
        source.close()


def test_proxies_in_the_environment_are_not_used(
    png: Path, kept_alive: KeptAliveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    for name in ("http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")  # nothing listens there
    source = ImageSource(label_studio_url=kept_alive.url)
    try:
        assert source.read("/data/upload/1/one.png") == png.read_bytes()
    finally:
        source.close()
    assert kept_alive.paths == ["/data/upload/1/one.png"]


def _on_loopback(serve: Callable[[socket.socket, threading.Event], None]) -> Iterator[str]:
    """``serve(listener, stop)`` on a thread until the fixture ends (``stop`` set); yields
    the listener's URL."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()
    thread = threading.Thread(target=serve, args=(listener, stop), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    stop.set()
    thread.join()
    listener.close()


@pytest.fixture
def silent() -> Iterator[str]:
    """A server that accepts connections and never answers; yields its URL."""

    def accept(listener: socket.socket, stop: threading.Event) -> None:
        accepted: list[socket.socket] = []
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except TimeoutError:
                continue
        for connection in accepted:
            connection.close()

    yield from _on_loopback(accept)


def _failed_within(source: ImageSource, seconds: float) -> ImageError:
    """The error of reading an image from ``source``, which must come within ``seconds``
    (read on a thread, so that a read that never ends fails the test rather than hangs)."""
    failed: list[ImageError] = []

    def read() -> None:
        try:
            source.read("/data/upload/1/one.png")
        except ImageError as exc:
            failed.append(exc)

    started = time.monotonic()
    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout=20)
    try:
        assert not reader.is_alive(), "the read was never cut off"
        assert time.monotonic() - started < seconds
    finally:
        source.close()
    (error,) = failed
    return error


def test_a_server_that_never_answers_times_out_as_transient(silent: str) -> None:
    error = _failed_within(ImageSource(label_studio_url=silent, timeout_s=1.0), 10)
    assert "cannot fetch" in str(error)
    assert error.transient, "a server slow to answer may answer a retry"


@pytest.fixture
def dripping() -> Iterator[str]:
    """A server that answers 200 with a 1000-byte body, a byte every 50 ms (above libcurl's
    low-speed limit, 50 s for the whole); yields its URL."""

    def serve(listener: socket.socket, stop: threading.Event) -> None:
        connection, _ = listener.accept()
        with connection:
            while b"\r\n\r\n" not in connection.recv(65536):
                pass
            connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
            for _ in range(1000):
                if stop.wait(0.05):
                    return
                try:
                    connection.sendall(b"x")
                except OSError:  # the client gave up
                    return

    yield from _on_loopback(serve)


def test_a_server_dripping_its_answer_is_cut_off_at_the_transfer_bound(
    dripping: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("workers.images.MAX_BYTES", 1000)
    # 1 s and 1000 bytes at MIN_RATE: cut off after about a second, not the drip's 50
    error = _failed_within(ImageSource(label_studio_url=dripping, timeout_s=1.0), 10)
    assert "cannot fetch" in str(error)
    assert error.transient, "a server slow today may be quicker at the retry"
    assert transfer_timeout_s(30.0, 64 * 2**20) == 286.0, "the workers' own bound"


def test_a_closed_port_is_transient() -> None:
    with socket.create_server(("127.0.0.1", 0)) as closed:
        port = closed.getsockname()[1]
    source = ImageSource(label_studio_url=f"http://127.0.0.1:{port}")
    with pytest.raises(ImageError, match="cannot fetch") as failed:
        source.read("/data/upload/1/one.png")
    assert failed.value.transient


def test_userinfo_is_never_sent_and_the_token_goes_only_to_label_studio(png: Path) -> None:
    headers: list[Message] = []

    def status(_path: str, sent: Message) -> int:
        headers.append(sent)
        return 200

    server = KeptAliveServer(lambda path: png.read_bytes(), status)
    port = server.port
    source = ImageSource(
        label_studio_url=server.url, label_studio_token="secret", allowed_hosts=("127.0.0.1",)
    )
    try:
        assert source.read(f"http://user:pass@127.0.0.1:{port}/a.png") == png.read_bytes()
        assert source.read("/data/upload/1/b.png") == png.read_bytes()
    finally:
        source.close()
        server.stop()
    assert server.paths == ["/a.png", "/data/upload/1/b.png"]
    assert headers[0]["Authorization"] is None, "neither the userinfo nor the token"
    assert headers[1]["Authorization"] == "Token secret"


def test_a_file_name_with_spaces_or_accents_is_sent_percent_encoded(png: Path) -> None:
    server = KeptAliveServer(lambda path: png.read_bytes())
    source = ImageSource(label_studio_url=server.url)
    try:
        for reference in (
            "/data/local-files/?d=my dir/a b.png",
            "/data/local-files/?d=été/ça.png",
            "/data/upload/1/already%20encoded.png",
        ):
            assert source.read(reference) == png.read_bytes()
    finally:
        source.close()
        server.stop()
    assert server.paths == [
        "/data/local-files/?d=my%20dir/a%20b.png",
        "/data/local-files/?d=%C3%A9t%C3%A9/%C3%A7a.png",
        "/data/upload/1/already%20encoded.png",
    ]
