"""``LoadedTeacher``: a teacher ready to compute features, whatever built it.

Its own file so that the loaders (which dispatch on the registry's loader kind) and the
teachers that need no network weights (``anatomy``) both build it without importing
each other.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable

from teachers.registry import TeacherSpec


@dataclasses.dataclass
class LoadedTeacher:
    spec: TeacherSpec            # with the input size / mean / std actually used
    forward: Callable            # torch batch -> (B, D) features; None for row teachers
    feature_dim: int
    fingerprint: str
    weights_path: str | None
    features_for_rows: Callable | None = None   # rows -> (B, D) numpy (anatomy teacher)

    def index_entry(self) -> dict:
        s = self.spec
        return dict(public_id=s.public_id, loader=s.loader, modalities=list(s.modalities),
                    feature_dim=self.feature_dim, dtype="float32", pooling=s.pooling,
                    preprocessing=s.preprocessing(), fingerprint=self.fingerprint,
                    weights=os.path.basename(self.weights_path) if self.weights_path else None,
                    licence=s.licence)
