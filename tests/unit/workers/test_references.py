"""Cloud storage references go to Label Studio's resolver for their task; nothing else does."""

from __future__ import annotations

import base64
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from workers.images import ImageError, ImageSource
from workers.pixels import pixel_key
from workers.references import is_resolver, stored_uri, through_label_studio


@pytest.mark.parametrize(
    "reference", ["s3://bucket/street/a.jpg", "gs://b/a.png", "azure-blob://container/a.jpg"]
)
def test_a_storage_object_is_read_through_its_tasks_resolver(reference: str) -> None:
    path = through_label_studio(42, reference)
    parts = urlsplit(path)
    assert parts.path == "/tasks/42/resolve/"
    assert is_resolver(parts)
    assert base64.urlsafe_b64decode(parts.query.removeprefix("fileuri=")).decode() == reference
    assert stored_uri(parts.query) == reference


@pytest.mark.parametrize(
    "reference",
    [
        "/data/local-files/?d=street/a.jpg",
        "/data/upload/3/a.jpg",
        "https://images.example.com/a.jpg",
        "street/a.jpg",
        "http://[::1",  # malformed: reading it says why
        "",
    ],
)
def test_other_references_stay_as_they_are(reference: str) -> None:
    assert through_label_studio(42, reference) == reference


def test_only_a_tasks_resolver_path_is_one() -> None:
    assert is_resolver(urlsplit("/tasks/7/resolve/?fileuri=czM6Ly9i"))
    assert not is_resolver(urlsplit("/tasks/7/resolve/../../api/projects/"))
    assert not is_resolver(urlsplit("/projects/7/resolve/?fileuri=czM6Ly9i"))
    assert not is_resolver(urlsplit("http://elsewhere/tasks/7/resolve/?fileuri=czM6Ly9i"))
    assert stored_uri("fileuri=%%%") is None


def test_a_storage_uri_read_as_it_is_says_what_reads_it() -> None:
    with pytest.raises(ImageError, match=r"cloud storage object.*resolve"):
        ImageSource(label_studio_url="http://ls").read("s3://bucket/a.jpg")


def test_resolved_objects_are_cached_as_label_studio_serves_them(tmp_path: Path) -> None:
    source = ImageSource(label_studio_url="http://ls", image_root=tmp_path)
    path = through_label_studio(5, "s3://bucket/a.jpg")
    key = pixel_key(source, path, 32)
    assert key is not None
    assert key != pixel_key(source, through_label_studio(5, "s3://bucket/b.jpg"), 32)
    assert source.local_file(path) is None  # not a file under the image root
    assert pixel_key(source, "s3://bucket/a.jpg", 32) is None  # read refuses it as it is
