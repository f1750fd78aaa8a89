"""The history archive (FAISS + metadata): save, load and add give the same search
results as one archive built at once; another model's embeddings and repeated images
are refused; an inconsistent folder is an error naming the file."""

import json
import os

import numpy as np
import pytest

pytest.importorskip("faiss")

from mami_jax.apps.history.archive import Archive, ArchiveError  # noqa: E402
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
