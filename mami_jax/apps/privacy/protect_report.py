"""What a ``protect`` output says about how its copies were made, read back by the commands
that use the copies (``attacker-manifest``, ``evaluate``) to refuse measurements the
protection itself would bias.

``protect`` writes ``protect_report.json`` beside the ``manifest.csv`` of its copies; a
manifest elsewhere (copies made by another tool) has none, and nothing is checked.
"""

from __future__ import annotations

import os

from mami_jax.runtime.json_object import parse_json_object

REPORT_NAME = "protect_report.json"


def report_beside(manifest: str) -> dict | None:
    """The protect report in ``manifest``'s folder, None where there is none; one that is
    not a JSON object is a ValueError naming it."""
    path = os.path.join(os.path.dirname(os.path.abspath(manifest)), REPORT_NAME)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ValueError(f"{path}: not readable ({e})") from None
    return parse_json_object(data, path, "protect report entries")


def kept_classifiers(report: dict) -> set[str]:
    """The real paths of the history classifiers the protection kept the diagnosis of
    (``perturb.keep_diagnosis``): recorded resolved by ``protect``; a report of before
    that, its config's entries resolved from the current folder."""
    listed = report.get("kept_classifiers")
    if listed is None:
        config = report.get("config") or {}
        listed = [d for d in str((config.get("perturb") or {}).get("keep_diagnosis", "") or "")
                  .split("+") if d]
    return {os.path.realpath(d) for d in listed}
