"""Loading the two configs a privacy command needs: its own and the re-ID run's.

A config is named ``FILE[:ARG]`` as ``python -m mami_jax.main --config`` names it; FILE is
a Python file with ``get_config(arg)``. The privacy config (``configs/privacy.py``) names
the experiment config of the re-ID run in ``experiment`` (e.g. ``configs/all.py:runlocal``),
because a workdir stores only its model config, not the preprocessing the model expects.
"""

from __future__ import annotations

import importlib.util
import os

import ml_collections

#: The repository root (where ``configs/`` lives), for relative config paths.
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))

DEFAULT_PRIVACY_CONFIG = "configs/privacy.py"


def _resolve(path: str) -> str:
    if os.path.isabs(path) or os.path.exists(path):
        return path
    return os.path.join(REPO_ROOT, path)


def resolve_spec(spec: str) -> str:
    """``FILE[:ARG]`` with FILE resolved as ``load_config`` resolves it (for loaders that
    only read paths relative to the working directory)."""
    path, sep, arg = spec.partition(":")
    return _resolve(path) + sep + arg


def load_config(spec: str) -> ml_collections.ConfigDict:
    """``get_config(ARG)`` of the Python file of ``FILE[:ARG]``; FileNotFoundError or
    ValueError naming the file when it is missing, has no ``get_config`` or refuses ARG."""
    path, _, arg = spec.partition(":")
    full = _resolve(path)
    if not os.path.isfile(full):
        raise FileNotFoundError(f"config file {path!r} not found")
    name = "privacy_cfg_" + os.path.splitext(os.path.basename(full))[0]
    module_spec = importlib.util.spec_from_file_location(name, full)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ValueError(f"config file {path!r} defines no get_config(arg)")
    try:
        return module.get_config(arg or None)
    except ValueError as e:     # a bad word of ARG: say which file refused it
        raise ValueError(f"config {spec!r}: {e}") from e


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
