"""The embedded synthetic benchmark: phantom patients in every modality.

``generator`` plans patients, visits and splits and writes the manifest, images and
``labels.csv``; one renderer per modality (``xray``, ``ct``, ``fundus``, ``mri``,
``pathology``), each with ``make_anatomy(rng, size)`` (the patient's persistent
identity) and ``render(anatomy, rng, severity, size[, slices])`` (one visit);
``disease`` holds the shared disease course, ``io`` the file formats, ``preview`` the
picture grid. ``python -m mami_jax.phantoms`` is the command line.
"""

from mami_jax.phantoms.generator import DEFAULTS, ensure_phantoms, generate

__all__ = ["DEFAULTS", "ensure_phantoms", "generate"]
