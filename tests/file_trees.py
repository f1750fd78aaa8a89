"""What a folder holds, byte for byte, to show a command left its inputs as they were (or
wrote the same output twice): digests, not contents, so a failed comparison prints short."""

import hashlib
import os

from mami_jax.runtime.folder_lock import LOCK_FILE


def _sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def tree_digest(root) -> dict[str, str]:
    """{path relative to ``root``: sha256} of every file under ``root``, but a folder lock
    (``folder_lock``: it says which command held the folder last, and a refused one held it
    too)."""
    root = str(root)
    return {os.path.relpath(os.path.join(here, name), root): _sha256(os.path.join(here, name))
            for here, _, names in os.walk(root) for name in names if name != LOCK_FILE}


def paths_digest(*roots) -> dict[str, str]:
    """{path: sha256} of every file under each of ``roots`` (a root that is a file: itself)."""
    out = {}
    for root in map(str, roots):
        if os.path.isfile(root):
            out[root] = _sha256(root)
        out.update({os.path.join(root, rel): d for rel, d in tree_digest(root).items()})
    return out
