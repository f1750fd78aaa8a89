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
    """``KEY=VALUE`` overrides (Python literals, else text) on existing keys only."""
    import ast
    with cfg.unlocked():
        for item in items or ():
            key, sep, text = item.partition("=")
            if not sep:
                raise ValueError(f"override {item!r}: expected KEY=VALUE")
            try:
                value = ast.literal_eval(text)
            except (ValueError, SyntaxError):
                value = text
            node, *path = [cfg] + key.split(".")
            for part in path[:-1]:
                if part not in node:
                    raise ValueError(f"override {item!r}: no config key {key!r}")
                node = node[part]
            if path[-1] not in node:
                raise ValueError(f"override {item!r}: no config key {key!r}")
            node[path[-1]] = type(node[path[-1]])(value) if isinstance(
                node[path[-1]], (float, int)) and not isinstance(node[path[-1]], bool) else value
