"""Several images at once on one thread (``ImageSource.read_many``): what ``read`` gives, each."""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Iterator
from email.message import Message
from pathlib import Path

import pytest

from planner.errors import AuthError
from tests.unit.workers.conftest import KeptAliveServer
from workers import images
from workers.images import ImageError, ImageSource

STATUS = {"missing": 404, "busy": 503, "slow": 429, "moved": 302, "gone": 410, "refused": 403}


def _outcome(got: bytes | ImageError) -> object:
    if isinstance(got, ImageError):
        # libcurl's message says how long a refused connect took ("after 0 ms", "after 1 ms")
        reason = re.sub(r"after \d+ ms", "after N ms", str(got))
        return (type(got).__name__, reason, got.transient)
    return got


@pytest.fixture
def refusing_port() -> Iterator[int]:
    """A port bound and not listening, held for the test: connecting is refused (a port let
    go could be taken meanwhile by another test's server, which would then count our
    connections as its own)."""
    with socket.socket() as bound:
        bound.bind(("127.0.0.1", 0))
        yield int(bound.getsockname()[1])


def test_each_image_comes_as_read_gives_it(
    png: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, refusing_port: int
) -> None:
    monkeypatch.setattr(images, "MAX_BYTES", 4000)
    body = png.read_bytes()
    assert len(body) < 4000

    def status(path: str, headers: Message) -> int:
        return next((code for name, code in STATUS.items() if name in path), 200)

    server = KeptAliveServer(lambda path: b"x" * 5000 if "big" in path else body, status)
    (tmp_path / "here.png").write_bytes(body)
    source = ImageSource(
        label_studio_url=server.url,
        label_studio_token="legacy",
        image_root=tmp_path,
        allowed_hosts=("127.0.0.1",),
    )
    references = [
        "/data/upload/1/a.png",
        f"{server.url}/b.png",
        *(f"/data/upload/1/{name}.png" for name in STATUS if name != "refused"),
        f"{server.url}/refused.png",  # an allow-listed host refusing: the image's own error
        "/data/upload/1/big.png",
        f"http://127.0.0.1:{refusing_port}/c.png",
        "http://elsewhere.example/d.png",
        "/data/local-files/?d=here.png",
        "/data/local-files/?d=absent.png",
        "here.png",
        "s3://bucket/e.png",
        "http://[::1/f.png",
        "",
        "/data/upload/1/g.png",
    ]
    try:
        expected = []
        for reference in references:
            try:
                expected.append(_outcome(source.read(reference)))
            except ImageError as exc:
                expected.append(_outcome(exc))
        got = dict(source.read_many(references, at_once=3))
        assert sorted(got) == list(range(len(references))), "each reference once"
        assert [_outcome(got[i]) for i in range(len(references))] == expected
        assert sum(isinstance(g, bytes) for g in got.values()) == 5, "the readable ones read"
    finally:
        source.close()
        server.stop()
    assert server.open_now() == 0, "close closed the transfers' connections"


def test_label_studio_refusing_the_token_fails_the_chunk(png: Path) -> None:
    server = KeptAliveServer(lambda path: png.read_bytes(), lambda path, headers: 401)
    source = ImageSource(label_studio_url=server.url, label_studio_token="legacy")
    try:
        with pytest.raises(AuthError, match=r"answered 401 .*label_studio\.token"):
            list(source.read_many(["/data/upload/1/a.png", "/data/upload/1/b.png"], at_once=4))
    finally:
        source.close()
        server.stop()


def test_an_expired_access_token_is_renewed_once_and_the_images_come(png: Path) -> None:
    accepted = {"token": "first"}

    def status(path: str, headers: Message) -> int:
        if path == "/api/token/refresh/":
            return 200
        return 200 if headers["Authorization"] == f"Bearer {accepted['token']}" else 401

    def answer(path: str) -> bytes:
        if path.startswith("/api/"):
            return json.dumps({"access": accepted["token"]}).encode()
        return png.read_bytes()

    server = KeptAliveServer(answer, status)
    source = ImageSource(label_studio_url=server.url, label_studio_token="a.b.c")
    references = [f"/data/upload/1/{i}.png" for i in range(6)]
    try:
        assert all(isinstance(g, bytes) for _, g in source.read_many(references, at_once=4))
        accepted["token"] = "second"  # the access token expired
        got = dict(source.read_many(references, at_once=4))
        assert all(got[i] == png.read_bytes() for i in range(6))
    finally:
        source.close()
        server.stop()
    assert server.paths.count("/api/token/refresh/") == 2, "renewed once for the expiry"


def test_transfers_left_by_a_caller_stopping_early_do_not_hold_the_next_call(png: Path) -> None:
    server = KeptAliveServer(lambda path: png.read_bytes())
    source = ImageSource(label_studio_url=server.url)
    references = [f"/data/upload/1/{i}.png" for i in range(8)]
    try:
        first = source.read_many(references, at_once=4)
        next(first)
        first.close()  # three transfers still under way
        got = dict(source.read_many(references, at_once=4))
        assert sorted(got) == list(range(8))
        assert all(g == png.read_bytes() for g in got.values())
    finally:
        source.close()
        server.stop()


def test_a_call_left_suspended_neither_blocks_the_next_nor_close(png: Path) -> None:
    server = KeptAliveServer(lambda path: png.read_bytes())
    source = ImageSource(label_studio_url=server.url)
    references = [f"/data/upload/1/{i}.png" for i in range(8)]
    try:
        held = source.read_many(references, at_once=4)
        next(held)  # its caller stopped here and kept it (a traceback holding its frame)
        got = dict(source.read_many(references, at_once=4))
        assert sorted(got) == list(range(8)), "read on handles of its own"
        assert all(g == png.read_bytes() for g in got.values())
        source.close()  # returns: the held call's handles close when it ends
        assert server.open_now(settle_s=0.5) > 0, "the held call's connections still open"
        held.close()
        assert server.open_now() == 0, "closed as the held call went"
    finally:
        source.close()
        server.stop()


def test_https_through_the_transfers_checks_the_name_at_the_checked_address(
    png: Path, tls_server: tuple[KeptAliveServer, list[str]]
) -> None:
    server, names = tls_server
    by_name = ImageSource(allowed_hosts=("localhost", "127.0.0.1", "::1"))
    by_address = ImageSource(allowed_hosts=("127.0.0.1",))  # the certificate is localhost's
    try:
        got = dict(by_name.read_many([f"https://localhost:{server.port}/ok.png"] * 2, at_once=2))
        assert got == {0: png.read_bytes(), 1: png.read_bytes()}
        [(_, refused)] = by_address.read_many([f"{server.url}/ok.png"], at_once=2)
    finally:
        by_name.close()
        by_address.close()
    assert isinstance(refused, ImageError)
    assert "TLS failed" in str(refused)
    assert refused.transient
    # the name went as the TLS server name; by its address, none (and the certificate failed)
    assert set(names) == {"localhost", "None"}
    assert server.hosts == [f"localhost:{server.port}"] * 2
