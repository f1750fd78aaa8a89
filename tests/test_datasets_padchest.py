"""PadChest's builder checks its files as every builder does (``Collector.result``: many
at a time on a slow file system), not one after another while its metadata is read: on a
mounted bucket (tens of milliseconds a question) its 160,000 rows took hours before the
parallel check began."""

import os
import threading
import time

from mami_jax.data.datasets.registry import BUILDERS
from mami_jax.data.file_questions import CHUNK

HEADER = "ImageID,ImageDir,PatientID,StudyID,StudyDate_DICOM,Projection\n"


def padchest_root(tmp_path, n):
    root = tmp_path / "padchest"
    (root / "0").mkdir(parents=True)
    with open(root / "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv", "w") as f:
        f.write(HEADER)
        for i in range(n):
            f.write(f"img{i}.png,0,p{i},s{i},20090101,PA\n")
            (root / "0" / f"img{i}.png").write_bytes(b"")
    return root


def test_files_are_checked_together_not_one_by_one_while_reading(tmp_path, monkeypatch):
    n = 3 * CHUNK
    root = padchest_root(tmp_path, n)
    real = os.path.isfile
    asked = {"main": 0, "other": 0}

    def slow_isfile(path):      # a network mount: each question waits
        if str(path).endswith(".png"):
            main = threading.current_thread() is threading.main_thread()
            asked["main" if main else "other"] += 1
            time.sleep(0.001)
        return real(path)

    monkeypatch.setattr(os.path, "isfile", slow_isfile)
    res = BUILDERS["padchest"](str(root))
    assert len(res.rows) == n and res.missing_files == 0
    # The first chunk times the file system in order; the rest go to the checker's threads.
    # Before: every row asked on the main thread while reading, then again when checked.
    assert asked == {"main": CHUNK, "other": n - CHUNK}


def test_an_image_outside_its_folder_is_found_by_name_and_a_missing_one_counted(tmp_path):
    root = padchest_root(tmp_path, 2)
    (root / "flat").mkdir()
    os.rename(root / "0" / "img1.png", root / "flat" / "img1.png")     # a flattened mirror
    with open(root / "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv", "a") as f:
        f.write("gone.png,0,p9,s9,20090101,PA\n")
    res = BUILDERS["padchest"](str(root))
    assert [os.path.relpath(r.path, root) for r in res.rows] == ["0/img0.png", "flat/img1.png"]
    assert res.missing_files == 1
    assert res.skipped == [("PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv:4",
                            "file not found")]
