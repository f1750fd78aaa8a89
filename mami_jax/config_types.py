"""What type a config key takes, and whether a value given for it has that type: one rule
for a run's stored ``config.json`` read back (``run_config_problems``) and for the
applications' ``--set KEY=VALUE`` overrides (``override_value``).

A key takes the type of its value in the reference config (``kind_of``): a bool takes only
True/False (not 0/1), an int only an integer (not 2.7, nor True), a float any number (an
int included: 1 is 1.0), a string only text, a tuple a list whose items have the type its
items have (an empty tuple holds text: every empty tuple of the configs lists names, paths
or regexes), a block (ConfigDict) a dict, and a placeholder (``config_dict.placeholder``)
its declared type or None.

ml_collections checks types only when a value is assigned to a locked config, and a
config read back from JSON is built afresh: a ``config.json`` with a key missing, misspelt
or of the wrong type was accepted and failed later (an ``AttributeError`` traceback, at
worst after a whole embedding pass; ``int('many')`` naming no key), and an override the
config refused surfaced as ml_collections' ``TypeError`` traceback.
"""

from __future__ import annotations

import ast
import dataclasses
import json
from typing import Any

#: Keys of the experiment config (``mami_jax.config.base_config``) that hold a table
#: ``{name: value}`` rather than settings: a config file may name other keys there (the
#: "align" loss term, teachers' feature sizes, source weights), so a run's ``config.json``
#: may too; the values take the type given, and the code that reads each table checks its
#: names (``train/loss_terms``, ``train/optim``, ``data/splits``, ``data/teacher_join``,
#: the sampler).
FREE_FORM_TABLES = {
    "loss.terms": float,
    "optim.lr_multipliers": float,
    "data.split_fractions": float,
    "data.source_weights": float,
    "data.teacher_features.dims": int,
}

#: How many keys of each kind a refusal lists before "...".
LISTED = 5


@dataclasses.dataclass(frozen=True)
class Kind:
    """The type a key takes: ``type`` (bool, int, float, str, tuple, dict; None: any),
    ``item`` (a tuple's items' type, a table's values' type; None: any) and ``nullable``
    (a placeholder: None too)."""

    type: Any = None
    item: Any = None
    nullable: bool = False


def _is_block(value) -> bool:
    return isinstance(value, dict) or (hasattr(value, "keys") and hasattr(value, "items"))


def _item_type(values) -> Any:
    """The type every item of a reference tuple has: float where ints and floats mix,
    tuple for lists and tuples, str for an empty tuple; None where they differ."""
    kinds = {tuple if isinstance(v, (list, tuple)) else type(v) for v in values}
    if not kinds:
        return str
    if kinds == {int, float}:
        return float
    return kinds.pop() if len(kinds) == 1 else None


def kind_of(reference, declared: type | None = None) -> Kind:
    """The ``Kind`` of a key whose reference value is ``reference`` (``declared``: the type a
    placeholder of value None declares, ``ConfigDict.get_type``)."""
    if _is_block(reference):
        return Kind(dict)
    if isinstance(reference, (list, tuple)):
        return Kind(tuple, item=_item_type(reference))
    if reference is None:
        known = declared if declared in (bool, int, float, str, tuple) else None
        return Kind(known, nullable=True)
    if isinstance(reference, (bool, int, float, str)):
        return Kind(type(reference))
    return Kind()


def _fits_type(value, kind_type) -> bool:
    if kind_type is None:
        return True
    if kind_type is bool:
        return isinstance(value, bool)
    if kind_type is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind_type is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind_type is str:
        return isinstance(value, str)
    if kind_type is tuple:
        return isinstance(value, (list, tuple))
    if kind_type is dict:
        return _is_block(value)
    return isinstance(value, kind_type)


def fits(value, kind: Kind) -> bool:
    """Whether ``value`` (a JSON value or a Python literal) has the type ``kind``."""
    if value is None:
        return kind.nullable or kind.type is None
    if not _fits_type(value, kind.type):
        return False
    if kind.type is tuple:
        return all(_fits_type(v, kind.item) for v in value)
    if kind.type is dict:
        return all(_fits_type(v, kind.item) for v in value.values())
    return True


_ONE = {bool: "true or false", int: "an integer", float: "a number", str: "a string",
        tuple: "a list", dict: "an object"}
_MANY = {bool: "true/false values", int: "integers", float: "numbers", str: "strings",
         tuple: "lists", dict: "objects"}


def describe(kind: Kind, python: bool = False) -> str:
    """What ``kind`` takes, in JSON's words, or (``python``) in those of a Python literal
    as an override writes it."""
    words = _ONE.get(kind.type, "any value")
    if kind.type in (tuple, dict) and kind.item in _MANY:
        words += " of " + _MANY[kind.item]
    if python:
        words = {"true or false": "True or False", "a string": "text"}.get(words, words)
        if kind.type is dict:
            words = "a dict, written {'KEY': VALUE, ...}"
    if kind.nullable and kind.type is not None:
        words += " or None" if python else " or null"
    return words


def _listed(items: list[str]) -> str:
    shown = ", ".join(items[:LISTED])
    return shown + (f", ... ({len(items)} in all)" if len(items) > LISTED else "")


def _shown(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def run_config_problems(values: dict, reference) -> dict[str, list[str]]:
    """The keys of ``values`` (a JSON config, as parsed) that do not fit ``reference`` (a
    ConfigDict, the experiment config's structure): ``"missing"``, ``"unknown"`` (dotted
    paths; a missing block is one key) and ``"wrong"`` (``key=VALUE (expects TYPE)``),
    each sorted.
    ``FREE_FORM_TABLES`` may hold any names."""
    from mami_jax.config_renames import renamed_key_message

    found = {"missing": [], "unknown": [], "wrong": []}

    def wrong(path, value, kind):
        found["wrong"].append(f"{path}={_shown(value)} (expects {describe(kind)})")

    def walk(given, ref, prefix):
        for key in ref.keys():
            path = prefix + key
            if key not in given:
                found["missing"].append(path)
                continue
            value, expected = given[key], ref[key]
            if path in FREE_FORM_TABLES:
                kind = Kind(dict, item=FREE_FORM_TABLES[path])
                if not _is_block(value):
                    wrong(path, value, kind)
                    continue
                for name, item in value.items():
                    if not fits(item, Kind(FREE_FORM_TABLES[path])):
                        wrong(f"{path}.{name}", item, Kind(FREE_FORM_TABLES[path]))
            elif _is_block(expected):
                if _is_block(value):
                    walk(value, expected, path + ".")
                else:
                    wrong(path, value, Kind(dict))
            else:
                kind = kind_of(expected, ref.get_type(key) if hasattr(ref, "get_type") else None)
                if not fits(value, kind):
                    wrong(path, value, kind)
        for key in given:
            if key not in ref:
                path = prefix + key
                renamed = renamed_key_message(path)
                found["unknown"].append(
                    path + (f" ({renamed.split(' was ', 1)[1]})" if renamed else ""))

    walk(values, reference, "")
    return {what: sorted(items) for what, items in found.items()}


def check_run_config(values: dict, source: str) -> dict:
    """``values`` (a parsed ``config.json``) with the keys it lacks filled in from the
    experiment config (``mami_jax.config.base_config``), and one warning line on stderr
    naming them: a run written by an older mami_jax lacks the keys added since, whose
    defaults keep the behaviour it was trained with. A key unknown or of the wrong type
    is a ValueError naming ``source`` and the keys (a few of each, dotted): a hand edit or
    a file of another program, which nothing should guess at."""
    import sys

    from mami_jax.config import base_config

    reference = base_config()
    found = run_config_problems(values, reference)
    parts = []
    for what, items in (("unknown key", found["unknown"]), ("wrong type", found["wrong"])):
        if items:
            plural = "s" if len(items) > 1 and what.endswith("key") else ""
            parts.append(f"{what}{plural}: {_listed(items)}")
    if parts:
        raise ValueError(f"{source} does not have the experiment config's keys and types "
                         f"(mami_jax/config.py): {'; '.join(parts)}")
    if not found["missing"]:
        return values
    print(f"warning: {source} has no {_listed(found['missing'])} (written before "
          "they existed?): their defaults (mami_jax/config.py) are used",
          file=sys.stderr, flush=True)
    filled = json.loads(json.dumps(values))
    for path in found["missing"]:
        *parents, key = path.split(".")
        node, ref = filled, reference
        for part in parents:
            node, ref = node[part], ref[part]
        value = ref[key]
        node[key] = value.to_dict() if hasattr(value, "to_dict") else value
    return filled


def _literal(text: str):
    """``text`` as a Python literal; ``text`` itself when it is none."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text


def override_value(text: str, current, declared: type | None = None):
    """The value ``KEY=text`` gives a key whose value is ``current`` (``declared``: a
    placeholder's type): a Python literal of the key's type, an int for a float key read
    as a float; for a text key, the text itself unless it is a quoted string (``norm=2``
    is "2"); for a tuple of text (``perturb.ensemble``), a list literal or one text whose
    items are joined by ``+`` (``A+B``, as ensembles are written: ``("A", "B")``).
    ValueError saying what the key takes otherwise (the caller names the key)."""
    kind = kind_of(current, declared)
    value = _literal(text)
    if value is None and kind.nullable:
        return None
    if kind.type is str:
        return value if isinstance(value, str) else text
    if kind.type is tuple and kind.item is str and not isinstance(value, (list, tuple)):
        return tuple(n for n in (value if isinstance(value, str) else text).split("+") if n)
    if not fits(value, kind):
        takes = describe(kind, python=True)
        if kind.type is tuple and kind.item is str:
            takes += ": ('A', 'B') or A+B"
        raise ValueError(takes)
    if kind.type is float:
        return float(value)
    if kind.type is tuple:
        return tuple(value)
    if kind.type is dict:
        return dict(value)
    return value
