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


def test_a_save_killed_between_its_renames_loses_no_archive(tmp_path, monkeypatch):
    """The old archive was renamed to a temporary's name (which the stale-temporary sweep
    removes) and, killed before the new one moved in, left nothing where the archive was:
    now it waits aside under its own name, loading says where and how to put it back, and
    the next save puts it back first (nothing of it is lost)."""
    from mami_jax.runtime import atomic_files
    path = str(tmp_path / "idx")
    a = Archive(16, "flat", SETTINGS, MODEL)
    a.add(_rows(6), _vectors(6))
    a.save(path)
    real = os.rename

    def killed(src, dst):          # every rename into the archive's place is cut short
        if dst == path:
            raise KeyboardInterrupt
        real(src, dst)

    a.add(_rows(2, start=6), _vectors(2, seed=1))
    monkeypatch.setattr(atomic_files.os, "rename", killed)
    with pytest.raises(KeyboardInterrupt):
        a.save(path)
    monkeypatch.undo()
    aside = atomic_files.aside_path(path)
    assert not os.path.exists(path) and os.path.isdir(aside)
    with pytest.raises(ArchiveError) as e:
        Archive.load(path)
    assert str(e.value) == (f"{path}: a save of the archive stopped half-way and left the "
                            f"archive as it was before it aside, in {aside}; move it back "
                            f"(mv '{aside}' '{path}') and run the update again")
    assert atomic_files.remove_stale_temporaries(str(tmp_path)) == []    # not swept away
    real(aside, path)
    assert len(Archive.load(path)) == 6
    real(path, aside)
    a.save(path)                   # the next save puts it back, then replaces it
    assert len(Archive.load(path)) == 8 and sorted(os.listdir(tmp_path)) == ["idx"]


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
    with pytest.raises(ArchiveError) as caught:
        Archive.load(str(tmp_path / "idx"))
    assert str(caught.value) == (
        f"{meta}: lists {{'ct': 4, 'xray': 5}} images per modality, "
        f"{tmp_path / 'idx' / 'archive.json'} says {{'ct': 5, 'xray': 5}}: the archive is "
        f"inconsistent")
    with pytest.raises(ArchiveError, match=r"is not an archive: archive.json cannot be read"):
        Archive.load(str(tmp_path))
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "notes.txt").write_text("mine")
    with pytest.raises(ArchiveError, match=r"plain exists and is not an archive"):
        a.save(str(tmp_path / "plain"))
    assert (tmp_path / "plain" / "notes.txt").read_text() == "mine"
    (tmp_path / "empty").mkdir()               # an empty folder becomes the archive
    a.save(str(tmp_path / "empty"))
    assert len(Archive.load(str(tmp_path / "empty"))) == 10


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


# -- hub correction (CSLS) ---------------------------------------------------------------

HUB = dict(SETTINGS, hubness_k=3, hubness_shortlist=1000)


def _knn_mean(sim, k):
    return np.sort(sim, 1)[:, -k:].mean(1)


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_hub_corrected_scores_by_hand_and_through_save_load_add(tmp_path, kind):
    rows, vecs = _rows(120), _vectors(120)
    queries = _vectors(4, seed=2)
    a = Archive(16, kind, HUB, MODEL)
    a.add(rows[:80], vecs[:80])
    a.add(rows[80:], vecs[80:])          # every density recomputed over the grown partition
    a.save(str(tmp_path / "idx"))
    b = Archive.load(str(tmp_path / "idx"))
    unit = vecs / np.linalg.norm(vecs, axis=1, keepdims=True)
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    for m in ("xray", "ct"):
        members = [i for i, r in enumerate(rows) if r.modality == m]
        u = unit[members]
        sim = u @ u.T
        np.fill_diagonal(sim, -np.inf)
        r_c = _knn_mean(sim, 3)                                  # each image's own density
        np.testing.assert_allclose(b.density[m], r_c, rtol=1e-5, atol=1e-6)
        r_q = _knn_mean(q @ u.T, 3)
        expected = 2 * (q @ u.T) - r_q[:, None] - r_c[None, :]
        best = np.argsort(-expected, 1)[:, :5]
        scores, positions = b.search(m, queries, 5)
        if kind == "flat":
            np.testing.assert_array_equal(positions, np.asarray(members)[best])
        np.testing.assert_allclose(scores, np.take_along_axis(expected, best, 1)
                                   if kind == "flat" else
                                   expected[np.arange(4)[:, None],
                                            [[members.index(p) for p in row] for row in positions]],
                                   rtol=1e-5, atol=1e-5)


def test_an_archived_query_uses_its_stored_density_not_its_own_match():
    rows, vecs = _rows(60), _vectors(60)
    a = Archive(16, "flat", HUB, MODEL)
    a.add(rows, vecs)
    members = [i for i, r in enumerate(rows) if r.modality == "ct"]
    i = members[0]
    stored = a.density["ct"][0]
    scores, positions = a.search("ct", vecs[i:i + 1], 4, [rows[i].image_id])
    unit = vecs / np.linalg.norm(vecs, axis=1, keepdims=True)
    assert positions[0, 0] == i                                  # itself first ...
    assert scores[0, 0] == pytest.approx(2 - 2 * stored, abs=1e-5)   # ... scored with r_q = r_i
    j = positions[0, 1]
    r_j = a.density["ct"][members.index(j)]
    assert scores[0, 1] == pytest.approx(2 * unit[i] @ unit[j] - stored - r_j, abs=1e-5)
    # unknown id: the density is computed, and then includes the image itself (cos 1)
    fresh, _ = a.search("ct", vecs[i:i + 1], 1, ["not archived"])
    assert fresh[0, 0] < scores[0, 0]
    np.testing.assert_allclose(a.row_density([rows[i]], vecs[i:i + 1]), [stored], rtol=1e-6)


def test_a_hub_falls_in_the_ranking():
    """Worked example: archived images a_i = 0.6 e_i + 0.8 u share a direction u with a
    hub h = u; a query q_i = 0.25 e_i + 0.85 u + 0.464 w_i is closer to the hub (cos 0.85)
    than to its own a_i (cos 0.83). Densities (k = 3): r_h = 0.8, r_a = (0.8 + 2 x 0.64) / 3,
    so hub-corrected q_i scores a_i 2 x 0.83 - r_a - r_q and the hub 2 x 0.85 - 0.8 - r_q:
    its own image wins by 0.067."""
    n = 10
    dim = 2 * n + 1
    e = np.eye(dim)
    u = e[n]
    archived = np.stack([0.6 * e[i] + 0.8 * u for i in range(n)] + [u]).astype(np.float32)
    queries = np.stack([0.25 * e[i] + 0.85 * u + np.sqrt(1 - 0.25 ** 2 - 0.85 ** 2) * e[n + 1 + i]
                        for i in range(n)]).astype(np.float32)
    rows = [ManifestRow(image_id=f"i{k}", patient_id=f"p{k}", study_id="s", order="0",
                        modality="ct", dataset="d", view="", path=f"/{k}", split="test")
            for k in range(n + 1)]
    plain = Archive(dim, "flat", SETTINGS, MODEL)
    plain.add(rows, archived)
    hub = Archive(dim, "flat", dict(SETTINGS, hubness_k=3), MODEL)
    hub.add(rows, archived)
    np.testing.assert_array_equal(plain.search("ct", queries, 1)[1][:, 0], n)     # the hub
    np.testing.assert_array_equal(hub.search("ct", queries, 1)[1][:, 0], np.arange(n))
    np.testing.assert_allclose(hub.density["ct"], [(0.8 + 2 * 0.64) / 3] * n + [0.8], rtol=1e-5)
    scores, _ = hub.search("ct", queries, 2)
    r_a = (0.8 + 2 * 0.64) / 3
    np.testing.assert_allclose(scores[:, 0] - scores[:, 1], (2 * 0.83 - r_a) - (2 * 0.85 - 0.8),
                               atol=1e-5)


def test_a_hub_corrected_archive_without_densities_is_an_error(tmp_path):
    a = Archive(16, "flat", HUB, MODEL)
    a.add(_rows(10), _vectors(10))
    a.save(str(tmp_path / "idx"))
    os.remove(tmp_path / "idx" / "density.npz")
    with pytest.raises(ArchiveError, match="density.npz: the archive is hub-corrected"):
        Archive.load(str(tmp_path / "idx"))


def test_recorded_diagnoses_round_trip_and_are_checked(tmp_path):
    rows, vecs = _rows(10), _vectors(10)
    archive = Archive(16, "flat", SETTINGS, MODEL)
    archive.add(rows[:6], vecs[:6])
    archive.record(rows[:4], ["0", "1", "1", "0"], "disease_label")
    archive.save(str(tmp_path / "idx"))
    loaded = Archive.load(str(tmp_path / "idx"))
    assert loaded.record_column == "disease_label"
    assert loaded.records == {"img0": "0", "img1": "1", "img2": "1", "img3": "0"}
    loaded.add(rows[6:], vecs[6:])                 # extended with and without records
    loaded.record(rows[6:8], ["1", "1"], "disease_label")
    loaded.save(str(tmp_path / "idx"))
    again = Archive.load(str(tmp_path / "idx"))
    assert again.records == dict(loaded.records) and len(again.records) == 6
    # one column per archive; only archived images
    with pytest.raises(ArchiveError, match="records 'disease_label', not 'disease_stage'"):
        again.record(rows[8:], ["2", "3"], "disease_stage")
    with pytest.raises(ArchiveError, match="not archived"):
        again.record(_rows(1, start=50), ["1"], "disease_label")
    # an archive without records has none, and writes no records file
    plain = Archive(16, "flat", SETTINGS, MODEL)
    plain.add(rows, vecs)
    plain.save(str(tmp_path / "plain"))
    assert not (tmp_path / "plain" / "records.csv").exists()
    assert Archive.load(str(tmp_path / "plain")).record_column is None
    # a damaged records file is an error naming it
    (tmp_path / "idx" / "records.csv").write_text("image_id,disease_label\nimg0,1,extra\n")
    with pytest.raises(ArchiveError, match="records.csv: line 2 has 3 fields"):
        Archive.load(str(tmp_path / "idx"))
    (tmp_path / "idx" / "records.csv").write_text("image_id,disease_label\nimg99,1\n")
    with pytest.raises(ArchiveError, match="records.csv: 1 image"):
        Archive.load(str(tmp_path / "idx"))


def _damaged(tmp_path, name, damage):
    """A centred, hub-corrected archive with one part damaged by ``damage(folder)``."""
    a = Archive(16, "flat", HUB, MODEL, calibration={"ct": {"threshold": 0.5}},
                centers=mean_directions(_rows(12), _vectors(12)))
    a.add(_rows(12), _vectors(12))
    folder = str(tmp_path / name)
    a.save(folder)
    damage(folder)
    return folder


def _rewrite(path, edit):
    with open(path) as f:
        text = f.read()
    with open(path, "w") as f:
        f.write(edit(text))


def _header_edit(edit):
    def damage(folder):
        path = os.path.join(folder, "archive.json")
        header = json.loads(open(path).read())
        with open(path, "w") as f:
            json.dump(edit(header), f)
    return damage


def _truncate(name):
    def damage(folder):
        path = os.path.join(folder, name)
        data = open(path, "rb").read()
        open(path, "wb").write(data[:len(data) // 2])
    return damage


def _edit_line(number, edit):
    def damage(folder):
        _rewrite(os.path.join(folder, "metadata.csv"),
                 lambda t: "\n".join(edit(line) if i == number - 1 else line
                                     for i, line in enumerate(t.splitlines())) + "\n")
    return damage


@pytest.mark.parametrize("damage, message", [
    (_header_edit(lambda h: [h]), "{a}/archive.json: expected a JSON object of archive settings, "
                                  "got list"),
    (lambda f: open(os.path.join(f, "archive.json"), "wb").write(b"\xff{"),
     "{a}/archive.json: not valid JSON ('utf-8' codec can't decode byte 0xff in position 0: "
     "invalid start byte)"),
    (_header_edit(lambda h: {k: v for k, v in h.items() if k != "dim"}),
     "{a}/archive.json: no 'dim' entry"),
    (_header_edit(lambda h: dict(h, dim="16")),
     "{a}/archive.json: 'dim' is '16', expected a whole number"),
    (_header_edit(lambda h: dict(h, modalities=[1])),
     "{a}/archive.json: 'modalities' is [1], expected an object"),
    (_header_edit(lambda h: dict(h, calibration={"ct": {"threshold": "high"}})),
     "{a}/archive.json: 'calibration' of 'ct' has threshold 'high', expected a number"),
    (_edit_line(3, lambda line: line + ",extra"),
     "{a}/metadata.csv: line 3 has 10 fields, expected 9"),
    (_edit_line(3, lambda line: ",".join(line.split(",")[:4])),
     "{a}/metadata.csv: line 3 has 4 fields, expected 9"),
    (_edit_line(3, lambda line: line.replace("img1", "img0")),
     "{a}/metadata.csv: line 3: image 'img0' listed twice"),
    (lambda f: os.remove(os.path.join(f, "metadata.csv")),
     "{a}/metadata.csv: the archive's image list cannot be read (No such file or directory)"),
    (_truncate("centers.npz"), "{a}/centers.npz: the archive is centred but its centres cannot "
                               "be read (BadZipFile: File is not a zip file)"),
    (_truncate("density.npz"), "{a}/density.npz: the archive is hub-corrected but its densities "
                               "cannot be read (BadZipFile: File is not a zip file)"),
    (_truncate("ct.faiss"), "{a}/ct.faiss: cannot be read as a FAISS index"),
    (_header_edit(lambda h: dict(h, dim=8)),
     "{a}/ct.faiss: holds 6 16-d vectors, {a}/archive.json says 6 8-d ones: the archive is "
     "inconsistent"),
    # a flat index under an archive.json of another kind ended in AttributeError / RuntimeError
    (_header_edit(lambda h: dict(h, kind="hnsw")),
     "{a}/ct.faiss: not the inner-product hnsw index {a}/archive.json says the archive holds"),
    (_header_edit(lambda h: dict(h, kind="hnsw", settings={"hubness_k": 3})),
     "{a}: settings: no 'hnsw_m' entry, which a hnsw archive's search reads"),
    (_header_edit(lambda h: dict(h, settings=dict(h["settings"], hubness_k="x"))),
     "{a}: settings: hubness_k='x', expected a whole number"),
    (lambda f: np.savez(os.path.join(f, "density.npz"),
                        **{m: np.full(6, np.nan, np.float32) for m in ("ct", "xray")}),
     "{a}/density.npz: the ct, xray densities are not all finite numbers"),
])
def test_a_damaged_archive_is_an_error_naming_the_file(tmp_path, damage, message):
    folder = _damaged(tmp_path, "a", damage)
    if "8-d" in message:     # the centres (16-d) would be refused first: drop them
        _header_edit(lambda h: dict(h, centred=False))(folder)
    with pytest.raises(ArchiveError) as caught:
        Archive.load(folder)
    assert str(caught.value) == message.format(a=folder)


def test_densities_and_retrieval_in_chunks_equal_one_search(monkeypatch, capsys):
    """The progress bars' chunks change nothing: densities searched 7 images at a time and
    retrieval 5 queries at a time give what one search of all gives, and say so on stderr."""
    from mami_jax.apps.history import history_select, hubness
    rows, vecs = _rows(60), _vectors(60)
    whole = Archive(16, "flat", HUB, MODEL)
    whole.add(rows, vecs)
    expected = history_select.retrieve(whole, rows, vecs, 4, 0.0, progress=False)
    capsys.readouterr()
    monkeypatch.setattr(hubness, "DENSITY_CHUNK", 7)
    monkeypatch.setattr(history_select, "RETRIEVE_CHUNK", 5)
    chunked = Archive(16, "flat", HUB, MODEL)
    chunked.add(rows, vecs)
    for m in ("xray", "ct"):
        np.testing.assert_array_equal(chunked.density[m], whole.density[m])
    assert history_select.retrieve(chunked, rows, vecs, 4, 0.0) == expected
    err = capsys.readouterr().err
    assert "hub-correction densities: 100%" in err and "retrieval: 100%" in err


def test_images_without_a_finite_embedding_are_refused_by_name():
    """A run with data.skip_bad_images embeds an unreadable image as NaN: it poisoned the
    modality's centre ("must be 16 finite numbers") or was archived unfindable."""
    vectors = _vectors(6)
    vectors[3, 5] = np.nan
    for build in (lambda: mean_directions(_rows(6), vectors),
                  lambda: Archive(16, "flat", {}, MODEL).add(_rows(6), vectors)):
        with pytest.raises(ArchiveError, match=r"^1 image\(s\) have no finite embedding .*"
                                               r"\['img3'\]"):
            build()
