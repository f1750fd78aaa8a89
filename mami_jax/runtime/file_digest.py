"""A file's SHA-256, read in 1 MiB blocks: how a written shard or an input manifest is
recognised again (teacher feature shards, ``protect``'s log of what it has finished)."""

from __future__ import annotations

import hashlib


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
