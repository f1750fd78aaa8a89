"""The rows an image's match is measured against, and the centre of the embeddings.

The match score (what cue maps explain and protection lowers) is the similarity of
embeddings centred on a modality's mean. That mean was taken over the chosen images'
patients alone: for one patient's four images the centred cosines are near -1/3 whatever
the model, so ``cues`` on the first rows of a split mapped nothing and a protection of
one patient's images lowered nothing. Other patients' images now make up the centre.
"""

from types import SimpleNamespace

import numpy as np
import pytest

from mami_jax.apps.privacy import references
from mami_jax.data.manifest import ManifestRow


def _rows(patients=20, visits=4, split_of=lambda p: "test" if p % 2 else "train"):
    return [ManifestRow(f"p{p}_v{v}", f"p{p}", f"s{v}", str(v), "xray", "d", "", "x",
                        split_of(p)) for p in range(patients) for v in range(visits)]


def test_one_patients_images_are_centred_on_other_patients_too():
    rows = _rows()
    targets = [r for r in rows if r.patient_id == "p1"]
    chosen = references.reference_rows(rows, targets)
    patients = [r.patient_id for r in chosen]
    assert patients[:4] == ["p1"] * 4                     # the targets' patient first
    assert len(set(patients)) == references.MIN_CENTRE_PATIENTS
    # the targets' split (test: odd patients) first, in manifest order, whole patients
    assert list(dict.fromkeys(patients[4:])) == [
        f"p{p}" for p in (3, 5, 7, 9, 11, 13, 15, 17, 19, 0, 2, 4, 6, 8, 10)]
    assert all(patients.count(p) == 4 for p in set(patients))
    # embeddings clustered by patient: the patient's own images now match (were ~ -1/3)
    rng = np.random.default_rng(0)
    centres = {f"p{p}": rng.normal(size=16) for p in range(20)}
    emb = np.stack([centres[r.patient_id] + 0.3 * rng.normal(size=16) for r in chosen])
    index = {r.image_id: i for i, r in enumerate(chosen)}
    refs = references.build_references([SimpleNamespace(row=targets[0])], [emb], chosen, index)
    own = refs.own[0][0]
    others = refs.others[0][0][refs.mask[0] > 0]
    assert len(others) == 3 and (others @ own).mean() > 0.5
    alone = targets
    refs = references.build_references([SimpleNamespace(row=targets[0])],
                                        [emb[:4]], alone, {r.image_id: i for i, r in
                                                           enumerate(alone)})
    assert (refs.others[0][0][refs.mask[0] > 0] @ refs.own[0][0]).mean() < -0.2   # before


def test_enough_patients_of_their_own_add_no_others():
    rows = _rows()
    targets = [r for r in rows if r.split == "test"] + [r for r in rows if r.patient_id in
                                                        ("p0", "p2", "p4", "p6", "p8", "p10")]
    assert len({r.patient_id for r in targets}) == 16
    chosen = references.reference_rows(rows, targets)
    assert {r.patient_id for r in chosen} == {r.patient_id for r in targets}


def test_a_modality_of_one_patient_is_refused_naming_it():
    rows = _rows(patients=1)
    with pytest.raises(ValueError, match=r"^p0_v0: its patient d/p0 is the only one with xray "
                                         r"images in the manifest"):
        references.reference_rows(rows, rows[:2])
