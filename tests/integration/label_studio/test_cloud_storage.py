"""Images in a cloud storage of Label Studio (S3): the workers read them through the server.

The bucket is moto's S3 server on 127.0.0.1, connected to the real Label Studio as the
project's S3 import storage, as a team connects its own bucket. Label Studio either sends
the object itself (the storage's "Use pre-signed URLs" off) or redirects to a pre-signed URL,
which the workers fetch only from an allow-listed host.
"""

from __future__ import annotations

import io
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import boto3
import httpx
import pytest
from PIL import Image

from integrations.label_studio import launcher
from integrations.label_studio.workbench import LabelStudioWorkbench
from tests.integration.label_studio.conftest import free_port
from tests.unit.integrations.contract import CONFIG
from workers.decode import decode
from workers.images import ImageError, ImageSource
from workers.references import through_label_studio

pytestmark = pytest.mark.integration
BUCKET = "planner-images"


@pytest.fixture(scope="module")
def s3() -> Iterator[str]:
    """moto's S3 server, with a bucket holding two JPEGs."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(url, timeout=2)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("moto's S3 server did not start") from None
                time.sleep(0.2)
        client = _client(url)
        client.create_bucket(Bucket=BUCKET)
        for name, colour in (("red.jpg", (220, 20, 20)), ("blue.jpg", (20, 20, 220))):
            client.put_object(Bucket=BUCKET, Key=f"street/{name}", Body=_jpeg(colour))
        yield url
    finally:
        server.terminate()
        server.wait(timeout=10)


def _client(url: str) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=url,
        aws_access_key_id="test",
        aws_secret_access_key="test",
        region_name="us-east-1",
    )


def _jpeg(colour: tuple[int, int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (32, 32), colour).save(out, "JPEG", quality=95)
    return out.getvalue()


def _project_on_s3(
    backend: LabelStudioWorkbench, server: launcher.ServerState, s3: str, *, presign: bool
) -> list[tuple[int, str]]:
    """A project whose tasks Label Studio made from the bucket; their ``(id, image)`` as the
    planner's sync reads them (the references as stored, not rewritten)."""
    project = backend.create_project(f"on s3, presign {presign}", CONFIG)
    with httpx.Client(
        base_url=server.url, headers={"Authorization": f"Token {server.token}"}, timeout=60
    ) as client:
        made = client.post(
            "/api/storages/s3/",
            json={
                "project": project,
                "title": "team bucket",
                "bucket": BUCKET,
                "prefix": "street",
                "regex_filter": r".*\.jpg",
                "use_blob_urls": True,
                "recursive_scan": True,
                "presign": presign,
                "s3_endpoint": s3,
                "aws_access_key_id": "test",
                "aws_secret_access_key": "test",
                "region_name": "us-east-1",
            },
        )
        assert made.status_code == 201, made.text
        synced = client.post(f"/api/storages/s3/{made.json()['id']}/sync")
        assert synced.status_code == 200, synced.text
        deadline = time.monotonic() + 60
        while True:
            listed = client.get(
                "/api/tasks/", params={"project": project, "resolve_uri": "false"}
            ).json()["tasks"]
            if len(listed) == 2 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    tasks = [(int(t["id"]), t["data"]["image"]) for t in listed]
    assert sorted(image for _, image in tasks) == [
        f"s3://{BUCKET}/street/blue.jpg",
        f"s3://{BUCKET}/street/red.jpg",
    ]
    return tasks


def _colour(data: bytes) -> str:
    pixel = decode(data, 8).reshape(-1, 3).mean(axis=0)
    return "red" if pixel[0] > pixel[2] else "blue"


def test_objects_label_studio_sends_itself_are_read_with_the_token(
    backend: LabelStudioWorkbench, label_studio: launcher.ServerState, s3: str
) -> None:
    tasks = _project_on_s3(backend, label_studio, s3, presign=False)
    source = ImageSource(label_studio_url=label_studio.url, label_studio_token=label_studio.token)
    try:
        for task_id, stored in tasks:
            reference = through_label_studio(task_id, stored)
            assert reference.startswith("/tasks/")  # through the server, which holds the keys
            assert _colour(source.read(reference)) in stored
            assert source.remote(reference)
            assert source.local_file(reference) is None
    finally:
        source.close()


def test_a_pre_signed_url_is_followed_only_to_an_allow_listed_host(
    backend: LabelStudioWorkbench, label_studio: launcher.ServerState, s3: str
) -> None:
    tasks = [
        (task_id, through_label_studio(task_id, stored))
        for task_id, stored in _project_on_s3(backend, label_studio, s3, presign=True)
    ]
    refused = ImageSource(label_studio_url=label_studio.url, label_studio_token=label_studio.token)
    allowed = ImageSource(
        label_studio_url=label_studio.url,
        label_studio_token=label_studio.token,
        allowed_hosts=("127.0.0.1",),
    )
    try:
        with pytest.raises(ImageError, match=re.escape("pre-signed URL on '127.0.0.1'")) as caught:
            refused.read(tasks[0][1])
        message = str(caught.value)
        assert "workers.allowed_hosts" in message
        assert f"s3://{BUCKET}/street/" in message
        assert "X-Amz" not in message  # the pre-signed URL's credential is not recorded
        colours = {_colour(allowed.read(reference)) for _, reference in tasks}
        assert colours == {"red", "blue"}
    finally:
        refused.close()
        allowed.close()


def test_an_object_of_no_storage_of_the_project_says_so(
    backend: LabelStudioWorkbench, label_studio: launcher.ServerState, s3: str
) -> None:
    task_id, _ = _project_on_s3(backend, label_studio, s3, presign=False)[0]
    elsewhere = through_label_studio(task_id, "s3://another-bucket/street/red.jpg")
    source = ImageSource(label_studio_url=label_studio.url, label_studio_token=label_studio.token)
    try:
        with pytest.raises(ImageError, match="finds no import storage") as caught:
            source.read(elsewhere)
        assert "s3://another-bucket/street/red.jpg" in str(caught.value)
        assert not caught.value.transient
    finally:
        source.close()
