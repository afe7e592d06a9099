"""The session's real Label Studio for the daemon process tests."""

from tests.integration.label_studio.conftest import backend, images, label_studio

__all__ = ["backend", "images", "label_studio"]
