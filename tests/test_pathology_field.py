"""Pathology tiles wider than the standard field, at the same magnification."""

import dataclasses
import json
import os

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from mami_jax.phantoms import generator as phantoms
from mami_jax.data.manifest import read_manifest
from mami_jax.phantoms import common, pathology


def _anatomy():
    """Even sheet of round, separate, mid-size nuclei: blobs that can be counted."""
    base = pathology.make_anatomy(common.rng_for(0, 1, 5, 0), 64)
    return dataclasses.replace(base, architecture="sheet", radius=6.0, radius_cv=0.05, elongation=1.1,
                               clustering=0.0, borders=0.0, halo=0.0, lobes=0.0, stroma=0.1,
                               vesicular=0.0, speckle=0.0, darkness=0.9, coverage=0.22)


def _nuclei(size, field, visits=6):
    """(median nucleus area in pixels, mean number of nuclei) over a few visits."""
    areas, counts = [], []
    for v in range(visits):
        img = pathology.render(_anatomy(), common.rng_for(0, 1, 5, v + 1), 0.0, size, field)
        od = -np.log(np.clip(img.astype(np.float64) / 255, 1 / 255, 1)).sum(-1)
        labels, n = ndimage.label(od > np.percentile(od, 100 * (1 - 0.6 * 0.22)))
        sizes = np.bincount(labels.ravel())[1:]
        sizes = sizes[sizes >= 3]
        areas.append(np.median(sizes))
        counts.append(len(sizes))
    return float(np.median(areas)), float(np.mean(counts))


def test_a_wider_field_shows_more_nuclei_of_the_same_size():
    area_64, count_64 = _nuclei(64, 1.0)
    area_wide, count_wide = _nuclei(96, 1.5)     # 1.5x the field, same magnification
    area_zoom, count_zoom = _nuclei(96, 1.0)     # the standard field at 1.5x magnification
    assert area_wide == pytest.approx(area_64, rel=0.3)
    assert area_zoom == pytest.approx(2.25 * area_64, rel=0.35)
    assert count_wide == pytest.approx(2.25 * count_64, rel=0.35)
    assert count_zoom == pytest.approx(count_64, rel=0.35)


def test_the_standard_field_is_the_default_and_bad_fields_fail():
    anat = pathology.make_anatomy(common.rng_for(0, 2, 5, 0), 32)
    a = pathology.render(anat, common.rng_for(0, 2, 5, 1), 0.5, 32)
    b = pathology.render(anat, common.rng_for(0, 2, 5, 1), 0.5, 32, 1.0)
    np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="field must be > 0"):
        pathology.render(anat, common.rng_for(0, 2, 5, 1), 0.5, 32, 0.0)
    with pytest.raises(ValueError, match="pathology_field"):
        phantoms.generate("/nonexistent/never", patients=1, visits=1, image_size=32, slices=1,
                          pathology_field=10.0)


def test_generated_tiles_and_cache_key_follow_the_field(tmp_path):
    kw = dict(patients=6, visits=1, seed=0, image_size=32, slices=1, workers=1)
    manifest = phantoms.ensure_phantoms(str(tmp_path), pathology_field=1.5, **kw)
    folder = os.path.dirname(manifest)
    assert os.path.basename(folder) == phantoms.cache_key(6, 1, 0, 32, 1, 1.5)
    assert os.path.basename(folder).endswith("-f1.5")
    assert phantoms.cache_key(6, 1, 0, 32, 1) == phantoms.cache_key(6, 1, 0, 32, 1, 1.0)
    assert json.load(open(os.path.join(folder, "phantoms.json")))["pathology_field"] == 1.5
    sizes = {}
    for row in read_manifest(manifest):
        if row.modality in ("pathology", "xray", "fundus"):   # 2-D images (CT and MRI are NIfTI)
            sizes.setdefault(row.modality, set()).add(Image.open(os.path.join(folder, row.path)).size)
    assert sizes.pop("pathology") == {(48, 48)}          # round(32 * 1.5)
    assert sizes and all(s == {(32, 32)} for s in sizes.values()), sizes
    meta_path = os.path.join(folder, "phantoms.json")
    meta = json.load(open(meta_path))
    json.dump(dict(meta, pathology_field=1.0), open(meta_path, "w"))   # a hand-edited cache
    with pytest.raises(ValueError, match="pathology_field"):
        phantoms.ensure_phantoms(str(tmp_path), pathology_field=1.5, **kw)
