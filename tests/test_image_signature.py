"""``data.image_signature``: caches keyed by image id notice when the file behind an id
changes (size or modification time), also inside a series folder."""

import os

from mami_jax.data.image_signature import path_signature, rows_signature
from mami_jax.data.manifest import ManifestRow


def _row(image_id, path):
    return ManifestRow(image_id=image_id, patient_id="p", study_id="s", order="0",
                       modality="ct", dataset="d", view="", path=path, split="train")


def test_a_changed_file_or_slice_changes_the_signature(tmp_path):
    (tmp_path / "a.png").write_bytes(b"12345")
    series = tmp_path / "series"
    series.mkdir()
    for k in range(3):
        (series / f"{k}.png").write_bytes(b"x" * (k + 1))
    rows = [_row("a", str(tmp_path / "a.png")), _row("b", str(series))]
    first = rows_signature(rows)
    assert rows_signature(rows) == first                         # stable
    assert rows_signature(rows[::-1]) != first                   # order matters
    assert rows_signature([_row("z", rows[0].path), rows[1]]) != first   # ids matter
    (tmp_path / "a.png").write_bytes(b"123456")                  # another size
    second = rows_signature(rows)
    assert second != first
    st = os.stat(series / "1.png")
    os.utime(series / "1.png", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched slice
    assert rows_signature(rows) != second
    (series / "3.png").write_bytes(b"y")                          # a slice added
    assert "3.png" in path_signature(str(series))


def test_an_analyze_pair_is_signed_by_both_halves(tmp_path):
    """A manifest names the .img (or the .hdr) of a pair; a new header (another scaling or
    orientation, same voxels) is another image."""
    (tmp_path / "v.img").write_bytes(b"voxels")
    (tmp_path / "v.hdr").write_bytes(b"h" * 348)
    first = path_signature(str(tmp_path / "v.img"))
    (tmp_path / "v.hdr").write_bytes(b"H" * 352)
    assert path_signature(str(tmp_path / "v.img")) != first
    assert "v.img" in path_signature(str(tmp_path / "v.hdr"))


def test_a_missing_file_has_a_signature_of_its_own(tmp_path):
    gone = str(tmp_path / "gone.png")
    assert "|missing:" in path_signature(gone)
    (tmp_path / "gone.png").write_bytes(b"1")
    assert "|missing:" not in path_signature(gone)


def test_asked_in_threads_on_a_slow_file_system_it_is_the_same_signature(tmp_path, monkeypatch):
    """On a mounted bucket the files are asked many at once (``file_questions``); the
    signature is the one asked in row order."""
    import hashlib

    from mami_jax.data import file_questions
    rows = []
    for i in range(300):
        (tmp_path / f"{i}.png").write_bytes(b"x" * (i % 7))
        rows.append(_row(str(i), str(tmp_path / f"{i}.png")))
    rows.append(_row("gone", str(tmp_path / "gone.png")))
    by_hand = hashlib.sha256()
    for r in rows:
        by_hand.update(f"{r.image_id}\n{r.modality}\n{path_signature(r.path)}\n".encode())
    monkeypatch.setattr(file_questions, "SLOW_SECONDS", 0.0)
    asked_by = set()
    real = file_questions._in_threads
    monkeypatch.setattr(file_questions, "_in_threads",
                        lambda *a: asked_by.add("threads") or real(*a))
    assert rows_signature(rows) == by_hand.hexdigest() and asked_by == {"threads"}
