"""What ``add`` and ``query`` check against the archive before they load a model: how the
model reads images (``archive.json`` records it), the modalities the archive has centres
for, image files already archived (however reached: links resolved), the visit of an
archived query's ``--with`` images; and ``add`` after a save killed between its renames."""

import csv
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("faiss")

from mami_jax.apps.history.__main__ import main  # noqa: E402
from mami_jax.apps.history.archive import Archive  # noqa: E402
from mami_jax.apps.history.query_rows import query_row  # noqa: E402
from mami_jax.data.manifest import order_key, read_manifest, write_manifest  # noqa: E402
from mami_jax.runtime.atomic_files import aside_path  # noqa: E402
from tests import history_workdir as hw  # noqa: E402
from tests.history_commands import error_line  # noqa: E402
from tests.file_trees import paths_digest  # noqa: E402


def _with_fundus(manifest: str, out: str) -> str:
    """``manifest`` plus one fundus image (RGB, a per-patient pattern) per X-ray, of the
    same patient and visit: a two-modality archive, scored by visits."""
    rng = np.random.default_rng(3)
    rows, bases = read_manifest(manifest), {}
    folder = os.path.join(os.path.dirname(out), "fundus")
    os.makedirs(folder, exist_ok=True)
    fundus = []
    for r in rows:
        base = bases.setdefault(r.patient_id, rng.uniform(0, 255, (40, 40, 3)))
        path = os.path.join(folder, f"{r.patient_id}_v{r.order}.png")
        Image.fromarray(np.clip(base + rng.normal(0, 10, base.shape), 0, 255)
                        .astype(np.uint8)).save(path)
        fundus.append(r.replace(image_id=f"{r.patient_id}_fundus_v{r.order}",
                                study_id=f"fundus_v{r.order}", modality="fundus", view="",
                                path=path))
    write_manifest([r.replace(path=os.path.join(os.path.dirname(manifest), r.path))
                    for r in rows] + fundus, out)
    return out


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """tiny_setup, an X-ray archive of the first visits and a two-modality (X-ray and
    fundus) archive of every visit."""
    s = hw.tiny_setup(tmp_path_factory.mktemp("archive_checks"))
    s["index"] = str(s["root"] / "index")
    assert main(["index", "--workdir", s["run"], "--config", s["config"], "--manifest",
                 s["first"], "--out", s["index"], "--app-config", s["app"]]) == 0
    s["two"] = _with_fundus(s["manifest"], str(s["root"] / "two" / "manifest.csv"))
    s["index2"] = str(s["root"] / "index2")
    assert main(["index", "--workdir", s["run"], "--config", s["config"], "--manifest",
                 s["two"], "--out", s["index2"], "--app-config", s["app"]]) == 0
    return s


def _listed(out: str) -> list[str]:
    """The image ids a query printed, best first."""
    return [line.split()[3] for line in out.splitlines() if line[:4].strip().isdigit()]


def _copy(s, tmp_path, name="index") -> str:
    index = str(tmp_path / name)
    shutil.copytree(s["index"], index)
    return index


def _other_reading(s, tmp_path) -> str:
    """The tiny experiment config reading every image at resize_size 48 instead of 36: the
    same model, other embeddings."""
    other = tmp_path / "other_reading.py"
    other.write_text(open(s["config"]).read().replace("resize_size=36", "resize_size=48"))
    return str(other)


# -- 1. how the model reads images -------------------------------------------------------
def test_a_config_reading_images_otherwise_is_refused_before_the_model_loads(
        setup, capsys, no_model, tmp_path):
    """Same parameters, a --config differing only in resize_size: query returned another
    patient's images as accepted history, and add archived embeddings of another space."""
    s = setup
    recorded = Archive.load(s["index"]).model["reading"]
    assert recorded["modalities.xray.resize_size"] == 36
    assert recorded["normalization"] == "per_image" and "modalities.xray.flip" not in recorded
    other = _other_reading(s, tmp_path)
    q = next(r for r in read_manifest(s["manifest"]) if r.order == "1")
    index = _copy(s, tmp_path)
    before = paths_digest(index)
    tail = (f"the config {other} reads them with 48; the same model's embeddings of images "
            f"read otherwise do not compare with the archive's: use the config the archive "
            f"records ({s['config']}) or build a new archive with this one")
    assert main(["query", "--index", index, "--image", q.path, "--workdir", s["run"],
                 "--config", other, "--png", str(tmp_path / "q.png"),
                 "--app-config", s["app"]]) == 1
    assert error_line(capsys) == (f"error: querying {index}: the archive's images were read with "
                              f"data.modalities.xray.resize_size=36, " + tail)
    assert main(["add", "--index", index, "--manifest", s["last"], "--workdir", s["run"],
                 "--config", other]) == 1
    assert error_line(capsys) == (f"error: adding {s['last']} to {index}: the archive's images "
                              f"were read with data.modalities.xray.resize_size=36, " + tail)
    assert paths_digest(index) == before
    assert sorted(os.listdir(tmp_path)) == ["index", "other_reading.py"]


def test_an_archive_without_the_record_is_used_and_said(setup, capsys, tmp_path):
    """An archive from before archive.json recorded the reading cannot be checked; it is
    used as before (its commands read with the config it records by default) and said."""
    s = setup
    index = _copy(s, tmp_path)
    header_path = os.path.join(index, "archive.json")
    header = json.load(open(header_path))
    del header["model"]["reading"]
    json.dump(header, open(header_path, "w"))
    q = next(r for r in read_manifest(s["manifest"]) if r.order == "1")
    capsys.readouterr()
    assert main(["query", "--index", index, "--image", q.path, "--png",
                 str(tmp_path / "q.png"), "--app-config", s["app"]]) == 0
    captured = capsys.readouterr()
    assert (f"warning: {index} records no image-reading settings (it was built before "
            f"archives recorded them), so whether {s['config']} reads images as its images "
            f"were read cannot be checked; index it again to record them"
            ) in captured.err.splitlines()
    assert _listed(captured.out)


def test_check_reading_names_the_setting_and_a_damaged_record():
    """The archive's own modalities' settings are named first; a setting the config lacks,
    or a record that is no object, is refused."""
    from mami_jax.apps.history.archive import ArchiveError
    held = {"normalization": "per_image", "modalities.ct.slices": 2,
            "modalities.xray.resize_size": 36}
    archive = Archive(4, model={"fingerprint": "f", "config": "a.py", "reading": held})
    archive.positions["xray"] = [0]
    archive.check_reading(dict(held, **{"modalities.mri.slices": 3}), "here", "b.py")
    with pytest.raises(ArchiveError) as e:
        archive.check_reading(dict(held, **{"modalities.ct.slices": 8,
                                            "modalities.xray.resize_size": 48}), "here", "b.py")
    assert str(e.value).startswith("here: the archive's images were read with "
                                   "data.modalities.xray.resize_size=36, the config b.py reads "
                                   "them with 48; ")
    with pytest.raises(ArchiveError, match=r"^here: the archive's images were read with "
                       r"data.normalization='per_image', the config b.py reads them with no "
                       r"such setting; "):
        archive.check_reading({k: v for k, v in held.items() if k != "normalization"}, "here",
                              "b.py")
    archive.model["reading"] = "abc"
    with pytest.raises(ArchiveError) as e:
        archive.check_reading(held, "here", "b.py")
    assert str(e.value) == ("here: archive.json records the model's reading as 'abc', not its "
                            "settings: the archive is damaged")


# -- 2. a modality without a centre ------------------------------------------------------
def test_add_of_a_modality_without_a_centre_is_refused_before_the_model_loads(
        setup, capsys, no_model, tmp_path):
    """It failed after embedding every image, naming no manifest, and left the partial
    embeddings beside the archive."""
    s = setup
    index = _copy(s, tmp_path)
    before = paths_digest(index)
    fundus = str(tmp_path / "fundus.csv")
    last = read_manifest(s["last"])
    write_manifest(last[:1] + [r.replace(image_id=f"{r.image_id}_f", modality="fundus",
                                         view="") for r in last[1:3]], fundus)
    assert main(["add", "--index", index, "--manifest", fundus]) == 1
    assert error_line(capsys) == (f"error: {fundus}: image {last[1].image_id}_f is fundus, for "
                              f"which {index} holds no centre (it was indexed without fundus "
                              f"images; centres for xray): index the archive again over its "
                              f"images and these")
    assert paths_digest(index) == before
    assert sorted(os.listdir(tmp_path)) == ["fundus.csv", "index"]


# -- 3. an archived image reached through a link -----------------------------------------
def test_an_archived_image_through_a_linked_folder_is_the_archived_one(setup, capsys,
                                                                        tmp_path):
    """Compared as absolute paths, it was a new image: its own archived copy and a later
    image of its patient came back as its history."""
    s = setup
    archive = Archive.load(s["index"])
    q = next(r for r in archive.rows if r.order == "1")
    link = tmp_path / "linked"
    link.symlink_to(os.path.dirname(s["manifest"]))
    through = str(link / os.path.relpath(q.path, os.path.dirname(s["manifest"])))
    assert query_row(archive, through, None, None) == q
    assert query_row(archive, through, "xray", None) == q
    index = _copy(s, tmp_path)
    assert main(["add", "--index", index, "--manifest", s["last"]]) == 0
    capsys.readouterr()
    assert main(["query", "--index", index, "--image", through, "--modality", "xray", "--k",
                 "4", "--png", str(tmp_path / "q.png"), "--app-config", s["app"]]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"query {q.image_id} (xray, patient {q.patient_key}, order 1)")
    by_id = {r.image_id: r for r in read_manifest(s["manifest"])}
    listed = _listed(out)
    assert listed and q.image_id not in listed
    assert all(by_id[i].patient_key != q.patient_key or order_key(by_id[i].order)
               < order_key(q.order) for i in listed)


# -- 4. an archived query's --with of another visit --------------------------------------
def test_an_archived_query_refuses_with_images_of_another_visit(setup, capsys, no_model,
                                                                 tmp_path):
    """placed_by_mates returns an archived query as it is, so another patient's image (or
    the patient's earlier visit's) was scored as part of the query's visit."""
    s = setup
    rows = {r.image_id: r for r in Archive.load(s["index2"]).rows}
    q = rows["P7_xray_v2"]
    for mate in (rows["P8_fundus_v0"], rows["P7_fundus_v1"]):
        assert main(["query", "--index", s["index2"], "--image", q.path, "--with", mate.path,
                     "--png", str(tmp_path / "q.png"), "--app-config", s["app"]]) == 1
        assert error_line(capsys) == (
            f"error: --with {mate.path}: archived as {mate.image_id}, of the visit "
            f"toy/{mate.patient_id}, order {mate.order!r}; the archived query P7_xray_v2 is "
            f"of toy/P7, order '2', and brings its own visit's archived images by itself: a "
            f"query's visit is one")
    own = rows["P7_fundus_v2"]
    assert main(["query", "--index", s["index2"], "--image", q.path, "--with", own.path,
                 "--png", str(tmp_path / "q.png"), "--app-config", s["app"]]) == 1
    assert error_line(capsys) == (f"error: --with {own.path} is already part of the query's visit "
                              "(the query itself, an archived visit-mate or given twice)")
    assert not os.path.exists(tmp_path / "q.png")


# -- 5. image files already archived -----------------------------------------------------
def test_add_refuses_image_files_already_archived_under_other_ids(setup, capsys, no_model,
                                                                  tmp_path):
    """A re-export under new ids archived the same files again: each doubled image took two
    of its patient's k places."""
    s = setup
    index = _copy(s, tmp_path)
    before = paths_digest(index)
    first, last = read_manifest(s["first"]), read_manifest(s["last"])
    again = str(tmp_path / "again.csv")
    write_manifest(last[:2] + [r.replace(image_id=f"{r.image_id}_reexport") for r in first[:3]],
                   again)
    assert main(["add", "--index", index, "--manifest", again]) == 1
    assert error_line(capsys) == (
        f"error: {again}: image {first[0].image_id}_reexport: its file {first[0].path} is "
        f"archived as {first[0].image_id} in {index} (3 such image(s)); an image archived "
        "twice takes two of its patient's places among the k candidates: leave them out")
    # the same file through a linked folder; one new file listed twice
    link = tmp_path / "linked"
    link.symlink_to(os.path.dirname(first[0].path))
    linked = first[0].replace(image_id="linked", path=str(link / os.path.basename(
        first[0].path)))
    write_manifest([linked], again)
    assert main(["add", "--index", index, "--manifest", again]) == 1
    assert error_line(capsys).startswith(f"error: {again}: image linked: its file {linked.path} "
                                     f"is archived as {first[0].image_id} in {index} (1 such")
    write_manifest(last[:2] + [last[1].replace(image_id="twice")], again)
    assert main(["add", "--index", index, "--manifest", again]) == 1
    assert error_line(capsys).startswith(f"error: {again}: image twice: its file {last[1].path} "
                                     f"is image {last[1].image_id} of the manifest too (1 such")
    assert paths_digest(index) == before


# -- 6. a save killed between its renames ------------------------------------------------
def test_add_puts_back_the_archive_a_killed_save_left_aside(setup, capsys, tmp_path):
    """The docs said the next add puts it back; add stopped with an error telling the
    user to move it back."""
    s = setup
    folder = tmp_path / "killed"
    folder.mkdir()
    index = str(folder / "index")
    shutil.copytree(s["index"], aside_path(index))
    capsys.readouterr()
    assert main(["add", "--index", index, "--manifest", s["last"]]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == (f"  {index}: put back the archive that a save stopped half-way had left "
                      f"aside in {aside_path(index)}")
    assert len(Archive.load(index)) == len(read_manifest(s["manifest"]))
    assert not os.path.exists(aside_path(index))
    assert [n for n in os.listdir(folder) if not n.startswith(".")] == ["index"]
    with open(os.path.join(index, "metadata.csv"), newline="") as f:
        assert [r["image_id"] for r in csv.DictReader(f)] == [
            r.image_id for r in read_manifest(s["first"]) + read_manifest(s["last"])]
