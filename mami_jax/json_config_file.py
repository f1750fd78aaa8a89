"""The config file that ``--config=RUN/config.json`` becomes for ``python -m mami_jax.main``.

``ml_collections``' ``--config`` flag loads only a Python file's ``get_config(ARG)``; a run's
stored config (``train/run_config``) is JSON. ``config_files.flag_config_from_anywhere``
therefore rewrites ``--config=FILE.json`` as ``--config=<this file>:<FILE.json>``, and this
``get_config`` reads the JSON back (with its tuples), so ``--config.KEY=VALUE`` overrides
work on it as on any config file.
"""

from mami_jax.config_files import read_json_config


def get_config(path):
    if not path:
        raise ValueError("give the JSON config as the argument: FILE.py:RUN/config.json")
    return read_json_config(path)
