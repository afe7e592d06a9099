"""Model versions (code and weights hashed) and the watched model folder, scored end to end."""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from planner.errors import ConfigError
from planner.store import Store
from planner.store.scores import load_scores
from tests.unit.workers.conftest import worker_config
from tests.unit.workers.test_inference import SpatialDropoutNet
from tests.unit.workers.test_scoring import Tiny
from workers.dispatch import score_pool
from workers.images import ImageSource
from workers.inference import score_items
from workers.models import file_kind, load_model

ITEMS = [(i, f"/data/local-files/?d=digits/{i - 1:04d}.png") for i in range(201, 221)]


def _tiny(seed: int) -> Tiny:
    torch.manual_seed(seed)
    return Tiny().eval()


def _script(model: nn.Module, path: Path, *, age_s: float = 60.0) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(model).save(str(path))
    _age(path, age_s)
    return path


def _age(path: Path, seconds: float) -> None:
    stamp = time.time() - seconds
    os.utime(path, (stamp, stamp))


def test_an_entry_point_without_weights_is_versioned_by_its_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(tmp_path))
    body = "from torch import nn\n\ndef make():\n    return nn.Linear(3, {})\n"
    (tmp_path / "entry_one.py").write_text(body.format(2))
    (tmp_path / "entry_two.py").write_text(body.format(4))
    (tmp_path / "entry_same.py").write_text(body.format(2))
    one = load_model("entry_one:make").version
    assert one.startswith("make-")
    assert len(one) == len("make-") + 12
    assert load_model("entry_one:make").version == one, "the same code, the same version"
    assert load_model("entry_two:make").version != one, "other code under the same name"
    assert load_model("entry_same:make").version == one, "the version is the code, not the name"
    weights = tmp_path / "w.pt"
    torch.save(nn.Linear(3, 2).state_dict(), weights)
    assert load_model("entry_one:make", weights=weights).version not in (one, "make")


def test_file_kinds_are_read_from_the_content(tmp_path: Path) -> None:
    model = _tiny(0)
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    scripted = _script(model, tmp_path / "scripted.pt")
    exported = tmp_path / "exported.pt2"
    torch.export.save(torch.export.export(model, (torch.rand(1, 3, 8, 8),)), str(exported))
    half = tmp_path / "half.pt"
    half.write_bytes(scripted.read_bytes()[: scripted.stat().st_size // 2])
    (tmp_path / "text.pt").write_text("not a model")
    assert file_kind(tmp_path / "weights.pt") == "state_dict"
    assert file_kind(scripted) == "torchscript"
    assert file_kind(exported) == "export"
    assert file_kind(half) is None
    assert file_kind(tmp_path / "text.pt") is None
    with pytest.raises(ConfigError, match="holds a state dict"):
        load_model(str(tmp_path / "weights.pt"))
    with pytest.raises(ConfigError, match="half copied or corrupt"):
        load_model(str(half))


def _stored(store: Store, pid: int, version: str) -> np.ndarray:
    with store.session() as session:
        scores = load_scores(session, project_id=pid, model_version=version)
    assert scores.task_ids.tolist() == [i for i, _ in ITEMS], "every item carries the version"
    return scores.probs


def test_a_newer_file_in_the_model_folder_scores_the_next_run(
    project: tuple[Store, int], digit_files: tuple[Path, list[int]], tmp_path: Path
) -> None:
    store, pid = project
    root, _ = digit_files
    folder = tmp_path / "models"
    folder.mkdir()
    _script(_tiny(0), folder / "first.pt", age_s=120)
    cfg = replace(worker_config(store, root), model_dir=folder, chunk_size=8)
    first = score_pool(cfg, pid, ITEMS)
    assert first.model_version.startswith("first-")
    probs_first = _stored(store, pid, first.model_version)

    _script(_tiny(1), folder / "second.pt", age_s=60)  # a training job hands its model back
    second = score_pool(cfg, pid, ITEMS)
    assert second.model_version.startswith("second-")
    assert (second.scored, second.skipped) == (20, 0), "the new version scores every item"
    probs_second = _stored(store, pid, second.model_version)
    assert not np.allclose(probs_first, probs_second)
    expected = score_items(_tiny(1), ITEMS, ImageSource(image_root=root))
    np.testing.assert_allclose(probs_second, expected.probs, rtol=1e-5, atol=1e-6)

    # a copy still being written: half a TorchScript archive, modified just now
    copying = folder / "third.pt"
    copying.write_bytes((folder / "second.pt").read_bytes()[:5000])
    during = score_pool(cfg, pid, ITEMS)
    assert during.model_version == second.model_version
    assert during.skipped == 20, "nothing rescored while the copy is under way"
    # a copy that died half way and has sat there since: passed over with the reason
    _age(copying, 60)
    died = score_pool(cfg, pid, ITEMS)
    assert died.model_version == second.model_version
    assert any("third.pt" in w and "no TorchScript" in w for w in died.warnings)

    # the write-then-rename convention: the finished file appears under its name at once
    staging = folder / "fourth.pt.part"
    _script(_tiny(2), staging, age_s=0)
    staging.rename(folder / "fourth.pt")
    later = score_pool(cfg, pid, ITEMS, now_s=time.time() + 10)
    assert later.model_version.startswith("fourth-")


def test_a_state_dict_handed_back_is_loaded_into_the_entry_point(
    project: tuple[Store, int],
    digit_files: tuple[Path, list[int]],
    tmp_path: Path,
    entry_point: Callable[..., str],
) -> None:
    spec = entry_point("planner_test_entry", make=Tiny) + ":make"
    store, pid = project
    root, _ = digit_files
    folder = tmp_path / "models"
    folder.mkdir()
    cfg = replace(worker_config(store, root), model=spec, model_dir=folder)
    untrained = score_pool(cfg, pid, ITEMS)
    assert untrained.model_version.startswith("make-")

    handed_back = folder / "trained.pt"  # a .pt holding a state dict, not TorchScript
    torch.save(_tiny(5).state_dict(), handed_back)
    _age(handed_back, 60)
    trained = score_pool(cfg, pid, ITEMS)
    assert trained.model_version.startswith("make-")
    assert trained.model_version != untrained.model_version
    expected = score_items(_tiny(5), ITEMS, ImageSource(image_root=root))
    stored = _stored(store, pid, trained.model_version)
    np.testing.assert_allclose(stored, expected.probs, rtol=1e-5, atol=1e-6)

    # a bootstrap project cannot take a bare state dict: passed over, said why
    bootstrap = replace(cfg, model="bootstrap", chunk_size=40)
    result = score_pool(bootstrap, pid, ITEMS)
    assert result.model_version.startswith("bootstrap-")
    assert any("state dict needs workers.model" in w for w in result.warnings)


def test_turning_mc_passes_on_or_changing_the_image_size_scores_a_new_version(
    project: tuple[Store, int], digit_files: tuple[Path, list[int]], entry_point: Callable[..., str]
) -> None:
    """Both change the stored numbers: with the version as it was, the items scored before
    mc_passes was on were skipped (no BALD for that version, for good), and a new image size
    was skipped likewise, its scores mixed with the old size's under one version."""
    store, pid = project
    root, _ = digit_files
    spec = entry_point("planner_test_settings", make=SpatialDropoutNet) + ":make"
    cfg = replace(worker_config(store, root), model=spec)
    plain = score_pool(cfg, pid, ITEMS)
    assert "+" not in plain.model_version, "at 32 px without MC passes: named as before"
    with store.session() as session:
        assert load_scores(session, project_id=pid, model_version=plain.model_version).bald is None

    with_bald = score_pool(replace(cfg, mc_passes=2), pid, ITEMS)
    assert with_bald.model_version == f"{plain.model_version}+mc2"
    assert (with_bald.scored, with_bald.skipped) == (len(ITEMS), 0)
    with store.session() as session:
        scores = load_scores(session, project_id=pid, model_version=with_bald.model_version)
    assert scores.bald is not None
    assert scores.bald.shape == (len(ITEMS),)

    larger = score_pool(replace(cfg, image_size=48), pid, ITEMS)
    assert larger.model_version == f"{plain.model_version}+48px"
    assert (larger.scored, larger.skipped) == (len(ITEMS), 0)
    assert score_pool(cfg, pid, ITEMS).skipped == len(ITEMS), "back at 32 px: scored already"

    # passes that cannot run give no BALD, so no version of their own: nothing is rescored
    entry_point("planner_test_settings_plain", make=Tiny)
    tiny = replace(cfg, model="planner_test_settings_plain:make")
    first = score_pool(tiny, pid, ITEMS)
    again = score_pool(replace(tiny, mc_passes=2), pid, ITEMS)
    assert again.model_version == first.model_version
    assert again.skipped == len(ITEMS)
