"""Loading the two configs a privacy command needs: its own and the re-ID run's.

A config is named ``FILE[:ARG]`` as ``python -m mami_jax.main --config`` names it; FILE is
a Python file with ``get_config(arg)`` (or a run's ``config.json``). The privacy config
(``configs/privacy.py``) may name the experiment config the re-ID models are read with in
``experiment``; left empty, the ``--workdir`` model's own is read (``experiment_config``).
"""

from __future__ import annotations

import ml_collections

# The privacy commands load both configs with the shared loader (any working directory).
from mami_jax.config_files import load_config  # noqa: F401

DEFAULT_PRIVACY_CONFIG = "configs/privacy.py"


def apply_overrides(cfg: ml_collections.ConfigDict, items) -> None:
    """``KEY=VALUE`` overrides (``--set``) on existing keys only, each value read as the
    key's type (``config_types.override_value``: a Python literal; a text key takes the
    text as written; a tuple of text also one ``A+B`` text, as ensembles are written).
    ValueError naming the override and what the key takes for a value of another type
    (ml_collections refused one with a traceback, and an int key cut 2.7 to 2)."""
    from mami_jax.config_types import override_value
    with cfg.unlocked():
        for item in items or ():
            key, sep, text = item.partition("=")
            if not sep:
                raise ValueError(f"override {item!r}: expected KEY=VALUE")
            node, *path = [cfg] + key.split(".")
            for part in path:
                if not hasattr(node, "keys") or part not in node:
                    raise ValueError(f"override {item!r}: no config key {key!r}")
                parent, node = node, node[part]
            try:
                value = override_value(text, node, parent.get_type(path[-1]))
            except ValueError as e:
                raise ValueError(f"override {item!r}: {key} takes {e}") from None
            parent[path[-1]] = value
