"""What ``python -m mami_jax.apps.history query`` prints and draws, and where its picture
goes: every rank even when a candidate's file is gone, whose each candidate is (patient,
order) in the table and the captions, the query's own order as the history rule reads it,
and a default picture named by the image that never replaces another."""

import hashlib
import os

import pytest

pytest.importorskip("faiss")

from mami_jax.apps.history import pictures, query_output  # noqa: E402
from mami_jax.apps.history.__main__ import main  # noqa: E402
from mami_jax.data.manifest import read_manifest, write_manifest  # noqa: E402
from tests import history_workdir as hw  # noqa: E402

#: The patient whose images the fixture's archive holds without an order.
NO_ORDER = "P8"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """tiny_setup and an archive, with recorded diagnoses, of every visit of its patients,
    those of ``NO_ORDER`` without an order."""
    s = hw.tiny_setup(tmp_path_factory.mktemp("query_output"))
    rows = [r.replace(order="") if r.patient_id == NO_ORDER else r
            for r in read_manifest(s["manifest"])]
    s["rows"] = rows
    s["archived"] = str(s["root"] / "archived.csv")
    write_manifest(rows, s["archived"])
    s["index"] = str(s["root"] / "index")
    assert main(["index", "--workdir", s["run"], "--config", s["config"], "--manifest",
                 s["archived"], "--out", s["index"], "--app-config", s["app"],
                 "--labels", s["labels"]]) == 0
    return s


def _row(s, patient, order):
    return next(r for r in s["rows"] if r.patient_id == patient and r.image_id.endswith(order))


def _query(s, image, *extra):
    return main(["query", "--index", s["index"], "--image", image, "--app-config", s["app"],
                 *extra])


def _table(out: str) -> list[list[str]]:
    """The table rows a query printed, split on whitespace, best first."""
    return [line.split() for line in out.splitlines() if line[:4].strip().isdigit()]


def test_the_table_and_header_say_whose_each_candidate_is(setup, capsys, tmp_path):
    """The table showed ``image_id (study, order)``: with ids that do not spell the patient
    (DICOM UIDs) and study ids per visit, nothing said whether a candidate was the query's
    own patient, which is what accept/reject is about. Now each row says its patient
    (``dataset/patient_id``) and order, and the header the query's."""
    s = setup
    q = _row(s, "P4", "v2")
    assert _query(s, q.path, "--k", "4", "--png", str(tmp_path / "q.png")) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[1].split() == ["rank", "score", "decision", "image_id", "patient", "order",
                                "study", "disease_label"]
    by_id = {r.image_id: r for r in s["rows"]}
    table = _table(out)
    assert len(table) == 4
    for rank, score, decision, image_id, patient, order, study, record in table:
        c = by_id[image_id]
        assert (patient, order, study) == (c.patient_key, c.order or "-", c.study_id)
    assert lines[0].startswith(f"query {q.image_id} (xray, patient toy/P4, order 2); ")


def test_an_archived_image_without_an_order_is_not_called_newest(setup, capsys, tmp_path):
    """An archived image without an order was headed "order newest", yet the history rule
    gives it no image of its own patient as earlier (``is_history``): the header says so.
    "newest" is a new image's, queried without ``--order``."""
    s = setup
    q = _row(s, NO_ORDER, "v1")
    assert _query(s, q.path, "--png", str(tmp_path / "q.png")) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith(
        f"query {q.image_id} (xray, patient toy/{NO_ORDER}, no order: no image of its own "
        f"patient counts as earlier); ")
    assert "newest" not in out
    table = _table(out)
    assert table and all(row[4] != f"toy/{NO_ORDER}" for row in table)


def test_every_rank_is_shown_when_a_candidates_file_is_gone(setup, capsys, tmp_path,
                                                            monkeypatch):
    """Retrieval needs only the index: a candidate whose file was deleted since it was
    archived stopped the table after its rank with ``error: ... no such file``, and no
    picture. Now every rank is printed, a warning names the missing file, and the
    picture shows the candidate's caption, saying "file missing", without its image."""
    s = setup
    q = _row(s, "P4", "v2")
    png = str(tmp_path / "q.png")
    assert _query(s, q.path, "--k", "3", "--png", png) == 0
    listed = [row[3] for row in _table(capsys.readouterr().out)]
    gone = next(r for r in s["rows"] if r.image_id == listed[1])
    drawn = {}
    real_figure = pictures.query_figure

    def spy(query_image, query_title, candidates, path):
        drawn.update(title=query_title, candidates=candidates)
        real_figure(query_image, query_title, candidates, path)
    monkeypatch.setattr(pictures, "query_figure", spy)
    os.rename(gone.path, gone.path + ".away")
    try:
        assert _query(s, q.path, "--k", "3", "--png", png) == 0
    finally:
        os.rename(gone.path + ".away", gone.path)
    out, err = capsys.readouterr()
    assert [row[3] for row in _table(out)] == listed
    assert "error" not in err
    (warning,) = [line for line in err.splitlines() if line.startswith("warning:")]
    assert f"{gone.path} ({gone.image_id}): no such file or folder" in warning
    assert "1 of the 3 candidates" in warning
    assert out.splitlines()[-1] == f"picture: {png}"
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    images = [image for image, _, _ in drawn["candidates"]]
    assert images[1] is None and images[0] is not None and images[2] is not None
    captions = [caption for _, caption, _ in drawn["candidates"]]
    assert captions[1].endswith("(file missing)")
    assert all("file missing" not in c for c in captions[::2])
    # the captions, too, say whose each candidate is and when
    for caption, image_id in zip(captions, listed):
        c = next(r for r in s["rows"] if r.image_id == image_id)
        assert caption.splitlines()[:2] == [
            image_id, f"{c.patient_key}, " + (f"order {c.order}" if c.order else "no order")]
    assert drawn["title"] == f"{q.image_id}\ntoy/P4, order 2"


def _digest(path) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def test_the_default_picture_is_named_by_the_image_and_replaces_nothing(setup, capsys,
                                                                        tmp_path, monkeypatch):
    """The default picture was ``./query_<file name>.png``: two patients' ``v2.png``
    queried from one folder both wrote ``query_v2.png``, the second replacing the first
    without a word (``test_picture_names_are_file_names``: the names now differ), and so did
    one image queried twice. Now it is named by the image id (a new image's by its file name
    and a hash of its path), and an existing file is kept: the next free ``-2``, ``-3`` name
    is taken."""
    s = setup
    monkeypatch.chdir(tmp_path)

    def picture(*argv) -> str:
        assert _query(s, *argv) == 0
        out = capsys.readouterr().out
        return out.splitlines()[-1].removeprefix("picture: ")

    first = picture(_row(s, "P4", "v2").path)
    assert first == str(tmp_path / "query_P4_xray_v2.png")
    kept = _digest(first)
    again = picture(_row(s, "P4", "v2").path)
    assert again == str(tmp_path / "query_P4_xray_v2-2.png")
    assert _digest(first) == kept
    # a new image: named by its file name and its path; "newest" is its order
    os.mkdir(tmp_path / "a")
    new = tmp_path / "a" / "v2.png"
    new.write_bytes(open(_row(s, "P3", "v2").path, "rb").read())
    assert _query(s, str(new), "--modality", "xray") == 0
    out = capsys.readouterr().out
    assert "(xray, new image, order newest)" in out.splitlines()[0]
    digest = hashlib.sha256(f"query:{new}".encode()).hexdigest()[:8]
    assert out.splitlines()[-1] == f"picture: {tmp_path}/query_v2-{digest}.png"
    assert sorted(os.listdir(tmp_path)) == sorted(
        ["a", "query_P4_xray_v2.png", "query_P4_xray_v2-2.png", f"query_v2-{digest}.png"])


def test_a_name_taken_while_the_query_ran_moves_the_picture_on(tmp_path):
    """The default name is chosen before the model loads and written after: a file that
    appeared there meanwhile (a second query of the same image) is kept, and the picture
    takes the next number; a drawing that fails leaves no placeholder behind."""
    from mami_jax.runtime.atomic_files import write_atomic
    base = str(tmp_path / "query_x.png")
    assert query_output.free_picture(base) == base
    open(base, "w").write("someone else's")
    (tmp_path / "query_x-2.png").symlink_to(tmp_path / "nowhere")   # a dangling link counts
    assert query_output.free_picture(base) == str(tmp_path / "query_x-3.png")
    written = query_output.write_new_picture(
        base, lambda tmp: open(tmp, "w").write("picture"), write_atomic)
    assert written == str(tmp_path / "query_x-3.png")
    assert open(written).read() == "picture" and open(base).read() == "someone else's"

    def fail(tmp):
        raise OSError("disk full")
    with pytest.raises(OSError):
        query_output.write_new_picture(base, fail, write_atomic)
    assert sorted(os.listdir(tmp_path)) == ["query_x-2.png", "query_x-3.png", "query_x.png"]


def test_picture_names_are_file_names():
    """Archived images are named by their ids (two patients' ``v2.png`` apart), made file
    names; new images (dataset ``query``, id ``query:PATH``) by their file name and path."""
    from mami_jax.data.manifest import ManifestRow
    row = ManifestRow(image_id="", patient_id="p", study_id="s", order="", modality="xray",
                      dataset="d", view="", path="/a/b.png")
    assert {os.path.basename(query_output.default_picture(row.replace(image_id=i), "."))
            for i in ("P0005_xray_v2", "P0000_ct_v2")} == {
        "query_P0005_xray_v2.png", "query_P0000_ct_v2.png"}
    new = [row.replace(image_id=f"query:{p}", patient_id=f"query:{p}", study_id=f"query:{p}",
                       dataset="query", path=p) for p in ("/a/v2.png", "/b/v2.png")]
    names = [os.path.basename(query_output.default_picture(r, ".")) for r in new]
    assert names[0] != names[1] and all(n.startswith("query_v2-") for n in names)
    for image_id, name in (("P1_xray_v0", "query_P1_xray_v0.png"),
                           ("1.2.840.1/7:x y", "query_1.2.840.1_7_x_y.png"),
                           ("..hidden", "query_hidden.png"), ("Müller", "query_M_ller.png")):
        assert os.path.basename(query_output.default_picture(
            row.replace(image_id=image_id), "/f")) == name
    long = query_output.default_picture(row.replace(image_id="x" * 300), "/f")
    assert len(os.path.basename(long)) < 120
    assert long != query_output.default_picture(row.replace(image_id="x" * 301), "/f")


def test_the_help_says_what_threshold_and_the_default_picture_are(capsys):
    """``--threshold`` said "similarity", yet a visit-fused archive (the default) scores
    summed z-scores; ``--png`` said nothing of what the default picture does to a file
    already there."""
    with pytest.raises(SystemExit) as e:
        main(["query", "--help"])
    assert e.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert ("accept above this score, on the scale of the archive's score kind (a "
            "visit-fused archive's: summed z-scores;") in text
    assert "./query_<image id>.png" in text and "never replaced by it" in text
