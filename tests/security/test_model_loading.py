"""Models load without unpickling arbitrary objects: a pickle that would run code on load is
refused with a clear error wherever a model file can come from, and its code never runs."""

from __future__ import annotations

import io
import json
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
_TORCH_LOAD = torch.load


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
    path = _zip_pickle(tmp_path / "bootstrap-p1-c0123abcd-n40.state", marker)
    with pytest.raises(ConfigError, match="is not a plain state dict"):
        load_saved(path)
    assert not marker.exists()


def linear() -> torch.nn.Module:
    """An entry point whose network has weights to load."""
    return torch.nn.Linear(3, 2)


def test_a_plain_state_dict_still_loads(tmp_path: Path) -> None:
    saved = torch.nn.Linear(3, 2)
    with torch.no_grad():
        saved.weight.copy_(torch.arange(6.0).reshape(2, 3))
        saved.bias.copy_(torch.tensor([0.5, -0.5]))
    weights = tmp_path / "weights.pt"
    torch.save(saved.state_dict(), weights)
    model = load_model(f"{__name__}:linear", weights=weights)
    assert model.version.startswith("linear-")
    loaded = model.module.state_dict()
    torch.testing.assert_close(loaded["weight"], saved.weight.detach())
    torch.testing.assert_close(loaded["bias"], saved.bias.detach())


def _exported(path: Path) -> Path:
    """A real ``torch.export`` archive of a small network."""
    network = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten())
    torch.export.save(torch.export.export(network, (torch.rand(1, 3, 8, 8),)), str(path))
    return path


def _rewritten(source: Path, path: Path, change: dict[str, bytes | None]) -> Path:
    """``source``'s archive with the entries whose name ends with a key of ``change``
    replaced by its value (None drops it), and entries named by the keys not found added
    under the archive's top folder."""
    with zipfile.ZipFile(source) as original, zipfile.ZipFile(path, "w") as out:
        top = original.namelist()[0].split("/", 1)[0]
        seen = set()
        for info in original.infolist():
            ending = next((k for k in change if info.filename.endswith(k)), None)
            if ending is None:
                out.writestr(info, original.read(info.filename))
                continue
            seen.add(ending)
            if change[ending] is not None:
                out.writestr(info, change[ending])  # type: ignore[arg-type]
        for name, body in change.items():
            if name not in seen and body is not None:
                out.writestr(f"{top}/{name}", body)
    return path


def _payload_pickle(marker: Path) -> bytes:
    buffer = io.BytesIO()
    torch.save(Payload(marker), buffer)
    return buffer.getvalue()


def _pickled_sample_inputs(source: Path, path: Path, marker: Path) -> Path:
    # torch.export.load retries the sample inputs with weights_only=False when True fails
    return _rewritten(source, path, {"data/sample_inputs/model.pt": _payload_pickle(marker)})


def _pickled_weight(source: Path, path: Path, marker: Path) -> Path:
    # a weight marked use_pickle is read with torch.load(weights_only=False)
    with zipfile.ZipFile(source) as archive:
        name = next(n for n in archive.namelist() if n.endswith("model_weights_config.json"))
        config = json.loads(archive.read(name))
    first = next(iter(config["config"].values()))
    first["use_pickle"] = True
    change = {"model_weights_config.json": json.dumps(config).encode()}
    return _rewritten(source, path, change | {first["path_name"]: _payload_pickle(marker)})


@pytest.mark.parametrize("make", [_pickled_sample_inputs, _pickled_weight])
def test_an_exported_program_carrying_a_pickle_is_refused_and_it_never_runs(
    tmp_path: Path, marker: Path, make: object
) -> None:
    good = _exported(tmp_path / "good.pt2")
    path = make(good, tmp_path / "model.pt2", marker)  # type: ignore[operator]
    with pytest.raises(ConfigError, match="cannot be loaded as a export program"):
        load_model(str(path))
    assert not marker.exists(), "the pickle's code ran"
    assert torch.load is _TORCH_LOAD, "torch.load was left patched"
    assert load_model(str(good)).kind == "export"


@pytest.mark.parametrize(
    ("entry", "what"),
    [
        ("data/constants/opaque_obj_0", "a pickled Python object"),
        ("data/constants/custom_obj_0", "a TorchBind object"),
        ("data/aotinductor/model/model.so", "AOTInductor native code"),
    ],
)
def test_an_exported_archive_with_code_or_objects_is_refused_unread(
    tmp_path: Path, marker: Path, entry: str, what: str
) -> None:
    good = _exported(tmp_path / "good.pt2")
    path = _rewritten(good, tmp_path / "model.pt2", {entry: _payload_pickle(marker)})
    with pytest.raises(ConfigError, match=f"holds {what}"):
        load_model(str(path))
    assert not marker.exists()
