"""The versions scores are stored under: a model's own version and the scoring settings that
change its numbers (the workers name them, the stop rules compare models by them)."""

from __future__ import annotations

import re

UNVERSIONED_SIZE = 32
"""The input size a version without one in it was scored at: the default, when the version
did not yet say (see :func:`scored_version`)."""
_SETTINGS = re.compile(r"(?:\+\d+px)?(?:\+mc\d+)?$")
"""What :func:`scored_version` appends to a model's version."""


def scored_version(version: str, *, image_size: int, mc_passes: int) -> str:
    """The version scores of the model ``version`` are stored under: with the settings that
    change the numbers, ``+{image_size}px`` (but at ``UNVERSIONED_SIZE``) and ``+mc{T}`` for
    BALD from T MC-dropout passes (0: none run).

    Without them, items scored before mc_passes was turned on were skipped and the version
    had no BALD for good, and a new image size mixed inputs under one version. A version
    scored at 32 px without MC passes keeps its name from before, so its scores stand; one
    scored at another size or with BALD gets a new name, and its pool is scored once more.
    """
    if image_size != UNVERSIONED_SIZE:
        version += f"+{image_size}px"
    if mc_passes:
        version += f"+mc{mc_passes}"
    return version


def model_of(stored: str) -> str:
    """The model a stored version was scored with, without the settings
    :func:`scored_version` added: the same model scored again at another size or with MC
    passes is the same model to the stop rules, not a new version whose predictions agree."""
    return _SETTINGS.sub("", stored, count=1) or stored
