"""The phantoms' hidden parameters: what each patient is made of and how each visit was drawn.

Every phantom image is a function of draws from two generators (``common.rng_for``):
the patient's anatomy generator (key ``(seed, patient, modality, 0)``, consumed by
``<modality>.make_anatomy``) and the visit's generator (key ``(..., visit + 1)``,
consumed by ``generator.render_visit``: disease severity, pose, exposure, scanner
style, noise, JPEG quality). ``hidden_parameters`` replays both with a
``RecordingRng`` (a pass-through wrapper: the underlying generator, hence every pixel,
is exactly the generator's) and returns the scalar draws in the order they were made,
each on a common scale:

- ``uniform(lo, hi)`` -> ``2 (x - lo) / (hi - lo) - 1`` in [-1, 1]; ``random()`` likewise;
- ``integers(lo, hi)`` -> its position in [lo, hi - 1] mapped to [-1, 1];
- ``normal(mu, sd)`` -> ``(x - mu) / sd``; ``standard_normal()`` as is;
- ``poisson(lam)`` -> ``(x - lam) / sqrt(lam)``; ``choice(n)`` -> the index mapped to [-1, 1].

Array draws (noise fields, point clouds) are not recorded: they are either noise or
summarised by the scalar draws that shape them. The identity part is the same for
every visit of a patient; the visit part differs per visit. ``teachers.anatomy``
turns them into the ``anatomy`` teacher's feature (a known-good prior for the
alignment experiments).
"""

from __future__ import annotations

import json
import math
import os
import re

import numpy as np

from mami_jax.data.manifest import MODALITIES
from mami_jax.phantoms import common, generator


def _position(x, lo, hi) -> float:
    return 0.0 if hi <= lo else 2.0 * (float(x) - lo) / (hi - lo) - 1.0


class RecordingRng:
    """Wraps a ``numpy.random.Generator``: same draws, scalar ones recorded normalised."""

    def __init__(self, rng: np.random.Generator):
        self._rng = rng
        self.draws: list[float] = []

    def _keep(self, value, size, normalise):
        if size is None and np.ndim(value) == 0:
            self.draws.append(float(normalise(value)))
        return value

    def uniform(self, low=0.0, high=1.0, size=None):
        value = self._rng.uniform(low, high, size)
        lo, hi = float(np.min(low)), float(np.max(high))
        return self._keep(value, size, lambda x: _position(x, lo, hi))

    def random(self, size=None, *args, **kwargs):
        return self._keep(self._rng.random(size, *args, **kwargs), size,
                          lambda x: _position(x, 0.0, 1.0))

    def integers(self, low, high=None, size=None, *args, **kwargs):
        value = self._rng.integers(low, high, size, *args, **kwargs)
        lo, hi = (0, low) if high is None else (low, high)
        return self._keep(value, size, lambda x: _position(x, lo, hi - 1))

    def normal(self, loc=0.0, scale=1.0, size=None):
        value = self._rng.normal(loc, scale, size)
        return self._keep(value, size, lambda x: (x - loc) / scale if scale else 0.0)

    def standard_normal(self, size=None, *args, **kwargs):
        return self._keep(self._rng.standard_normal(size, *args, **kwargs), size, lambda x: x)

    def poisson(self, lam=1.0, size=None):
        value = self._rng.poisson(lam, size)
        return self._keep(value, size, lambda x: (x - lam) / math.sqrt(lam) if lam > 0 else 0.0)

    def choice(self, a, size=None, replace=True, p=None, *args, **kwargs):
        value = self._rng.choice(a, size, replace, p, *args, **kwargs)
        if size is None:
            options = np.arange(a) if np.ndim(a) == 0 else np.asarray(a)
            hits = np.flatnonzero(options == value) if options.ndim == 1 else []
            self.draws.append(_position(hits[0], 0, len(options) - 1) if len(hits) else 0.0)
        return value

    def __getattr__(self, name):     # permutation, shuffle...: passed through, not recorded
        return getattr(self._rng, name)


_IMAGE_ID = re.compile(r"^(P\d+)_([a-z]+)_v(\d+)$")


def read_generation_params(phantoms_dir: str) -> dict:
    """``phantoms.json`` of a generated benchmark, checked against this generator version."""
    path = os.path.join(phantoms_dir, "phantoms.json")
    try:
        with open(path) as f:
            meta = json.load(f)
    except FileNotFoundError:
        raise ValueError(f"{path}: missing; the anatomy parameters exist only for phantoms "
                         "written by python -m mami_jax.phantoms") from None
    if meta.get("version") != generator.VERSION:
        raise ValueError(f"{path}: phantoms version {meta.get('version')}, this generator "
                         f"replays version {generator.VERSION}")
    return meta


def parse_image_id(image_id: str) -> tuple[int, str, int]:
    """(patient index, modality, visit) of a phantom image id such as ``P0012_ct_v3``."""
    m = _IMAGE_ID.match(image_id)
    if not m or m.group(2) not in MODALITIES:
        raise ValueError(f"image_id {image_id!r} is not a phantom image id (P<n>_<modality>_v<k>)")
    return int(m.group(1)[1:]), m.group(2), int(m.group(3))


class HiddenParameters:
    """Replays a generated benchmark's draws; identity draws are cached per (patient, modality)."""

    def __init__(self, meta: dict):
        self.meta = meta
        self._plan = generator.plan(int(meta["patients"]), int(meta["visits"]), int(meta["seed"]))
        self._anatomy: dict = {}

    def identity(self, index: int, modality: str):
        """(anatomy, normalised identity draws) of one patient in one modality."""
        key = (index, modality)
        if key not in self._anatomy:
            if not 0 <= index < len(self._plan) or modality not in self._plan[index][1]:
                raise ValueError(f"patient {generator.patient_id(index)} has no {modality} "
                                 "images in these phantoms")
            rec = RecordingRng(common.rng_for(int(self.meta["seed"]), index,
                                              1 + MODALITIES.index(modality), 0))
            anat = generator.RENDERERS[modality].make_anatomy(rec, int(self.meta["image_size"]))
            self._anatomy[key] = (anat, np.asarray(rec.draws, np.float32))
        return self._anatomy[key]

    def visit(self, index: int, modality: str, visit: int, return_pixels: bool = False):
        """Normalised draws of one visit (and its pixels when asked)."""
        course = self._plan[index][2]
        if not 0 <= visit < len(course):
            raise ValueError(f"visit {visit} of patient {generator.patient_id(index)} does not "
                             f"exist ({len(course)} visits)")
        anat, _ = self.identity(index, modality)
        m = self.meta
        rec = RecordingRng(common.rng_for(int(m["seed"]), index, 1 + MODALITIES.index(modality),
                                          visit + 1))
        data, _ = generator.render_visit(modality, anat, rec, course[visit], int(m["image_size"]),
                                         int(m["slices"]), float(m.get("pathology_field", 1.0)),
                                         m.get("stage1_visible"), m.get("signs_visible"))
        draws = np.asarray(rec.draws, np.float32)
        return (draws, data) if return_pixels else draws


def hidden_parameters(phantoms_dir: str, image_id: str) -> dict[str, np.ndarray]:
    """{"identity": ..., "visit": ...} normalised draws of one phantom image."""
    hp = HiddenParameters(read_generation_params(phantoms_dir))
    index, modality, visit = parse_image_id(image_id)
    return {"identity": hp.identity(index, modality)[1], "visit": hp.visit(index, modality, visit)}
