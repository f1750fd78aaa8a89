"""How a tuple of text (``data.only_modalities``, ``eval.protocols``, teacher names) is
written as ``main``'s ``--config.KEY=VALUE`` flag, and how its misreading is recognised.

absl reads a tuple-of-text override as a Python literal when it is one and otherwise as a
single name: ``--config.data.only_modalities=xray,ct`` becomes ``("xray,ct",)``, a name no
check knows. A refusal of such a value names the flag that gives the list instead.
"""

from __future__ import annotations

import re


def text_tuple_flag(key: str, names) -> str:
    """The ``main`` flag that sets the tuple-of-text key ``key`` to ``names``, as absl reads
    it: one name bare, several as a quoted Python tuple (absl reads ``--config.KEY=a,b`` as
    the one name "a,b")."""
    names = list(names)
    if len(names) == 1:
        return f"--config.{key}={names[0]}"
    return f"--config.{key}=\"({', '.join(repr(n) for n in names)})\""


def names_listed_in_one(given, known) -> list[str] | None:
    """The names ``given`` (a tuple of text) meant when absl read a list as one item
    ("xray,ct", "reid+history", "(xray, ct)"): every item split at commas, plus signs,
    spaces, brackets and quotes, or None unless that gives more names than items and every
    one is ``known``."""
    names = [w for item in given for w in re.split(r"[,+\s()\[\]'\"]+", str(item)) if w]
    if len(names) > len(tuple(given)) and all(n in known for n in names):
        return names
    return None


def listing_hint(key: str, given, known) -> str:
    """"; several are given as a tuple: FLAG" when the value ``given`` of the tuple-of-text
    key ``key`` lists ``known`` names in one item (``names_listed_in_one``), else ""; the
    end of a refusal of that value."""
    meant = names_listed_in_one(given, known)
    return f"; several are given as a tuple: {text_tuple_flag(key, meant)}" if meant else ""
