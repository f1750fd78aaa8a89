"""The ``cues`` command: cue maps of some rows written as PNG overlays and .npz arrays.

Every image is read (the targets, and the references they are matched against, embedded)
before anything is written, so an unreadable image stops the command with its output
folder as it was.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
from tqdm import tqdm

from mami_jax.apps.privacy import cues, objective, references
from mami_jax.apps.privacy.copy_paths import file_name
from mami_jax.apps.privacy.model_input import InputMap, read_source, settings_for
from mami_jax.runtime.atomic_files import write_atomic
from mami_jax.runtime.setting_ranges import is_number, is_whole, require


def check_cue_settings(cfg) -> None:
    """``cues.*`` before any model is read: max_images 0 said "nothing to embed: no row
    indices given", a stride of 0 named no key, a negative smoothing was taken."""
    for key in ("max_images", "occlusion_patch", "occlusion_stride"):
        require(is_whole(cfg[key]) and cfg[key] >= 1, f"cues.{key}", cfg[key],
                "a whole number >= 1")
    require(cfg.occlusion_stride <= cfg.occlusion_patch, "cues.occlusion_stride",
            cfg.occlusion_stride, f"at most cues.occlusion_patch ({cfg.occlusion_patch}): "
            "pixels between the squares would never be occluded")
    require(is_number(cfg.smooth) and cfg.smooth >= 0, "cues.smooth", cfg.smooth,
            "a Gaussian sigma in pixels >= 0 (0: no smoothing)")


@dataclasses.dataclass
class CueInputs:
    """What the maps of some targets need, read and embedded up front."""
    sources: list            # model_input.read_source of each target
    ref_rows: list           # the rows the targets are matched against
    embeddings: list         # [their embeddings under the member]

    @property
    def row_index(self) -> dict:
        return {r.image_id: i for i, r in enumerate(self.ref_rows)}

    def references(self, source):
        """The references of one target (``references.build_references``)."""
        return references.build_references([source], self.embeddings, self.ref_rows,
                                           self.row_index)

    def without_other_images(self) -> list[str]:
        """Targets whose patient has no other image of their modality to match against:
        their gradient maps are empty (``cues.has_other_images``)."""
        return [s.row.image_id for s in self.sources
                if not cues.has_other_images(self.references(s))[0]]


def read_cue_inputs(rows_all, targets, member) -> CueInputs:
    """Reads ``targets`` and embeds their references under ``member``: the step that meets
    an unreadable image."""
    data_cfg = member.embedder.data_cfg
    ref_rows = references.reference_rows(rows_all, targets)
    embeddings = [member.embedder.embed_rows(ref_rows)]
    sources = [read_source(r, settings_for(data_cfg, r.modality)) for r in targets]
    return CueInputs(sources, ref_rows, embeddings)


def write_cues(inputs: CueInputs, member, config, out_dir: str, progress: bool = True) -> int:
    """Gradient and occlusion maps of the targets under ``member``; returns the count."""
    data_cfg = member.embedder.data_cfg
    for s in tqdm(inputs.sources, desc="cues", unit="img", disable=not progress):
        imap = InputMap(settings_for(data_cfg, s.row.modality), *s.unit.shape[1:3])
        score = objective.make_score_fn([member], imap, config.perturb, 0,
                                        own_weight=cues.CUE_OWN_WEIGHT)
        x = s.unit[None]
        offset = imap.stain_offset(x)
        refs = inputs.references(s)
        maps = {"gradient": cues.gradient_maps(score, [member.params], x, offset, refs,
                                               float(config.cues.smooth))[0],
                "occlusion": cues.occlusion_maps(score, [member.params], x, offset, refs,
                                                 int(config.cues.occlusion_patch),
                                                 int(config.cues.occlusion_stride))[0]}
        base = os.path.join(out_dir, file_name(s.row.image_id))
        write_atomic(base + ".npz", lambda tmp: np.savez(tmp, slices=s.slices, **maps))
        alone = "" if cues.has_other_images(refs)[0] else (
            "; no other image of the patient: matched with itself, no gradient cues")
        cues.overlay_png(base + ".png", s.unit, maps,
                         f"{s.row.image_id} (patient {s.row.patient_id}, {s.row.modality})"
                         + alone)
    return len(inputs.sources)
