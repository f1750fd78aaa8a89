"""Reading a written JSON file as strict parsers do (jq, JavaScript's JSON.parse): the
tests' check that mami_jax never writes NaN or Infinity."""

import json


def strict_loads(text: str):
    """``json.loads``, refusing the NaN / Infinity / -Infinity that RFC 8259 has no form of."""
    def refuse(name):
        raise ValueError(f"not JSON: {name}")
    return json.loads(text, parse_constant=refuse)
