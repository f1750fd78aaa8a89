"""UIDs derived from other UIDs, for the protected copies and their de-identified headers.

PS3.5 B.2: "2.25." followed by a UUID's integer is a valid UID that needs no registered
root. Deriving a replacement from the original UID gives the same one in every file (the
slices of a series stay one series, a study one study).

A protected copy under its own header (``COPY``, ``metadata.identity = "keep"``) still says
whose it is, so its UIDs are a name-based UUID (uuid5) of the original: the same on every
run. A de-identified header (``DEIDENTIFIED``) must not lead back to the original, and a
public function of the original UID would: whoever holds the unprotected archive (the
attacker ``evaluate`` assumes) could compute it for every archived UID and match the copy's
study, series or instance UID. Its UIDs are therefore a keyed hash (HMAC-SHA256) under a
secret made per protection (``new_uid_key``), kept where the run resumes from and not shared
with the images (``protect_log``).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import uuid

#: Purposes: a protected copy is a new image; a de-identified header names no original.
COPY = "mami_jax protected copy of "
DEIDENTIFIED = "mami_jax protect "

#: Bytes of a UID key (``new_uid_key``).
UID_KEY_BYTES = 32


def new_uid_key() -> bytes:
    """A fresh secret for ``derived_uid``'s keyed form."""
    return os.urandom(UID_KEY_BYTES)


def derived_uid(uid: str, purpose: str, key: bytes | None = None) -> str:
    """The UID that replaces ``uid`` for ``purpose``: a name-based UUID without ``key``,
    else the first 128 bits of HMAC-SHA256(key, purpose + uid) as a (version 4) UUID,
    which nobody without ``key`` can compute from ``uid``."""
    if key is None:
        return f"2.25.{uuid.uuid5(uuid.NAMESPACE_OID, purpose + str(uid)).int}"
    digest = hmac.new(key, (purpose + str(uid)).encode(), hashlib.sha256).digest()
    return f"2.25.{uuid.UUID(bytes=digest[:16], version=4).int}"
