"""The ``anatomy`` teacher: a feature made of the phantom generator's hidden parameters.

For a phantom image, the feature is the first ``IDENTITY_DIM`` normalised identity
draws of the patient (``mami_jax.phantoms.hidden``: shape of lungs, heart, ribs,
vessels, nuclei...) followed by the first ``VISIT_DIM`` normalised draws of the visit
(severity, pose, exposure...), each part zero padded. The parts are scaled so that the
identity carries ``IDENTITY_SHARE`` (80%) of the squared length and the visit the rest,
whatever the number of draws of a modality (pathology has about 24 identity draws and
hundreds of visit draws, X-ray over a thousand identity draws): under the cosine metric
the prior says mostly who, partly when. It is what a perfect anatomy
encoder would know: every visit of a patient shares the identity part, so it is the
upper bound of a prior for the alignment experiments (and of the zero-shot table),
while the visit part keeps it from being a bare patient label.

It needs no pixels and no weights, only the benchmark's ``phantoms.json`` beside the
manifest; replaying a visit re-renders it (the draws are interleaved with drawing),
so it costs about what generating the image did.
"""

from __future__ import annotations

import hashlib
import os

import numpy as np

from mami_jax.phantoms import generator
from mami_jax.phantoms.hidden import HiddenParameters, parse_image_id, read_generation_params
from teachers.loaded import LoadedTeacher
from teachers.registry import TeacherSpec

IDENTITY_DIM = 192
VISIT_DIM = 64


#: Share of the feature's squared length carried by the identity part (the rest: the visit).
IDENTITY_SHARE = 0.8


def _fit(values: np.ndarray, size: int, length: float) -> np.ndarray:
    """The first ``size`` values, zero padded, scaled to ``length`` (0 stays 0)."""
    out = np.zeros(size, np.float32)
    out[:min(size, values.size)] = values[:size]
    norm = float(np.linalg.norm(out))
    return out * np.float32(length / norm) if norm > 0 else out


def anatomy_feature(hp: HiddenParameters, image_id: str) -> np.ndarray:
    index, modality, visit = parse_image_id(image_id)
    identity = hp.identity(index, modality)[1]
    visit_draws = hp.visit(index, modality, visit)
    return np.concatenate([_fit(identity, IDENTITY_DIM, np.sqrt(IDENTITY_SHARE)),
                           _fit(visit_draws, VISIT_DIM, np.sqrt(1.0 - IDENTITY_SHARE))])


def load_anatomy_teacher(spec: TeacherSpec, manifest_path: str | None) -> LoadedTeacher:
    if manifest_path is None:
        raise ValueError("the anatomy teacher needs the phantoms' manifest")
    phantoms_dir = os.path.dirname(os.path.abspath(manifest_path))
    meta = read_generation_params(phantoms_dir)
    hp = HiddenParameters(meta)
    with open(os.path.join(phantoms_dir, "phantoms.json"), "rb") as f:
        digest = hashlib.sha256(f.read() + f"v{generator.VERSION}".encode()).hexdigest()

    def features_for_rows(rows) -> np.ndarray:
        out = []
        for row in rows:
            if row.dataset != generator.DATASET:
                raise ValueError(f"image_id {row.image_id!r}: dataset {row.dataset!r} is not "
                                 f"{generator.DATASET!r}; the anatomy teacher only knows phantoms")
            out.append(anatomy_feature(hp, row.image_id))
        return np.stack(out)

    return LoadedTeacher(spec=spec, forward=None, feature_dim=IDENTITY_DIM + VISIT_DIM,
                         fingerprint="sha256:" + digest, weights_path=None,
                         features_for_rows=features_for_rows)
