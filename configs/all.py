"""MaMI on every modality: the paper's recipe (DESIGN.md; mami_jax/config.py).

    python -m mami_jax.main --config=configs/all.py --workdir=DIR
    python -m mami_jax.main --config=configs/all.py:runlocal --workdir=DIR   # 2-core CPU
"""

from mami_jax.config import base_config, parse_arg


def get_config(arg=None):
    return base_config(modalities=(), runlocal=bool(parse_arg(arg).get("runlocal")))
