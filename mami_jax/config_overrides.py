"""``KEY=VALUE`` overrides of a config's existing keys, each value read as its key's type.

The privacy commands' ``--set`` and the benchmarks' ``--set`` take overrides in this
form (``main`` takes absl's ``--config.KEY=VALUE`` instead). A value is read by
``config_types.override_value``: a Python literal of the key's type, a text key's text
as written, a tuple of text also as one ``A+B`` text. A key the config lacks, or a value
of another type, is refused naming the override: ml_collections refused the first with
a traceback and cut ``2.7`` to ``2`` for an int key. Such a refusal is an
``OverrideError``, a usage error (status 2, as ``main`` gives a bad ``--config.KEY``);
a value of the right type that a command's checks refuse later stays bad input (1).
"""

from __future__ import annotations

from typing import Callable, Iterable

import ml_collections

from mami_jax.config_types import override_value


class OverrideError(ValueError):
    """An override that is not ``KEY=VALUE`` of an existing key and its type."""


def apply_overrides(cfg: ml_collections.ConfigDict, items: Iterable[str] | None,
                    moved: Callable[[str], str | None] | None = None) -> None:
    """Set each ``KEY=VALUE`` of ``items`` on ``cfg`` in place. ``moved(key)``, when given,
    names why a key of an older spelling is gone (``config_renames.renamed_key_message``
    for experiment configs). OverrideError naming the override otherwise."""
    with cfg.unlocked():
        for item in items or ():
            key, sep, text = item.partition("=")
            if not sep:
                raise OverrideError(f"override {item!r}: expected KEY=VALUE")
            why = moved(key) if moved else None
            if why:
                raise OverrideError(f"override {item!r}: {why}")
            node, *path = [cfg] + key.split(".")
            for part in path:
                if not hasattr(node, "keys") or part not in node:
                    raise OverrideError(f"override {item!r}: no config key {key!r}")
                parent, node = node, node[part]
            try:
                value = override_value(text, node, parent.get_type(path[-1]))
            except ValueError as e:
                raise OverrideError(f"override {item!r}: {key} takes {e}") from None
            parent[path[-1]] = value


def apply_set_flags(cfg: ml_collections.ConfigDict, items: Iterable[str] | None,
                    usage_error: Callable[[str], None],
                    moved: Callable[[str], str | None] | None = None) -> None:
    """``apply_overrides`` of a command's ``--set`` flags: a refused override goes to
    ``usage_error`` (the command's ``parser.error``, which exits with status 2)."""
    try:
        apply_overrides(cfg, items, moved)
    except OverrideError as e:
        usage_error(f"--set: {e}")
