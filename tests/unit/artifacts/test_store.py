from __future__ import annotations

import dataclasses
import errno
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from planner.artifacts import (
    ArtifactError,
    latest_version,
    list_versions,
    read_artifact,
    write_artifact,
    writer,
)
from tests.unit.artifacts.helpers import small_artifact

REPO = Path(__file__).resolve().parents[3]


def test_versions_are_numbered_and_latest_follows_the_newest(tmp_path: Path) -> None:
    first = write_artifact(tmp_path, small_artifact())
    second = write_artifact(tmp_path, small_artifact(scale=2))
    assert (first.version, second.version) == ("v0001", "v0002")
    assert list_versions(tmp_path) == ["v0001", "v0002"]
    assert latest_version(tmp_path) == "v0002"
    loaded = read_artifact(tmp_path)
    assert loaded.version == "v0002"
    assert loaded.data == small_artifact(scale=2).data
    np.testing.assert_array_equal(loaded.image_weights, small_artifact(scale=2).image_weights)
    assert read_artifact(tmp_path, "v0001").data["counts"]["images"]["train"]["fox"] == 1
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


def test_the_manifest_holds_schema_version_and_checksums(tmp_path: Path) -> None:
    written = write_artifact(tmp_path, small_artifact())
    manifest = json.loads((written.path / "MANIFEST.json").read_text())
    assert manifest["schema_version"] == 1
    assert set(manifest["files"]) == {"artifact.json", "image_weights.npy"}
    assert all(len(entry["sha256"]) == 64 for entry in manifest["files"].values())


def test_an_edited_file_fails_the_checksum(tmp_path: Path) -> None:
    written = write_artifact(tmp_path, small_artifact())
    data = written.path / "artifact.json"
    data.write_text(data.read_text().replace('"fox": 1', '"fox": 9', 1))
    with pytest.raises(ArtifactError, match=r"checksum mismatch for .*artifact.json"):
        read_artifact(tmp_path)


def test_a_newer_schema_version_asks_to_upgrade(tmp_path: Path) -> None:
    written = write_artifact(tmp_path, small_artifact())
    manifest_path = written.path / "MANIFEST.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["schema_version"] = 99
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match=r"schema version 99.*upgrade the planner"):
        read_artifact(tmp_path)


def test_an_empty_folder_says_to_emit_first(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="run `planner emit` first"):
        read_artifact(tmp_path)


def test_a_missing_weights_file_is_reported(tmp_path: Path) -> None:
    written = write_artifact(tmp_path, small_artifact())
    (written.path / "image_weights.npy").unlink()
    with pytest.raises(ArtifactError, match=r"lacks image_weights\.npy"):
        read_artifact(tmp_path)


def test_a_failure_mid_write_leaves_latest_on_the_previous_version(tmp_path: Path) -> None:
    """A real write failure: the file size limit (RLIMIT_FSIZE) stops the large weights file."""
    write_artifact(tmp_path, small_artifact())
    script = textwrap.dedent(
        f"""
        import resource, signal, sys
        sys.path.insert(0, {str(REPO)!r})
        from planner.artifacts import ArtifactError, write_artifact
        from tests.unit.artifacts.helpers import small_artifact
        artifact = small_artifact(scale=20_000)  # 200,000 images: weights file of 1.6 MB
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG instead of being killed
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
        try:
            write_artifact({str(tmp_path)!r}, artifact)
        except ArtifactError as exc:
            print("ERROR", exc)
            sys.exit(3)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 3, done.stderr
    assert "previous version stays the latest" in done.stdout
    assert latest_version(tmp_path) == "v0001"
    assert list_versions(tmp_path) == ["v0001"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock", "LATEST", "v0001"]
    assert read_artifact(tmp_path).data == small_artifact().data


def test_a_folder_under_a_file_gives_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the artifact folder should be")
    with pytest.raises(ArtifactError, match=r"cannot create the artifact folder .*not-a-folder"):
        write_artifact(blocker / "artifacts", small_artifact())


def _without_root_bypass() -> list[str]:
    """The command prefix that runs a child without root's way past file modes: as root
    (containers, CI), ``setpriv`` drops CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH from it."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without util-linux's setpriv: chmod does not bind root")
    return [setpriv, "--bounding-set=-dac_override,-dac_read_search", "--"]


def test_a_read_only_folder_gives_a_clear_error(tmp_path: Path) -> None:
    folder = tmp_path / "artifacts"
    folder.mkdir()
    folder.chmod(0o500)
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(REPO)!r})
        from planner.artifacts import write_artifact
        from planner.artifacts.layout import ArtifactError
        from tests.unit.artifacts.helpers import small_artifact
        try:
            write_artifact({str(folder)!r}, small_artifact())
        except ArtifactError as exc:
            print(exc)
            sys.exit(3)
        """
    )
    try:
        done = subprocess.run(
            [*_without_root_bypass(), sys.executable, "-c", script],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        folder.chmod(0o700)
    assert done.returncode == 3, done.stderr
    assert "not writable" in done.stdout
    assert list(folder.iterdir()) == []


def test_two_writers_at_once_get_distinct_complete_versions(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(REPO)!r})
        from planner.artifacts import write_artifact
        from tests.unit.artifacts.helpers import small_artifact
        artifact = small_artifact(scale=200)
        for _ in range(5):
            write_artifact({str(tmp_path)!r}, artifact)
        """
    )
    writers = [subprocess.Popen([sys.executable, "-c", script]) for _ in range(2)]
    assert [w.wait(timeout=120) for w in writers] == [0, 0]
    assert list_versions(tmp_path) == [f"v{i:04d}" for i in range(1, 11)]
    assert latest_version(tmp_path) == "v0010"
    for version in list_versions(tmp_path):
        assert read_artifact(tmp_path, version).image_weights.size == 2000


def test_a_version_is_readable_by_another_user(tmp_path: Path) -> None:
    written = write_artifact(tmp_path, small_artifact())
    write_artifact(tmp_path, small_artifact(scale=2))  # LATEST replaced, not only created
    assert written.path.stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "LATEST").stat().st_mode & 0o777 == 0o644
    assert all(f.stat().st_mode & 0o044 == 0o044 for f in written.path.iterdir())


def test_a_full_disk_before_anything_is_written_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_artifact(tmp_path, small_artifact())

    def full(*_args: object, **_kwargs: object) -> str:  # a full disk, not producible here
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(writer.tempfile, "mkdtemp", full)
    with pytest.raises(ArtifactError, match="Free disk space"):
        write_artifact(tmp_path, small_artifact(scale=2))
    assert latest_version(tmp_path) == "v0001"


def test_a_version_latest_could_not_name_is_taken_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_artifact(tmp_path, small_artifact())
    replace = writer.replace_file

    def full(path: Path, data: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(writer, "replace_file", full)
    with pytest.raises(ArtifactError, match="the previous version stays the latest"):
        write_artifact(tmp_path, small_artifact(scale=2))
    # a job listing the versions sees none that LATEST never named
    assert list_versions(tmp_path) == ["v0001"]
    monkeypatch.setattr(writer, "replace_file", replace)
    assert write_artifact(tmp_path, small_artifact(scale=2)).version == "v0002"


def test_a_value_json_cannot_carry_is_an_artifact_error(tmp_path: Path) -> None:
    artifact = small_artifact()
    bad = dataclasses.replace(artifact, data={**artifact.data, "extra": {1, 2}})
    with pytest.raises(ArtifactError, match="JSON cannot carry"):
        write_artifact(tmp_path, bad)
    assert list_versions(tmp_path) == []


def test_what_a_killed_writer_left_is_removed_by_the_next(tmp_path: Path) -> None:
    write_artifact(tmp_path, small_artifact())
    (tmp_path / ".tmp-killed").mkdir()  # a version half written when its writer was killed
    (tmp_path / ".tmp-killed" / "artifact.json").write_text("{")
    (tmp_path / ".tmp-latest").write_text("v0")  # LATEST's replacement, never renamed
    write_artifact(tmp_path, small_artifact(scale=2))
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp-")) == []
    assert list_versions(tmp_path) == ["v0001", "v0002"]
