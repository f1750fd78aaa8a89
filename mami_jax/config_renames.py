"""Config keys that were renamed or removed, and the one-line refusal of their old spelling.

An override in an old spelling (``--config.data.eval_batch_size=64``) would otherwise
fail inside the flag parser with a traceback that names neither the key's new place
nor why it moved. ``exit_on_renamed_overrides(argv)`` runs before the flags are
parsed and ends the run with one line naming the new key; ``renamed_key_message``
serves other ways of setting keys (``benchmarks/runlocal_ablation.py --set``).

The per-modality lists and dicts became one block per modality,
``data.modalities.<m>`` (``mami_jax/data/config.py``), so their new key is given with
``<m>`` standing for the modality.
"""

from __future__ import annotations

import sys
from typing import Sequence

#: Old key -> the key (or keys) that now hold its value.
RENAMED = {
    "modalities": "data.only_modalities",
    "data.eval_batch_size": "eval.batch_size",
    "data.image_size": "data.modalities.<m>.image_size",
    "data.resize_size": "data.modalities.<m>.resize_size",
    "data.modality_image_sizes": "data.modalities.<m>.image_size and data.modalities.<m>.resize_size",
    "data.num_slices": "data.modalities.<m>.slices",
    "data.volume_modalities": "data.modalities.<m>.slices (1 = a single image)",
    "data.flip_modalities": "data.modalities.<m>.flip",
    "data.rotate_modalities": "data.modalities.<m>.rotate",
    "data.stain_normalize_modalities": "data.modalities.<m>.stain_normalize",
    "data.eval_uncropped_modalities": "data.modalities.<m>.eval_whole",
    "data.eval_symmetry_modalities": "data.modalities.<m>.eval_symmetry",
    "loss.id_weight": "loss.terms.id",
    "loss.triplet_weight": "loss.terms.triplet",
    "optim.classifier_lr_multiplier": "optim.lr_multipliers.classifier",
}

#: Old key -> why it is gone.
REMOVED = {
    "loss.align_weight": "nothing read it (the alignment weight is loss.terms.align)",
    "train.debug_kill_at_step": "it was a test hook, not a setting",
}


def renamed_key_message(key: str) -> str | None:
    """``config key <old> was renamed: use <new>`` (or ``... was removed: <why>``) when the
    dotted ``key`` is, or lies under, a renamed or removed key; else None."""
    for table, verb in ((RENAMED, "renamed: use"), (REMOVED, "removed:")):
        for old, new in table.items():
            if key == old or key.startswith((old + ".", old + "[")):
                return f"config key {old} was {verb} {new}"
    return None


def overridden_keys(argv: Sequence[str], flag: str = "config") -> list[str]:
    """The dotted keys that ``argv`` overrides through ``--<flag>.<key>`` (absl spellings:
    one or two dashes, ``=value`` or a separate value, ``--no<flag>.<key>`` for False)."""
    keys = []
    for arg in argv:
        if arg == "--":   # absl: everything after is positional
            break
        name = arg.lstrip("-")
        if name == arg:
            continue
        name = name.split("=", 1)[0]
        for prefix in (flag + ".", "no" + flag + "."):
            if name.startswith(prefix) and len(name) > len(prefix):
                keys.append(name[len(prefix):])
                break
    return keys


def exit_on_renamed_overrides(argv: Sequence[str], flag: str = "config") -> None:
    """Ends the process (one ``error:`` line on stderr, exit status 2: a usage error, as a
    misspelt key is) if ``argv`` overrides a renamed or removed key; returns otherwise."""
    for key in overridden_keys(argv, flag):
        message = renamed_key_message(key)
        if message:
            print(f"error: {message}", file=sys.stderr, flush=True)
            sys.exit(2)
