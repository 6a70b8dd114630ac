"""File checksums: the one ``sha256`` of a file that model cards, exports and
evaluation records name (local paths and ``gs://``, read in 1 MiB blocks)."""

from __future__ import annotations

import hashlib
import os

from etils import epath


def sha256(path: str | os.PathLike) -> str:
    """The hex SHA-256 of the file at ``path``."""
    digest = hashlib.sha256()
    with epath.Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
