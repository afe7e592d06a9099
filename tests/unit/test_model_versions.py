"""Stored versions: the scoring settings a version carries, and the model under them."""

from __future__ import annotations

import pytest

from planner.model_versions import model_of, scored_version


@pytest.mark.parametrize("version", ["m1", "file:3f2a9c", "bootstrap-120+7", "v2+mcx"])
@pytest.mark.parametrize(("size", "passes"), [(32, 0), (64, 0), (32, 10), (224, 5)])
def test_the_model_is_the_version_without_the_settings_scoring_added(
    version: str, size: int, passes: int
) -> None:
    stored = scored_version(version, image_size=size, mc_passes=passes)
    assert (stored == version) is (size == 32 and not passes)
    assert model_of(stored) == version


def test_a_version_that_is_all_suffix_stays_itself() -> None:
    assert model_of("+64px") == "+64px"
