"""Visit folders named by dates written year last are refused whatever joins the date's
parts (``/ . - _`` or a space) and wherever it sits in the name: ``15_01_2019`` and
``visit_15-01-2019`` were taken as they were, and their natural order (by day, not in
time) became the visits' order without a word. A manifest's ``order`` of ``15_01_2019``
is refused as ``15-01-2019`` always was; a time after a date written year first is no
such date.
"""

import os

import numpy as np
import pytest
from PIL import Image

from mami_jax.data.build_manifest import main
from mami_jax.data.datasets.common import DatasetLayoutError
from mami_jax.data.datasets.folders import build
from mami_jax.data.manifest import COLUMNS, ManifestError, read_manifest

REFUSAL = ("a visit folder named by a date written year last sorts by day or month, not in "
           "time; rename the visit folders year first (2019-03-01 or 20190301)")


def visits(root, names):
    for name in names:
        folder = root / "P1" / name
        folder.mkdir(parents=True)
        Image.fromarray(np.full((8, 8), 100, np.uint8)).save(folder / "a.png")


@pytest.mark.parametrize("names", [
    ("15_01_2019", "20_12_2018"),              # '_' (the first in natural order is named)
    ("15 01 2019", "20 12 2018"),              # a space
    ("visit_15-01-2019", "visit_20-12-2018"),  # a date inside the name
    ("CT 15.01.2019 chest", "CT 20.12.2018 chest"),
])
def test_visit_folders_holding_a_date_written_year_last_are_refused(tmp_path, capsys, names):
    visits(tmp_path / "data", names)
    out = tmp_path / "m.csv"
    assert main(["--dataset", "folders", "--modality", "xray", "--root", str(tmp_path / "data"),
                 "--out", str(out), "--no-preview"]) == 1
    assert capsys.readouterr().err.strip() == \
        f"error: {tmp_path / 'data' / 'P1' / names[0]}: {REFUSAL}"
    assert not out.exists()


def test_year_first_dates_and_times_after_them_are_no_such_dates(tmp_path):
    # The time's digit groups follow a date's: the search does not take them for a date.
    names = ("2019-03-01_10-30-00", "2019-03-01T11-00-00", "20190302 08.15.00", "2019_03_05",
             "visit 2")
    visits(tmp_path, names)
    assert sorted(r.study_id for r in build(str(tmp_path), modality="xray").rows) == sorted(names)


def test_a_manifest_order_written_year_last_with_underscores_is_refused(tmp_path):
    p = tmp_path / "m.csv"
    p.write_text(",".join(COLUMNS) + "\n"
                 "d:a,p1,s1,15_01_2019,xray,d,PA,img/a.png,train\n")
    with pytest.raises(ManifestError, match="^" + str(p) + r": line 2 \(image_id='d:a'\): order "
                       r"'15_01_2019' is a date written year last"):
        read_manifest(str(p))
    p.write_text(",".join(COLUMNS) + "\n"
                 "d:a,p1,s1,2019-01-15_10-30-00,xray,d,PA,img/a.png,train\n")
    assert [r.order for r in read_manifest(str(p))] == ["2019-01-15_10-30-00"]


def test_the_message_names_the_folder_not_a_missing_file(tmp_path):
    # DatasetLayoutError, as the whole-name refusal ('3-1-2019') always was.
    visits(tmp_path, ("visit_3-1-2019",))
    with pytest.raises(DatasetLayoutError, match="^" + str(tmp_path / "P1" / "visit_3-1-2019")):
        build(str(tmp_path), modality="xray")
    assert os.path.isdir(tmp_path / "P1" / "visit_3-1-2019")
