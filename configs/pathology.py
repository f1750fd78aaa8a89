"""Single-modality baseline: MaMI trained and evaluated on pathology images only.

    python -m mami_jax.main --config=configs/pathology.py[:runlocal] --workdir=DIR
"""

from configs import common_runlocal
from mami_jax.config import base_config, parse_arg


def get_config(arg=None):
    c = base_config()
    c.data.only_modalities = ("pathology",)
    if parse_arg(arg).get("runlocal"):
        common_runlocal.apply(c)
    return c
