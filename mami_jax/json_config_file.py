"""The config file that ``--config=RUN/config.json`` (or an exported model file carrying
its run's config) becomes for ``python -m mami_jax.main``.

``ml_collections``' ``--config`` flag loads only a Python file's ``get_config(ARG)``; a run's
stored config (``train/run_config``) is JSON, and a file exported from a run carries it
inside. ``config_files.flag_config_from_anywhere`` therefore rewrites such a ``--config``
as ``--config=<this file>:<FILE>``, and this ``get_config`` reads it back (with its
tuples: ``experiment_config.load_experiment``), so ``--config.KEY=VALUE`` overrides work on
it as on any config file.

A Python config file whose path holds ':' (in a folder named ``run_12:00``) comes here too,
as ``<this file>:FILE:ARG``: ml_collections cuts its flag's value at the first ':', and
``load_experiment`` cuts it after the file's ``.py`` name (``config_files.split_spec``).
"""

from mami_jax.experiment_config import load_experiment


def get_config(path):
    if not path:
        raise ValueError("give the JSON config as the argument: FILE.py:RUN/config.json")
    return load_experiment(path)
