"""Models load without unpickling arbitrary objects: a pickle that would run code on load is
refused with a clear error wherever a model file can come from, and its code never runs."""

from __future__ import annotations

import pickle
import time
import zipfile
from pathlib import Path

import pytest
import torch

from planner.errors import ConfigError
from workers.bootstrap import load_saved
from workers.models import choose_model, load_model

NETWORK = "torch.nn:Identity"


class Payload:
    """Unpickling this calls ``Path.touch(marker)``: any code could run in its place."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, ...]:
        return (Path.touch, (self.marker,))


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "the-payload-ran"


def _zip_pickle(path: Path, marker: Path) -> Path:
    torch.save({"weight": Payload(marker)}, path)  # torch's zip format, data.pkl inside
    return path


def _legacy_pickle(path: Path, marker: Path) -> Path:
    path.write_bytes(pickle.dumps({"weight": Payload(marker)}, protocol=2))
    return path


def _fake_torchscript(path: Path, marker: Path) -> Path:
    """An archive shaped like TorchScript whose pickles hold the payload."""
    body = pickle.dumps(Payload(marker), protocol=2)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("model/code/__torch__.py", "")
        archive.writestr("model/data.pkl", body)
        archive.writestr("model/constants.pkl", body)
        archive.writestr("model/version", "3\n")
    return path


def _fake_export(path: Path, marker: Path) -> Path:
    """An archive shaped like a ``torch.export`` program whose pickles hold the payload."""
    body = pickle.dumps(Payload(marker), protocol=2)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("model/archive_format", "pt2")
        archive.writestr("model/data/weights/model_weights_config.json", "{}")
        archive.writestr("model/data/weights/weight_0", body)
        archive.writestr("model/data/constants/tensor_0", body)
        archive.writestr("model/models/model.json", "{}")
    return path


@pytest.mark.parametrize("make", [_zip_pickle, _legacy_pickle])
def test_malicious_weights_are_refused_and_never_run(
    tmp_path: Path, marker: Path, make: object
) -> None:
    weights = make(tmp_path / "weights.pt", marker)  # type: ignore[operator]
    with pytest.raises(ConfigError, match="is not a plain state dict"):
        load_model(NETWORK, weights=weights)
    assert not marker.exists(), "the pickle's code ran"


@pytest.mark.parametrize(
    ("make", "name"), [(_fake_torchscript, "model.pt"), (_fake_export, "model.pt2")]
)
def test_a_malicious_program_file_is_refused_and_never_runs(
    tmp_path: Path, marker: Path, make: object, name: str
) -> None:
    path = make(tmp_path / name, marker)  # type: ignore[operator]
    with pytest.raises(ConfigError, match=r"cannot be loaded as a|no TorchScript"):
        load_model(str(path))
    assert not marker.exists(), "the pickle's code ran"


def test_a_pickled_object_as_the_model_file_is_refused_before_loading(
    tmp_path: Path, marker: Path
) -> None:
    path = _zip_pickle(tmp_path / "model.pt", marker)
    with pytest.raises(ConfigError, match="holds a state dict, not a whole model"):
        load_model(str(path))
    assert not marker.exists()


def test_a_malicious_file_dropped_into_the_model_folder_is_refused(
    tmp_path: Path, marker: Path
) -> None:
    folder = tmp_path / "models"
    folder.mkdir()
    _zip_pickle(folder / "handed-back.pt", marker)
    chosen = choose_model(folder, NETWORK, None, now_s=time.time() + 60)
    assert chosen.weights == folder / "handed-back.pt"
    with pytest.raises(ConfigError, match="is not a plain state dict"):
        load_model(chosen.spec, weights=chosen.weights)
    assert not marker.exists()


def test_a_malicious_saved_bootstrap_network_is_refused(tmp_path: Path, marker: Path) -> None:
    path = _zip_pickle(tmp_path / "bootstrap-p1-n40-0123456789ab.state", marker)
    with pytest.raises(ConfigError, match="is not a plain state dict"):
        load_saved(path)
    assert not marker.exists()


def test_a_plain_state_dict_still_loads(tmp_path: Path) -> None:
    weights = tmp_path / "weights.pt"
    torch.save(torch.nn.Identity().state_dict(), weights)
    model = load_model(NETWORK, weights=weights)
    assert model.version.startswith("Identity-")
