"""The real Label Studio of the integration tests, for the bad-data faults."""

from tests.integration.label_studio.conftest import (  # noqa: F401 - fixtures
    backend,
    images,
    label_studio,
    personal_access_token,
)
