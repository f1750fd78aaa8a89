"""Every file is read and written through the local file system; a URL is not a path.

On a Cloud TPU VM the data and runs usually live in a bucket, and ``--workdir=gs://b/run``
is what big_vision takes. Here it became the local folder ``./gs:/b/run``: the run trained
for hours and left its checkpoints on the VM's disk, lost with the VM; a ``gs://`` manifest
or image was "no such file". A URL is refused (an output) or explained (an input) by naming
the way to use a bucket: mount it (gcsfuse, or a Filestore/NFS share) and give the mounted
path. ``compilation_cache_dir`` is the exception: JAX itself writes it, buckets included.
"""

from __future__ import annotations

import os

MOUNT_IT = ("mami_jax reads and writes files through the local file system: mount the bucket "
            "(gcsfuse, or a Filestore/NFS share) and give the mounted path")


def is_url(path) -> bool:
    return "://" in os.fspath(path)


def url_hint(path) -> str:
    """`` (a URL: ...)`` for a path that is a URL, else ""; ends a "no such file" message."""
    return f" (a URL: {MOUNT_IT})" if is_url(path) else ""


def refuse_url(path, role: str) -> None:
    """ValueError naming ``role`` (``--workdir``) when ``path`` is a URL."""
    if is_url(path):
        raise ValueError(f"{role} {os.fspath(path)}: a URL, not a folder; {MOUNT_IT}")
