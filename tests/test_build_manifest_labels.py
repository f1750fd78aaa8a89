"""Two manifests built into one folder would share its ``labels.csv`` (every manifest reads
the one beside it): the second build's ``--overwrite`` replaced the first one's labels, and
the first manifest had none of its labels left, found only when a run read them. A labels
table holding images of another manifest is now refused, even with ``--overwrite``; a
rebuild of the same manifest, with more images or fewer, replaces its own as before.
"""

import os

from mami_jax.data import build_manifest
from mami_jax.data.manifest import read_manifest

NIH_HEADER = "Image Index,Finding Labels,Follow-up #,Patient ID,View Position\n"


def nih_root(tmp_path, names=("00000001_000.png", "00000001_001.png")):
    root = tmp_path / "nih"
    (root / "images").mkdir(parents=True, exist_ok=True)
    with open(root / "Data_Entry_2017.csv", "w") as f:
        f.write(NIH_HEADER)
        for k, name in enumerate(names):
            (root / "images" / name).write_bytes(b"")
            f.write(f"{name},Effusion,{k},1,PA\n")
    return root


def eyepacs_root(tmp_path):
    root = tmp_path / "eyepacs"
    (root / "train").mkdir(parents=True)
    (root / "trainLabels.csv").write_text("image,level\n10_left,2\n10_right,0\n")
    for name in ("10_left", "10_right"):
        (root / "train" / f"{name}.jpeg").write_bytes(b"")
    return root


def run(capsys, *argv):
    code = build_manifest.main([str(a) for a in argv] + ["--no-preview"])
    return code, capsys.readouterr().err.splitlines()


def test_another_manifests_labels_are_never_replaced(tmp_path, capsys):
    folder = tmp_path / "manifests"
    assert run(capsys, "--dataset", "nih_chestxray14", "--root", nih_root(tmp_path),
               "--out", folder / "nih.csv")[0] == 0
    labels = folder / "labels.csv"
    before = labels.read_bytes()
    assert before.startswith(b"image_id,Finding Labels,")
    eyes = eyepacs_root(tmp_path)
    for extra in ([], ["--overwrite"]):
        code, err = run(capsys, "--dataset", "eyepacs", "--root", eyes,
                        "--out", folder / "eyepacs.csv", *extra)
        assert code == 1 and err == [
            f"error: {labels}: holds the labels of another manifest (2 of its image ids are not "
            f"in {folder / 'eyepacs.csv'}, e.g. 'nih_chestxray14:00000001_000'); refusing to "
            "replace it, even with --overwrite (each manifest reads the labels.csv beside it: "
            "write this one into another folder)"]
        assert labels.read_bytes() == before
        assert sorted(os.listdir(folder)) == ["labels.csv", "nih.csv"]
    # Into a folder of its own it is written, with its labels.
    assert run(capsys, "--dataset", "eyepacs", "--root", eyes,
               "--out", tmp_path / "eyes" / "eyepacs.csv")[0] == 0
    assert (tmp_path / "eyes" / "labels.csv").read_text() == \
        "image_id,level\neyepacs:train-10_left,2\neyepacs:train-10_right,0\n"


def test_a_rebuild_with_fewer_or_more_images_replaces_its_own_labels(tmp_path, capsys):
    out = tmp_path / "m" / "manifest.csv"
    argv = ["--dataset", "nih_chestxray14", "--root", tmp_path / "nih", "--out", out]
    nih_root(tmp_path)
    assert run(capsys, *argv)[0] == 0
    os.remove(tmp_path / "nih" / "images" / "00000001_001.png")        # one image gone
    nih_root(tmp_path, names=("00000001_000.png",))
    assert run(capsys, *argv, "--overwrite")[0] == 0
    assert [r.image_id for r in read_manifest(str(out))] == ["nih_chestxray14:00000001_000"]
    assert len((tmp_path / "m" / "labels.csv").read_text().splitlines()) == 2
    nih_root(tmp_path, names=("00000001_000.png", "00000001_001.png", "00000001_002.png"))
    assert run(capsys, *argv, "--overwrite")[0] == 0                  # more images
    assert len((tmp_path / "m" / "labels.csv").read_text().splitlines()) == 4
