"""A migrated, empty Label Studio database, reused so fresh data folders start in seconds.

The first start of a new data folder runs every Django migration (a minute or more on a small
machine); a restart takes seconds. So after a fresh server first answers /health, its SQLite
database (the preset user, token and organization, no projects yet) is copied aside, and the
next fresh data folder starts from that copy. Keyed by version, user, password and token,
since Label Studio sets a token only when it creates the user.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
from contextlib import closing
from pathlib import Path

DATABASE = "label_studio.sqlite3"
"""The file Label Studio keeps in LABEL_STUDIO_BASE_DATA_DIR."""


def template_path(folder: Path, version: str, user: str, password: str, token: str) -> Path:
    key = hashlib.sha256(f"{user}\n{password}\n{token}".encode()).hexdigest()[:12]
    return folder / f"label-studio-{version}-{key}.sqlite3"


def seed(data_dir: Path, template: Path) -> bool:
    """Copy the template into a data folder that has no database yet; True when copied."""
    target = data_dir / DATABASE
    if target.exists() or not template.is_file():
        return False
    partial = target.with_suffix(".partial")
    shutil.copyfile(template, partial)
    os.replace(partial, target)
    return True


def save(data_dir: Path, template: Path) -> None:
    """Keep a consistent copy of a running server's database (SQLite's online backup)."""
    if template.exists():
        return
    template.parent.mkdir(parents=True, exist_ok=True)
    partial = template.with_name(f"{template.name}.{os.getpid()}.partial")
    with (
        closing(sqlite3.connect(data_dir / DATABASE)) as source,
        closing(sqlite3.connect(partial)) as copy,
    ):
        source.backup(copy)
    os.replace(partial, template)  # atomic: two servers saving at once leave one whole file
