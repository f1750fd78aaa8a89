"""Reading the JSON objects mami_jax writes (model configs, run configs), with one wording
for what is wrong: the file is named, then whether it is not JSON or not an object."""

from __future__ import annotations

import json


def parse_json_object(text: str, source: str, holds: str, error: type = ValueError) -> dict:
    """``text`` as a JSON object (a dict); ``error`` naming ``source`` when it is not valid
    JSON or is another JSON value (``holds``: what the object should hold, for the
    message, e.g. "model config values")."""
    try:
        values = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise error(f"{source}: not valid JSON ({e})") from None
    if not isinstance(values, dict):
        raise error(f"{source}: expected a JSON object of {holds}, got {type(values).__name__}")
    return values
