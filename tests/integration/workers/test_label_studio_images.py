"""Reading task images from a real Label Studio with a legacy or a personal access token, and
once only across model versions (the pixel cache)."""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from integrations.label_studio.launcher import ServerState
from integrations.label_studio.workbench import LabelStudioWorkbench
from planner.errors import AuthError
from workers.images import ImageSource
from workers.inference import score_items
from workers.pixels import PixelCache

pytestmark = pytest.mark.integration
CLASSIFY = """<View><Image name="image" value="$image"/>
<Choices name="label" toName="image"><Choice value="a"/><Choice value="b"/></Choices></View>"""


@pytest.fixture
def served(label_studio: ServerState) -> tuple[str, bytes]:
    """A PNG in a project's local storage, as its ``/data/local-files/`` URL."""
    folder = Path(label_studio.document_root) / f"workers-{uuid.uuid4().hex[:8]}"
    folder.mkdir(parents=True)
    Image.fromarray(np.full((8, 8, 3), 90, dtype=np.uint8)).save(folder / "one.png")
    # Label Studio serves a local file only from a storage its user can see
    with LabelStudioWorkbench(label_studio.url, label_studio.token) as bench:
        pid = bench.create_project(folder.name, CLASSIFY)
        bench.connect_local_storage(pid, str(folder))
    return f"/data/local-files/?d={folder.name}/one.png", (folder / "one.png").read_bytes()


def test_a_legacy_token_reads_local_files(
    label_studio: ServerState, served: tuple[str, bytes]
) -> None:
    reference, body = served
    source = ImageSource(label_studio_url=label_studio.url, label_studio_token=label_studio.token)
    assert source.read(reference) == body
    wrong = ImageSource(label_studio_url=label_studio.url, label_studio_token="not-the-token")
    with pytest.raises(AuthError, match=r"answered 401 .*refused the token"):
        wrong.read(reference)


def test_a_personal_access_token_is_exchanged_and_renewed(
    label_studio: ServerState, personal_access_token: str, served: tuple[str, bytes]
) -> None:
    reference, body = served
    source = ImageSource(
        label_studio_url=label_studio.url, label_studio_token=personal_access_token
    )
    assert source.read(reference) == body
    source._access["access"] = "an.expired.token"  # what an hour-old access token looks like
    assert source.read(reference) == body
    assert source._access["access"] != "an.expired.token"


def test_a_rescoring_reads_the_pixels_label_studio_served_once(
    label_studio: ServerState, served: tuple[str, bytes], tmp_path: Path
) -> None:
    """The second model version needs nothing from the server: with a token it refuses, the
    image is still scored, from the pixel cache the first version's run filled."""
    reference, _ = served
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 2)).eval()
    items = [(1, reference)]
    good = ImageSource(label_studio_url=label_studio.url, label_studio_token=label_studio.token)
    first = score_items(model, items, good, num_workers=0, cache=PixelCache(tmp_path, 2**24))
    assert first.task_ids == [1]
    refused = ImageSource(label_studio_url=label_studio.url, label_studio_token="not-the-token")
    with pytest.raises(AuthError):  # without the cache the refused token is felt
        score_items(model, items, refused, num_workers=0)
    again = score_items(model, items, refused, num_workers=0, cache=PixelCache(tmp_path, 2**24))
    assert again.task_ids == [1]
    np.testing.assert_allclose(again.probs, first.probs, rtol=0, atol=1e-6)


def test_an_uploaded_image_is_read_from_label_studio_s_upload_folder(
    label_studio: ServerState, tmp_path: Path
) -> None:
    """A file uploaded into a project is served as ``/data/upload/<project>/<name>`` and kept
    under ``<data dir>/media/upload``: with that folder as the upload root the worker reads
    it there, with no server configured at all."""
    picture = tmp_path / "a red car.png"
    Image.fromarray(np.full((8, 8, 3), 200, dtype=np.uint8)).save(picture)
    with LabelStudioWorkbench(label_studio.url, label_studio.token) as bench:
        pid = bench.create_project(f"uploads-{uuid.uuid4().hex[:8]}", CLASSIFY)
    headers = {"Authorization": f"Token {label_studio.token}"}
    with picture.open("rb") as handle:
        imported = httpx.post(
            f"{label_studio.url}/api/projects/{pid}/import",
            headers=headers,
            files={"file": (picture.name, handle, "image/png")},
            timeout=60,
        )
    imported.raise_for_status()
    (task,) = httpx.get(
        f"{label_studio.url}/api/tasks", params={"project": pid}, headers=headers, timeout=60
    ).json()["tasks"]
    reference = task["data"]["image"]
    assert reference.startswith(f"/data/upload/{pid}/")
    served = ImageSource(label_studio_url=label_studio.url, label_studio_token=label_studio.token)
    on_disk = ImageSource(upload_root=Path(label_studio.data_dir) / "media" / "upload")
    assert on_disk.read(reference) == served.read(reference) == picture.read_bytes()
