"""The Label Studio token a running daemon uses, and taking a rotated one after a 401.

One token for the whole daemon: its own Label Studio client and the scoring child, which
reads the images of ``/data/local-files/`` and ``/data/upload/`` with it. A token the daemon
read at the start is revoked once the operator rotates it; a child given that one would fail
every cycle while the syncs look healthy.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from planner.connect import reread_token
from planner.errors import AuthError
from planner.settings import Settings

if TYPE_CHECKING:
    from integrations.label_studio.client import LabelStudioBackend

log = logging.getLogger("planner.daemon")


@dataclass
class TokenInUse:
    """The token the daemon uses now: the settings' at the start, a rotated one once
    ``token_refresher`` took it."""

    value: str | None = field(repr=False)

    @classmethod
    def of(cls, settings: Settings) -> TokenInUse:
        token = settings.label_studio.token
        return cls(None if token is None else token.get_secret_value())


def token_refresher(
    settings: Settings, backend: LabelStudioBackend, token: TokenInUse | None = None
) -> Callable[[], bool]:
    """After a 401: re-read ``label_studio.token_file`` and use the token if it changed, in
    ``backend`` and in ``token`` (what the scoring child is given)."""
    token = token or TokenInUse.of(settings)
    tried = [token.value]

    def refresh() -> bool:
        fresh = reread_token(settings)
        if fresh is None or fresh == tried[0]:
            return False
        tried[0] = fresh  # a refused token is not tried again at every 401
        try:
            backend.use_token(fresh)
        except AuthError as exc:  # e.g. an expired personal access token, refused as read
            log.warning("the token in label_studio.token_file is refused too: %s", exc)
            return False
        token.value = fresh
        return True

    return refresh
