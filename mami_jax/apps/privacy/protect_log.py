"""What a ``protect`` run has finished so far, so that an interrupted run (a Colab session
that disconnects, a preempted VM) goes on where it stopped instead of starting again.

``OUT/protect_log.jsonl``: the first line holds the run's settings (the privacy config,
the models, the input manifest's content and the split) and the secret that keys the
de-identified headers' UIDs (``derived_uids``: a resumed run must derive the same UIDs, and
whoever holds the secret can link the copies' UIDs to the originals', so the log, like the
manifest, stays with the site and is not shared with the images); every further line is one
finished image's record, appended once its file is written. A run whose settings differ
from the log's is refused, naming the keys that differ, so one folder never mixes two
protections. A last line cut short by a crash is no finished image: that image is
protected again. Any other unreadable line is an error naming it.
"""

from __future__ import annotations

import json
import os

from mami_jax.apps.privacy.derived_uids import UID_KEY_BYTES, new_uid_key
from mami_jax.runtime import strict_json
from mami_jax.runtime.atomic_files import write_text_atomic

LOG_NAME = "protect_log.jsonl"


def _flat(value, prefix: str = "") -> dict:
    """Nested dicts as {"a.b": leaf}: the keys a refusal names."""
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: value}


def differing_keys(a: dict, b: dict) -> list[str]:
    fa, fb = _flat(a), _flat(b)
    return sorted(k for k in set(fa) | set(fb) if fa.get(k, "<absent>") != fb.get(k, "<absent>"))


class ProtectLog:
    """The finished images of one protection in one output folder (``open``)."""

    def __init__(self, path: str, settings: dict, records: dict[str, dict], cut_short: int,
                 uid_key: bytes):
        self.path, self.settings, self.uid_key = path, settings, uid_key
        self.records = records          # image_id -> its record, in the order finished
        self.cut_short = cut_short      # 1 when the last line was cut short by a crash

    @classmethod
    def open(cls, out_dir: str, settings: dict) -> "ProtectLog":
        """The log of ``out_dir`` for ``settings`` (empty when there is none: the file is
        written just before the first copy (``start``), so a run refused before any image
        leaves nothing behind, and a run stopped while writing its first copy leaves a log
        that says whose folder it is). A log of other settings is a ValueError naming the
        keys that differ."""
        settings = json.loads(strict_json.dumps(settings, other=str))   # as the file holds it
        path = os.path.join(out_dir, LOG_NAME)
        if not os.path.exists(path):
            return cls(path, settings, {}, 0, new_uid_key())
        with open(path) as f:
            lines = f.read().split("\n")
        ends_cleanly = lines[-1] == ""
        lines = lines[:-1] if ends_cleanly else lines
        try:
            header = json.loads(lines[0])
            logged = header["settings"]
            uid_key = bytes.fromhex(header["uid_key"])
            if len(uid_key) != UID_KEY_BYTES:
                raise ValueError(f"a uid_key of {len(uid_key)} bytes, not {UID_KEY_BYTES}")
        except (IndexError, ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{path}: line 1 is no protect log header ({e}); remove the file "
                             f"or give another --out") from e
        differ = differing_keys(logged, settings)
        if differ:
            more = f" and {len(differ) - 8} more" if len(differ) > 8 else ""
            shown = ", ".join(differ[:8]) + more
            raise ValueError(f"{out_dir} holds a protection made with other settings ({shown} "
                             f"differ): give another --out, or remove {path} to start again")
        records, cut_short = {}, 0
        for number, line in enumerate(lines[1:], start=2):
            try:
                record = json.loads(line)
                records[str(record["image_id"])] = record
            except (ValueError, KeyError, TypeError) as e:
                if number == len(lines) and not ends_cleanly:
                    cut_short = 1       # the crash came while this line was written
                    continue
                raise ValueError(f"{path}: line {number} is no image record ({e})") from e
        if cut_short:                   # appends must start on a line of their own
            with open(path, "r+") as f:
                f.truncate(len("\n".join(lines[:-1])) + 1)
        return cls(path, settings, records, cut_short, uid_key)

    def finished(self, image_id: str, written: str) -> bool:
        """Whether ``image_id`` was finished and its file ``written`` is still there."""
        return image_id in self.records and os.path.exists(written)

    def start(self) -> None:
        """Writes the header line if the log has none yet: called before a copy is
        written, so that a run stopped between its first copy and that copy's record
        (a large series' header edit, a disconnect) is found again as this run's folder
        (it held only ``images/`` and was refused as someone else's)."""
        if not os.path.exists(self.path):
            header = {"settings": self.settings, "uid_key": self.uid_key.hex()}
            write_text_atomic(self.path, strict_json.dumps(header) + "\n")

    def add(self, record: dict) -> None:
        """Appends one finished image's record, flushed to disk before the next image."""
        line = strict_json.dumps(record, where="record", other=str) + "\n"
        self.start()
        with open(self.path, "a") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        self.records[str(record["image_id"])] = json.loads(line)
