"""Argument misuse of build_manifest is a usage error (status 2, one ``error:`` line) found
before the dataset is read: ``--fractions`` was checked only once every metadata row was
read and every file looked at (status 1), and accepted ``nan`` (every patient in one
split); ``--modality``/``--name`` misuse was status 1 after the output checks.

Each case names a root that does not exist: the old checks came after the root was
looked at, so a usage error here is proof nothing was read first.
"""

import pytest

from mami_jax.data.build_manifest import main, parse_fractions

PROG = "python -m mami_jax.data.build_manifest"


def usage_error(argv, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv + ["--root", str(tmp_path / "missing"), "--out", str(tmp_path / "m.csv")])
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "m.csv").exists()
    return e.value.code, err.strip()


@pytest.mark.parametrize("fractions, said", [
    ("train=0.5,val=0.1,test=0.2",
     "split fractions {'train': 0.5, 'val': 0.1, 'test': 0.2} sum to 0.8, expected 1"),
    ("training=0.8,test=0.2",
     "unknown split 'training' in fractions; expected some of ('train', 'val', 'test')"),
    ("train=nan,val=0.8,test=0.2", "split fraction train=nan is not a finite number"),
    ("train=inf,val=0.8,test=0.2", "split fraction train=inf is not a finite number"),
    ("train=-0.2,val=1,test=0.2", "split fraction train=-0.2 is negative"),
    ("train=0.1,train=0.7,val=0.1,test=0.2",
     "split 'train' given twice in 'train=0.1,train=0.7,val=0.1,test=0.2'"),
])
def test_bad_fractions_are_a_usage_error_before_anything_is_read(tmp_path, capsys, fractions, said):
    code, err = usage_error(["--dataset", "folders", "--modality", "xray",
                             "--fractions", fractions], tmp_path, capsys)
    assert code == 2
    assert err == f"error: {PROG}: argument --fractions: {said} (see --help)"


def test_good_fractions_in_any_order_parse():
    assert parse_fractions("test=0.2, train=0.7,val=0.1") == {"test": 0.2, "train": 0.7, "val": 0.1}


@pytest.mark.parametrize("argv, said", [
    (["--dataset", "oasis", "--modality", "mri"],
     "--modality and --name are for --dataset folders; oasis's builder knows its own"),
    (["--dataset", "nih_chestxray14", "--name", ""],
     "--modality and --name are for --dataset folders; nih_chestxray14's builder knows its own"),
    (["--dataset", "folders", "--modality", "ct", "--name", "a/b"],
     "--name 'a/b': a dataset name is a word without ':', '/', ',' or surrounding spaces"),
    (["--dataset", "folders", "--modality", "ct", "--name", ""],
     "--name '': a dataset name is a word without ':', '/', ',' or surrounding spaces"),
])
def test_modality_and_name_misuse_is_a_usage_error(tmp_path, capsys, argv, said):
    code, err = usage_error(argv, tmp_path, capsys)
    assert code == 2
    assert err == f"error: {PROG}: {said} (see --help)"


def test_assign_splits_refuses_a_non_finite_fraction():
    # data.split_fractions reaches assign_splits without the command's parser: nan put every
    # patient in the last split.
    from mami_jax.data.manifest import ManifestRow
    from mami_jax.data.splits import assign_splits
    row = ManifestRow(image_id="d:a", patient_id="p", study_id="s", order="0", modality="xray",
                      dataset="d", view="", path="/a.png", split="")
    with pytest.raises(ValueError, match=r"^split fraction train=nan is not a finite number$"):
        assign_splits([row], {"train": float("nan"), "val": 0.8, "test": 0.2}, 0)
