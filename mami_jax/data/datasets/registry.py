"""Dataset name -> manifest builder (``build(root, verify_files=True) -> BuildResult``)."""

from __future__ import annotations

from typing import Callable

from mami_jax.data.datasets import (ccii_ct, chexpert, deeplesion, eyepacs, folders, mimic_cxr,
                                    nih_chestxray14, oasis, odir, padchest, tcga)
from mami_jax.data.datasets.common import BuildResult

BUILDERS: dict[str, Callable[..., BuildResult]] = {
    m.NAME: m.build
    for m in (nih_chestxray14, chexpert, mimic_cxr, padchest, eyepacs, odir, oasis, ccii_ct,
              deeplesion, tcga, folders)
}

#: The public datasets' modalities (``folders``, the user's own images, takes one as given).
MODALITY_OF: dict[str, str] = {
    m.NAME: m.MODALITY
    for m in (nih_chestxray14, chexpert, mimic_cxr, padchest, eyepacs, odir, oasis, ccii_ct,
              deeplesion, tcga)
}


def get_builder(name: str) -> Callable[..., BuildResult]:
    try:
        return BUILDERS[name]
    except KeyError:
        raise KeyError(f"unknown dataset {name!r}; known: {sorted(BUILDERS)}") from None
