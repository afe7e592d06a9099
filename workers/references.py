"""Image references that Label Studio resolves for the workers: cloud storage objects.

A task imported from a cloud storage of Label Studio (S3, GCS, Azure) names its image by the
storage's URI, ``s3://bucket/key``. The workers hold no credentials for the bucket; the
server, which does, answers ``/tasks/<id>/resolve/?fileuri=<the URI, base64>`` with the object
(the storage's "Use pre-signed URLs" off) or a redirect to a pre-signed URL for it, as it
does for its own editor. Pure functions of the reference: the daemon, which builds the
chunks, imports this without the image decoding.
"""

from __future__ import annotations

import base64
import binascii
import re
from urllib.parse import SplitResult, parse_qs, urlsplit

STORAGE_SCHEMES = frozenset({"s3", "gs", "azure-blob"})
"""The URI schemes of Label Studio's cloud import storages (``url_scheme`` of its S3, GCS and
Azure storages)."""
_RESOLVER = re.compile(r"/tasks/\d+/resolve/?")


def through_label_studio(task_id: int, reference: str) -> str:
    """What the workers read for task ``task_id``'s ``reference``: a cloud storage object
    becomes Label Studio's resolver path for it; any other reference stays as it is."""
    try:
        scheme = urlsplit(reference).scheme
    except ValueError:  # malformed: reading it says why
        return reference
    if scheme not in STORAGE_SCHEMES:
        return reference
    uri = base64.urlsafe_b64encode(reference.encode()).decode()
    return f"/tasks/{int(task_id)}/resolve/?fileuri={uri}"


def is_resolver(parts: SplitResult) -> bool:
    """Whether ``parts`` is Label Studio's resolver path of a task's storage object."""
    return parts.scheme == "" and _RESOLVER.fullmatch(parts.path) is not None


def stored_uri(query: str) -> str | None:
    """The storage object a resolver path's query names (None where it names none)."""
    value = (parse_qs(query).get("fileuri") or [""])[0]
    try:
        return base64.urlsafe_b64decode(value.encode()).decode() or None
    except (binascii.Error, ValueError):
        return None
