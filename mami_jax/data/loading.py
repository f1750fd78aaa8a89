"""The rows a run works on: the configured manifest, or the cached synthetic phantoms.

``load_rows(config, workdir)`` reads ``config.data.manifest`` (assigning
patient-disjoint splits when the manifest has none) or, when it is "", generates
the phantoms once into ``config.phantoms.cache_dir`` (default WORKDIR/phantoms)
and reads their manifest. ``config.data.only_modalities`` keeps only the listed modalities.
"""

from __future__ import annotations

import logging
import os

from mami_jax.data.config import only_modalities
from mami_jax.data.manifest import ManifestRow, read_manifest, validate_rows
from mami_jax.phantoms import ensure_phantoms
from mami_jax.data.splits import assign_splits


def manifest_path(config, workdir: str) -> str:
    """``data.manifest``, or the manifest of the phantoms (generated on first use)."""
    if config.data.manifest:
        return os.path.expanduser(config.data.manifest)
    ph = config.phantoms
    return ensure_phantoms(_phantoms_dir(config, workdir), patients=ph.patients,
                           visits=ph.visits, seed=ph.seed, image_size=ph.image_size,
                           slices=ph.slices, pathology_field=ph.pathology_field)


def _phantoms_dir(config, workdir: str) -> str:
    cache = config.phantoms.cache_dir
    return os.path.expanduser(cache) if cache else os.path.join(workdir, "phantoms")


def load_rows(config, workdir: str) -> list[ManifestRow]:
    return read_rows(config, workdir)[0]


def read_rows(config, workdir: str) -> tuple[list[ManifestRow], dict[str, int]]:
    """(the rows ``load_rows`` gives, {modality: rows left out by
    ``data.only_modalities``}), from one read of the manifest."""
    wanted = only_modalities(config.data)      # before the phantoms are made or a row read
    if not config.data.manifest:
        logging.info("no data.manifest configured: using the synthetic phantoms in %s",
                     _phantoms_dir(config, workdir))
    path = manifest_path(config, workdir)
    rows = read_manifest(path)
    if any(not r.split for r in rows):
        unassigned = sum(not r.split for r in rows)
        if unassigned != len(rows):
            raise ValueError(f"{path}: {unassigned} of {len(rows)} rows have no split; assign "
                             "all or none (none: splits are derived from the patient ids)")
        rows = assign_splits(rows, dict(config.data.split_fractions), config.data.split_seed)
    left_out: dict[str, int] = {}
    if wanted:
        for r in rows:
            if r.modality not in wanted:
                left_out[r.modality] = left_out.get(r.modality, 0) + 1
        rows = [r for r in rows if r.modality in wanted]
        if not rows:
            raise ValueError(f"{path}: no rows of modalities {wanted}")
    validate_rows(rows, source=path)
    return rows, left_out
