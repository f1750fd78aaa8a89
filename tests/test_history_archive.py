"""The history archive (FAISS + metadata): save, load and add give the same search
results as one archive built at once; another model's embeddings and repeated images
are refused; an inconsistent folder is an error naming the file."""

import json
import os

import numpy as np
import pytest

pytest.importorskip("faiss")

from mami_jax.apps.history.archive import Archive, ArchiveError, mean_directions  # noqa: E402
from mami_jax.data.manifest import ManifestRow  # noqa: E402

MODEL = {"fingerprint": "abc123", "source": "run A", "workdir": "/run", "config": "c.py"}
SETTINGS = dict(ivf_nlist=4, ivf_nprobe=4, hnsw_m=8, hnsw_ef_search=64)


def _rows(n, start=0):
    mods = ("xray", "ct")
    return [ManifestRow(image_id=f"img{i}", patient_id=f"p{i % 7}", study_id=f"s{i}",
                        order=str(i % 4), modality=mods[i % 2], dataset="d", view="v",
                        path=f"/data/img{i}.png", split="test") for i in range(start, start + n)]


def _vectors(n, seed=0, dim=16):
    return np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)


def _search_all(archive, queries):
    return {m: archive.search(m, queries, 10) for m in ("xray", "ct")}


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_save_load_add_round_trip(tmp_path, kind):
    rows, vecs = _rows(400), _vectors(400)
    queries = _vectors(5, seed=1)
    whole = Archive(16, kind, SETTINGS, MODEL)
    whole.add(rows, vecs)

    first = Archive(16, kind, SETTINGS, MODEL, calibration={"ct": {"threshold": 0.5}})
    first.add(rows[:300], vecs[:300])
    before = _search_all(first, queries)
    first.save(str(tmp_path / "idx"))
    loaded = Archive.load(str(tmp_path / "idx"))
    after = _search_all(loaded, queries)
    for m in before:  # the same index, bit for bit, after a round trip
        np.testing.assert_array_equal(before[m][0], after[m][0])
        np.testing.assert_array_equal(before[m][1], after[m][1])
    assert loaded.rows == rows[:300] and loaded.thresholds() == {"ct": 0.5}
    assert loaded.model == MODEL and loaded.kind == kind

    loaded.add(rows[300:], vecs[300:])
    loaded.save(str(tmp_path / "idx"))     # replaces the folder
    again = Archive.load(str(tmp_path / "idx"))
    assert len(again) == 400 and again.rows == rows
    header = json.loads((tmp_path / "idx" / "archive.json").read_text())
    assert header["count"] == 400 and header["modalities"] == {"ct": 200, "xray": 200}
    if kind == "flat":  # exact: identical to the archive built at once
        for m, (s, p) in _search_all(again, queries).items():
            ws, wp = whole.search(m, queries, 10)
            np.testing.assert_array_equal(p, wp)
            np.testing.assert_allclose(s, ws, rtol=1e-6)
            # positions are archive rows: the right modality, and scores are cosines
            assert all(again.rows[j].modality == m for j in p.ravel())
            unit = vecs / np.linalg.norm(vecs, axis=1, keepdims=True)
            q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
            np.testing.assert_allclose(s[0], unit[p[0]] @ q[0], rtol=1e-5)
    assert not [f for f in os.listdir(tmp_path) if f != "idx"]  # no staging left over


def test_small_partition_pads_with_minus_one():
    a = Archive(16, "flat", SETTINGS, MODEL)
    a.add(_rows(6), _vectors(6))
    scores, positions = a.search("ct", _vectors(1), 5)
    assert list(positions[0, 3:]) == [-1, -1] and np.all(np.isneginf(scores[0, 3:]))
    assert sorted(positions[0, :3]) == [1, 3, 5]
    s, p = a.search("mri", _vectors(2), 4)    # no such partition: nothing
    assert s.shape == (2, 4) and np.all(p == -1)


def test_add_refuses_repeated_images_and_other_models():
    a = Archive(16, "flat", SETTINGS, MODEL)
    a.add(_rows(4), _vectors(4))
    with pytest.raises(ArchiveError, match=r"1 image\(s\) already in the archive.*'img3'"):
        a.add(_rows(2, start=3), _vectors(2))
    assert len(a) == 4
    a.check_model(dict(MODEL), "adding x")
    with pytest.raises(ArchiveError, match=r"adding x: the archive's embeddings were made by "
                       r"another model \(run A, parameters abc123\) than the one given \(run B"):
        a.check_model({"fingerprint": "def456", "source": "run B"}, "adding x")
    with pytest.raises(ArchiveError, match=r"embeddings of shape \(1, 8\) for 1 images; the "
                       r"archive holds 16-d"):
        a.add(_rows(1, start=10), _vectors(1, dim=8))


def test_inconsistent_archive_is_an_error_naming_the_file(tmp_path):
    a = Archive(16, "flat", SETTINGS, MODEL)
    a.add(_rows(10), _vectors(10))
    a.save(str(tmp_path / "idx"))
    meta = tmp_path / "idx" / "metadata.csv"
    meta.write_text("\n".join(meta.read_text().splitlines()[:-1]) + "\n")  # drop one image
    with pytest.raises(ArchiveError, match=r"ct.faiss: holds 5 vectors, .*metadata.csv lists "
                       r"4 ct images"):
        Archive.load(str(tmp_path / "idx"))
    with pytest.raises(ArchiveError, match=r"is not an archive: archive.json cannot be read"):
        Archive.load(str(tmp_path))
    (tmp_path / "plain").mkdir()
    with pytest.raises(ArchiveError, match=r"plain exists and is not an archive"):
        a.save(str(tmp_path / "plain"))


def test_centred_archive_round_trips_through_save_load_add(tmp_path):
    # A large common direction in every embedding, as a re-ID model's raw output has.
    rows, vecs = _rows(60), _vectors(60) + 40.0
    queries = _vectors(3, seed=1) + 40.0
    centers = mean_directions(rows[:40], vecs[:40])
    assert sorted(centers) == ["ct", "xray"] and centers["ct"].shape == (16,)
    a = Archive(16, "flat", SETTINGS, MODEL, centers=centers)
    a.add(rows[:40], vecs[:40])
    before = a.search("ct", queries, 10)
    a.save(str(tmp_path / "idx"))
    loaded = Archive.load(str(tmp_path / "idx"))
    assert loaded.centred and json.loads((tmp_path / "idx" / "archive.json").read_text())["centred"]
    after = loaded.search("ct", queries, 10)
    np.testing.assert_array_equal(before[0], after[0])   # the same scores after reload
    np.testing.assert_array_equal(before[1], after[1])
    # Scores are cosines after removing the ct centre (the mean of the ct unit vectors).
    unit = vecs / np.linalg.norm(vecs, axis=1, keepdims=True)
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    ct = [i for i in range(40) if rows[i].modality == "ct"]
    center = unit[ct].mean(0)
    np.testing.assert_allclose(centers["ct"], center, rtol=1e-5)
    c = unit[after[1][0]] - center
    cq = q[0] - center
    expected = (c / np.linalg.norm(c, axis=1, keepdims=True)) @ (cq / np.linalg.norm(cq))
    np.testing.assert_allclose(after[0][0], expected, rtol=1e-4, atol=1e-5)
    raw = unit[after[1][0]] @ q[0]
    assert raw.min() > 0.999 and after[0][0].max() - after[0][0].min() > 0.3  # spread out
    # Adding later uses the stored centres, not new ones: the same as adding at once.
    loaded.add(rows[40:], vecs[40:])
    loaded.save(str(tmp_path / "idx"))
    again = Archive.load(str(tmp_path / "idx"))
    whole = Archive(16, "flat", SETTINGS, MODEL, centers=centers)
    whole.add(rows, vecs)
    for m in ("ct", "xray"):
        s1, p1 = again.search(m, queries, 10)
        s2, p2 = whole.search(m, queries, 10)
        np.testing.assert_array_equal(p1, p2)
        np.testing.assert_allclose(s1, s2, rtol=1e-6)
    np.testing.assert_array_equal(again.centers["ct"], centers["ct"])


def test_centred_archive_refuses_a_modality_without_centre(tmp_path):
    rows = _rows(4)
    a = Archive(16, "flat", SETTINGS, MODEL, centers={"xray": np.zeros(16, np.float32)})
    with pytest.raises(ArchiveError, match=r"no centre for modality 'ct' \(it was built without "
                       r"ct images; centres for xray\)"):
        a.add(rows, _vectors(4))
    assert len(a) == 0
    b = Archive(16, "flat", SETTINGS, MODEL, centers=mean_directions(rows, _vectors(4)))
    b.add(rows, _vectors(4))
    b.save(str(tmp_path / "idx"))
    (tmp_path / "idx" / "centers.npz").unlink()
    with pytest.raises(ArchiveError, match=r"centers.npz: the archive is centred but its "
                       r"centres cannot be read"):
        Archive.load(str(tmp_path / "idx"))
