"""UIDs derived from other UIDs, for the protected copies and their de-identified headers.

PS3.5 B.2: "2.25." followed by a UUID's integer is a valid UID that needs no registered
root. A name-based UUID (uuid5) of the original UID and a purpose gives the same
replacement in every file and every run (the slices of a series stay one series, a
resumed or repeated ``protect`` writes the same copy), and does not give the original back.
"""

from __future__ import annotations

import uuid

#: Purposes: a protected copy is a new image; a de-identified header names no original.
COPY = "mami_jax protected copy of "
DEIDENTIFIED = "mami_jax protect "


def derived_uid(uid: str, purpose: str) -> str:
    return f"2.25.{uuid.uuid5(uuid.NAMESPACE_OID, purpose + str(uid)).int}"
