"""Single-modality baseline: MaMI trained and evaluated on ct images only.

    python -m mami_jax.main --config=configs/ct.py[:runlocal] --workdir=DIR
"""

from mami_jax.config import base_config, parse_arg


def get_config(arg=None):
    return base_config(modalities=("ct",), runlocal=bool(parse_arg(arg).get("runlocal")))
