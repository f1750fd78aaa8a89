"""protect's log of finished images: what it refuses and what it keeps."""

import json
import math

import pytest

from mami_jax.apps.privacy.protect_log import LOG_NAME, ProtectLog, differing_keys
from mami_jax.apps.privacy.quality import psnr_summary
from tests.strict_json_reader import strict_loads

SETTINGS = {"config": {"perturb": {"epsilon": 0.03, "steps": 40}}, "split": "test"}


def test_nothing_is_written_before_the_first_image(tmp_path):
    log = ProtectLog.open(str(tmp_path), SETTINGS)
    assert not (tmp_path / LOG_NAME).exists() and log.records == {}
    log.add({"image_id": "a", "score_after": 0.1})
    log.add({"image_id": "b", "score_after": 0.2})
    again = ProtectLog.open(str(tmp_path), SETTINGS)
    assert list(again.records) == ["a", "b"] and again.records["b"]["score_after"] == 0.2
    assert again.finished("a", str(tmp_path / LOG_NAME)) and not again.finished("c", str(tmp_path))
    assert not again.finished("a", str(tmp_path / "gone.png"))   # its file was removed


def test_the_uid_key_is_made_once_and_kept_for_a_resumed_run(tmp_path):
    log = ProtectLog.open(str(tmp_path), SETTINGS)
    other = ProtectLog.open(str(tmp_path / "other"), SETTINGS)
    assert len(log.uid_key) == 32 and log.uid_key != other.uid_key
    log.add({"image_id": "a"})
    assert ProtectLog.open(str(tmp_path), SETTINGS).uid_key == log.uid_key
    header = json.loads((tmp_path / LOG_NAME).read_text().splitlines()[0])
    del header["uid_key"]            # a log of before the key: its UIDs cannot be continued
    (tmp_path / LOG_NAME).write_text(json.dumps(header) + "\n")
    with pytest.raises(ValueError, match="line 1 is no protect log header .*'uid_key'"):
        ProtectLog.open(str(tmp_path), SETTINGS)


def test_other_settings_are_refused_naming_the_keys(tmp_path):
    ProtectLog.open(str(tmp_path), SETTINGS).add({"image_id": "a"})
    other = {"config": {"perturb": {"epsilon": 0.02, "steps": 40}}, "split": "val"}
    with pytest.raises(ValueError, match=r"\(config.perturb.epsilon, split differ\)"):
        ProtectLog.open(str(tmp_path), other)
    assert differing_keys({"a": {"b": 1}}, {"a": {"c": 1}}) == ["a.b", "a.c"]


def test_a_line_cut_short_at_the_end_is_dropped_and_appends_go_on(tmp_path):
    log = ProtectLog.open(str(tmp_path), SETTINGS)
    log.add({"image_id": "a"})
    with open(log.path, "a") as f:
        f.write('{"image_id": "b", "sc')
    again = ProtectLog.open(str(tmp_path), SETTINGS)
    assert list(again.records) == ["a"] and again.cut_short == 1
    again.add({"image_id": "b"})
    lines = (tmp_path / LOG_NAME).read_text().splitlines()
    assert [json.loads(x).get("image_id") for x in lines[1:]] == ["a", "b"]


def test_a_broken_line_inside_the_log_names_it(tmp_path):
    log = ProtectLog.open(str(tmp_path), SETTINGS)
    log.add({"image_id": "a"})
    with open(log.path, "a") as f:
        f.write("not json\n")
    with pytest.raises(ValueError, match=rf"{LOG_NAME}: line 3 is no image record"):
        ProtectLog.open(str(tmp_path), SETTINGS)
    (tmp_path / LOG_NAME).write_text("hello\n")
    with pytest.raises(ValueError, match="line 1 is no protect log header"):
        ProtectLog.open(str(tmp_path), SETTINGS)


def test_an_unchanged_images_psnr_is_null_in_the_log_and_still_counted_unchanged(tmp_path):
    """protect's log holds records a resumed run reports from: an image left unchanged has
    infinite PSNR in memory, null on disk, and the summary counts it unchanged either way."""
    log = ProtectLog.open(str(tmp_path), {"config": {"floor": math.inf}})
    log.add({"image_id": "a", "psnr_db": 31.0})
    log.add({"image_id": "b", "psnr_db": math.inf})
    for line in open(log.path):
        strict_loads(line)
    again = ProtectLog.open(str(tmp_path), {"config": {"floor": math.inf}})
    psnrs = [r["psnr_db"] for r in again.records.values()]
    assert psnrs == [31.0, None]
    assert psnr_summary(psnrs) == psnr_summary([31.0, math.inf]) == {
        "psnr_db": 31.0, "psnr_db_min": 31.0, "unchanged": 1}
