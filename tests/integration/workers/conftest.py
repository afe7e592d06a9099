"""The unit tests' digit images and store, and the session's real Label Studio."""

from tests.integration.label_studio.conftest import label_studio, personal_access_token
from tests.unit.workers.conftest import digit_files, project

__all__ = ["digit_files", "label_studio", "personal_access_token", "project"]
