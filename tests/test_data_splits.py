"""Patient-disjoint hash splits and the reid / history evaluation protocols."""

import hashlib
import random

import numpy as np
import pytest

from mami_jax.data.manifest import ManifestRow, validate_rows
from mami_jax.evaluate.protocols import build_protocol
from mami_jax.data.splits import assign_splits, patient_unit, split_of

FRACTIONS = {"train": 0.7, "val": 0.1, "test": 0.2}


def row(i, patient, study="s", order="0", dataset="d", split=""):
    return ManifestRow(image_id=f"im{i}", patient_id=patient, study_id=study, order=order,
                       modality="xray", dataset=dataset, view="", path=f"/x/{i}.png", split=split)


def make_rows(n_patients=300, per_patient=3):
    return [row(p * per_patient + k, f"p{p}", study=f"s{k}")
            for p in range(n_patients) for k in range(per_patient)]


def test_patient_unit_matches_the_documented_formula():
    digest = hashlib.sha256(b"nih_chestxray14\x00123\x007").digest()
    assert patient_unit("nih_chestxray14", "123", 7) == int.from_bytes(digest[:8], "big") / 2.0 ** 64


def test_split_intervals_follow_the_names_not_the_order_given():
    """The data config's defaults (a ConfigDict: keys sorted) and the same fractions typed
    as --fractions train=...,val=...,test=... laid the intervals out differently: half the
    patients changed split. Whatever order they come in, test, train, val."""
    import ml_collections
    for p in range(200):
        u = patient_unit("d", f"p{p}", 0)
        expected = "test" if u < 0.2 else ("train" if u < 0.9 else "val")
        for order in (FRACTIONS, {"test": 0.2, "val": 0.1, "train": 0.7},
                      dict(ml_collections.ConfigDict(FRACTIONS))):
            assert split_of("d", f"p{p}", order, 0) == expected


def test_splits_are_patient_disjoint_and_independent_of_row_order():
    rows = make_rows()
    a = assign_splits(rows, FRACTIONS, seed=1)
    validate_rows(a)  # raises if a patient were in two splits
    shuffled = rows[:]
    random.Random(0).shuffle(shuffled)
    b = assign_splits(shuffled, FRACTIONS, seed=1)
    assert {r.image_id: r.split for r in a} == {r.image_id: r.split for r in b}
    # Removing most patients does not move the others.
    c = assign_splits(rows[:30], FRACTIONS, seed=1)
    assert all(x.split == y.split for x, y in zip(a[:30], c))


def test_split_fractions_and_seed():
    rows = make_rows(n_patients=4000, per_patient=1)
    a = assign_splits(rows, FRACTIONS, seed=0)
    counts = {s: sum(r.split == s for r in a) for s in FRACTIONS}
    for s, f in FRACTIONS.items():
        # Binomial(4000, f): 4.5 standard deviations.
        assert abs(counts[s] - 4000 * f) < 4.5 * np.sqrt(4000 * f * (1 - f)), counts
    b = assign_splits(rows, FRACTIONS, seed=1)
    changed = sum(x.split != y.split for x, y in zip(a, b))
    assert changed > 1000  # a new seed is a new split
    # The dataset name is part of the hash: same ids in another dataset split differently.
    other = assign_splits([r.replace(dataset="e") for r in rows], FRACTIONS, seed=0)
    assert sum(x.split != y.split for x, y in zip(a, other)) > 1000


def test_bad_fractions_raise():
    rows = make_rows(3, 1)
    with pytest.raises(ValueError, match="sum to"):
        assign_splits(rows, {"train": 0.7, "test": 0.2}, 0)
    with pytest.raises(ValueError, match="unknown split"):
        assign_splits(rows, {"train": 0.5, "holdout": 0.5}, 0)
    with pytest.raises(ValueError, match="negative"):
        assign_splits(rows, {"train": 1.2, "test": -0.2}, 0)


def hand_rows():
    """Test split of three patients, hand-worked below."""
    return [
        row(0, "A", study="a1", order="20200101", split="test"),
        row(1, "A", study="a1", order="20200101", split="test"),
        row(2, "A", study="a2", order="20210101", split="test"),
        row(3, "B", study="b1", order="5", split="test"),
        row(4, "B", study="b1", order="5", split="test"),
        row(5, "C", study="c1", order="2", split="test"),
        row(6, "C", study="c2", order="10", split="test"),  # 10 > 2 numerically
        row(7, "D", study="d1", order="1", split="train"),
    ]


def test_reid_protocol_hand_worked():
    rows = hand_rows()
    p = build_protocol(rows, "reid")
    assert p.query.tolist() == [0, 1, 2, 3, 4, 5, 6]
    assert p.gallery.tolist() == [0, 1, 2, 3, 4, 5, 6]
    assert p.query_pids.tolist() == ["d/A"] * 3 + ["d/B"] * 2 + ["d/C"] * 2
    assert p.query_studies.tolist()[:3] == ["d/A/a1", "d/A/a1", "d/A/a2"]
    # B has one study only: its two images match nothing outside their own study.
    assert p.query_has_match.tolist() == [True, True, True, False, False, True, True]
    assert p.num_without_match == 2


def test_history_protocol_hand_worked():
    rows = hand_rows()
    p = build_protocol(rows, "history")
    # Latest visits: A -> a2 (2021), B -> b1 (only visit), C -> c2 (order 10 > 2).
    assert p.query.tolist() == [2, 3, 4, 6]
    assert p.gallery.tolist() == [0, 1, 5]
    assert p.query_has_match.tolist() == [True, False, False, True]
    assert p.num_without_match == 2
    assert p.gallery_studies.tolist() == ["d/A/a1", "d/A/a1", "d/C/c1"]


def test_history_ties_at_latest_order_are_all_queries():
    rows = [row(0, "A", "x", "3", split="test"), row(1, "A", "y", "3", split="test"),
            row(2, "A", "z", "1", split="test")]
    p = build_protocol(rows, "history")
    assert p.query.tolist() == [0, 1] and p.gallery.tolist() == [2]
    assert p.num_without_match == 0


@pytest.mark.parametrize("orders", [("1", "2"), ("2019-01-01", "2020-01-01")])
def test_history_leaves_out_images_without_an_order(orders):
    """An undated study sorted after every number and before every date: beside visit
    numbers it became the query, beside dates the gallery. Either way it is left out now,
    and counted; the reid protocol keeps it."""
    rows = [row(0, "A", "s1", orders[0], split="test"), row(1, "A", "s2", orders[1], split="test"),
            row(2, "A", "s3", "", split="test")]
    p = build_protocol(rows, "history")
    assert p.query.tolist() == [1] and p.gallery.tolist() == [0]
    assert p.left_out.tolist() == [2]
    assert build_protocol(rows, "reid").query.tolist() == [0, 1, 2]
    assert build_protocol(rows, "reid").left_out.size == 0


def test_protocol_errors():
    rows = hand_rows()
    with pytest.raises(ValueError, match="unknown protocol"):
        build_protocol(rows, "rank")
    with pytest.raises(ValueError, match="no rows in split 'val'"):
        build_protocol(rows, "reid", split="val")


@pytest.mark.parametrize("name", ["reid", "history"])
def test_protocol_ids_feed_reid_metrics_and_skip_counts_agree(name):
    from mami_jax.evaluate.metrics import reid_metrics

    p = build_protocol(hand_rows(), name)
    sim = np.random.default_rng(0).normal(size=(p.num_queries, p.gallery.size))
    m = reid_metrics(sim, p.query_pids, p.gallery_pids, p.query_studies, p.gallery_studies, ks=(1,))
    assert m["num_skipped_queries"] == p.num_without_match
    assert m["num_valid_queries"] == p.num_queries - p.num_without_match
