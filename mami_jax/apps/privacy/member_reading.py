"""Every ensemble member is fed the protecting run's input: refusing a member that reads
another way (and a protecting run read with a config that reads otherwise than the one it
was trained with).

``protect`` reads each image once, as the protecting run (``--workdir``) reads it (its value
window, slices, crop size, normalisation: ``model_input``), and gives that same input to
every member of its ensemble. A member trained with another reading (a CT window in place
of min-max, CLIP's normalisation in place of per-image standardisation, 224 px in place of
64) would be fed pixels it never saw: its gradient would point anywhere, and the
protection would seem to hold against it. Where a member's own training config is known
(a workdir's ``config.json``, a file exported from a run, a converter folder holding its
run's config) and reads a protected modality otherwise, ``protect`` refuses it before any
model is read, naming the member, the modality and the settings. A released file that
carries no config cannot say how it reads; it is fed the protecting run's input, and
``protect`` says so (one warning line naming such members; ``unchecked_members`` in its
report), rather than assume silently that it reads as the run does.
"""

from __future__ import annotations

import os
from typing import Mapping

from mami_jax.apps.privacy.model_input import settings_for
from mami_jax.config_files import resolve_spec
from mami_jax.experiment_config import MODEL_FILE_EXPERIMENT, experiment_spec, load_experiment
from mami_jax.model_name import workdir_and_step


def reading(data_cfg, modality: str) -> dict:
    """The settings of ``data_cfg`` that make a model's input of ``modality``'s images."""
    s = settings_for(data_cfg, modality)
    return {"value_window": s.value_window, "slices": s.slices,
            "eval_image_size": s.eval_image_size, "resize_size": s.augment.resize_size,
            "normalization": s.augment.normalization, "stain_normalize": s.stain_normalize,
            "eval_symmetry": s.eval_symmetry}


def known_data_config(name: str):
    """The data block ``name`` (a member: workdir, ``WORKDIR@STEP``, model file or converter
    folder) was trained with, or None where that is not known: a path that is not there
    or a folder that is no model (the loader names it), a run from before runs kept their
    config, a file or folder that carries none (read with the paper's config only by
    default)."""
    if not os.path.exists(workdir_and_step(name)[0]):
        return None
    try:
        spec = experiment_spec(name)
    except ValueError:          # no run's config (RunConfigMissing), or no model: the loader says
        return None
    if spec == resolve_spec(MODEL_FILE_EXPERIMENT):
        return None
    return load_experiment(spec).data


#: What the members are compared with, and what to do about a difference.
MEMBERS = ("the protecting run", "every model is fed the protecting run's input, so it "
           "would be fed pixels it never saw: name models trained with the same data settings")


def refuse_other_readings(members: Mapping[str, set], data_cfg,
                          role: str = "ensemble member", against: tuple = MEMBERS) -> list:
    """ValueError naming the first member of ``members`` (name -> the modalities it helps
    protect) whose own config reads one of them otherwise than ``data_cfg`` (the
    protecting run's); ``role``: what the message calls the member; ``against``: what
    ``data_cfg`` is and the remedy (``MEMBERS``). Returns the members whose reading is not
    known (``known_data_config``), in order: they could not be checked (a member that is
    not there is left to the loader, which names it)."""
    unchecked = []
    for name, modalities in members.items():
        if not os.path.exists(workdir_and_step(name)[0]):
            continue             # the loader's error names it; no warning about it first
        own = known_data_config(name)
        if own is None:
            unchecked.append(name)
            continue
        for m in sorted(modalities):
            mine, theirs = reading(own, m), reading(data_cfg, m)
            differ = [k for k in mine if mine[k] != theirs[k]]
            if differ:
                reference, remedy = against
                raise ValueError(
                    f"{role} {name} was trained reading {m} images with "
                    f"{', '.join(f'{k}={mine[k]!r}' for k in differ)}, {reference} "
                    f"with {', '.join(f'{k}={theirs[k]!r}' for k in differ)}; {remedy}")
    return unchecked


def unchecked_warning(unchecked: list) -> str | None:
    """The line that says which ensemble members' reading could not be checked, or None."""
    if not unchecked:
        return None
    return (f"warning: {len(unchecked)} ensemble member(s) carry no training config "
            f"({', '.join(unchecked)}): each is fed the protecting run's input unchecked, as "
            "if it was trained reading these images the same way (value window, slices, crop "
            "size, normalisation); a member trained otherwise would seem to be fooled "
            "(protect_report.json: unchecked_members)")
