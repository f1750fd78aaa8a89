"""Shared rules of the fundus datasets whose file names are ``<patient>_<left|right>.<ext>``.

EyePACS and ODIR-5K photograph both eyes of each patient at one visit. Two decisions:

- Each eye is its own "study". With the reid protocol's same-study exclusion, a
  whole-visit study would leave no true match for any query; treating the eyes as
  separate acquisitions asks the model to match a patient's left eye to the right eye,
  the re-identification task these datasets support. Both eyes share order 0.
- The patient id is prefixed with the release part the image came from (``train-10``,
  ``test-10``): the challenges split patients between parts, and a number both parts
  held would join two different people; where the parts share no number, the prefix
  costs nothing.
"""

from __future__ import annotations

import os
import re

from mami_jax.data.datasets.common import Collector

EYE_NAME = re.compile(r"^(\d+)_(left|right)\.(jpe?g|png|tiff?|bmp)$", re.IGNORECASE)


def add_eye_image(c: Collector, part: str, name: str, path: str, source: str,
                  labels: dict[str, str] | None = None) -> None:
    """Adds ``<patient>_<eye>.<ext>`` from release part ``part`` (with its ``labels``, if
    any); skips other image names."""
    m = EYE_NAME.match(name)
    if not m:
        c.skip(source, "image name is not <patient>_<left|right>.<ext>")
        return
    patient = f"{part}-{int(m.group(1))}"
    eye = m.group(2).lower()
    c.add(local_id=f"{patient}_{eye}", patient_id=patient, study_id=eye, order="0",
          view=eye, path=path, source=source, labels=labels)


def rel(root: str, path: str) -> str:
    return os.path.relpath(path, root)
