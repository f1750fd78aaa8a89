"""MaMI on every modality: the paper's recipe (docs/design.md; mami_jax/config.py).

    python -m mami_jax.main --config=configs/all.py --workdir=DIR
    python -m mami_jax.main --config=configs/all.py:runlocal --workdir=DIR   # 2-core CPU
"""

from configs import common_runlocal
from mami_jax.config import base_config, parse_arg

#: runlocal: each modality's share of the training steps, by need and cost. CT learns
#: fastest, fundus and MRI need more steps, and a pathology step (80 px crops) costs
#: several 32 px steps.
RUNLOCAL_SOURCE_WEIGHTS = {"xray": 0.09, "ct": 0.125, "fundus": 0.285, "mri": 0.29,
                           "pathology": 0.21}


def get_config(arg=None):
    c = base_config()
    if parse_arg(arg).get("runlocal"):
        common_runlocal.apply(c)
        for modality, weight in RUNLOCAL_SOURCE_WEIGHTS.items():
            c.data.modalities[modality].source_weight = weight
    return c
