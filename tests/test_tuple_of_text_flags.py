"""Tuple-of-text keys on ``main``'s command line (``data.only_modalities``,
``eval.protocols``): absl reads ``--config.data.only_modalities=xray,ct`` as the one name
"xray,ct". The run generated the phantoms (minutes at the paper's size) before it said
"unknown ['xray,ct']", and the source-weight error suggested exactly that comma form. Now a
wrong value is refused before any data is made or read, and the flag a message suggests is
read by absl as the names it lists.
"""

import os
import shlex

import pytest
from absl import flags
from ml_collections import config_flags

from mami_jax.data import pipeline
from mami_jax.tuple_flags import text_tuple_flag
from mami_jax.data.config import default_data_config, only_modalities
from mami_jax.data.loading import read_rows
from mami_jax.data.manifest import ManifestRow

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def absl_config(flag_text: str, words: str = "runlocal"):
    """The config of ``python -m mami_jax.main --config=configs/all.py:WORDS FLAG_TEXT``
    (``flag_text`` split as a shell splits it), as absl parses it."""
    argv = ["main", f"--config={REPO}/configs/all.py:{words}", *shlex.split(flag_text)]
    values = flags.FlagValues()
    # (sys_argv: the overrides it defines as flags come from this argv, not the test's)
    config_flags.DEFINE_config_file("config", None, flag_values=values, sys_argv=argv)
    values(argv)
    return values.config


def parsed_by_absl(flag_text: str, key: str = "data.only_modalities") -> tuple:
    """Config ``key`` after absl parses ``flag_text`` (``absl_config``)."""
    node = absl_config(flag_text)
    for part in key.split("."):
        node = node[part]
    return tuple(node)


def data_config(value):
    cfg = default_data_config()
    with cfg.unlocked():
        cfg.only_modalities = value
    return cfg


def test_known_modalities_pass_and_the_suggested_flags_read_back():
    assert only_modalities(data_config(())) == ()
    assert only_modalities(data_config(("ct", "xray"))) == ("ct", "xray")
    key = "data.only_modalities"
    assert parsed_by_absl(text_tuple_flag(key, ["xray"])) == ("xray",)
    assert parsed_by_absl(text_tuple_flag(key, ["ct", "xray"])) == ("ct", "xray")
    assert parsed_by_absl(text_tuple_flag(key, ["ct", "mri", "xray"])) == ("ct", "mri", "xray")


@pytest.mark.parametrize("typed, meant", [
    ("--config.data.only_modalities=xray,ct", ("xray", "ct")),
    ("--config.data.only_modalities=xray+ct", ("xray", "ct")),
    ("--config.data.only_modalities='(xray, mri)'", ("xray", "mri")),
])
def test_a_list_absl_took_as_one_name_is_refused_with_the_flag_that_works(typed, meant):
    value = parsed_by_absl(typed)
    assert len(value) == 1                     # absl's reading: one name
    with pytest.raises(ValueError) as e:
        only_modalities(data_config(value))
    message = str(e.value)
    assert message.startswith(f"data.only_modalities has unknown [{value[0]!r}]; known: ")
    suggested = message.split("several are given as a tuple: ")[1]
    assert parsed_by_absl(suggested) == meant


def test_a_name_that_is_no_modality_gets_no_suggestion():
    with pytest.raises(ValueError) as e:
        only_modalities(data_config(("xray", "xrays")))
    assert str(e.value) == ("data.only_modalities has unknown ['xrays']; known: "
                            "('xray', 'ct', 'mri', 'fundus', 'pathology')")


def test_a_wrong_value_is_refused_before_the_phantoms_are_made(tmp_path):
    from configs.all import get_config
    config = get_config("runlocal")
    with config.unlocked():
        config.phantoms.cache_dir = str(tmp_path / "phantoms")
        config.data.only_modalities = ("xray,ct",)
    with pytest.raises(ValueError, match="only_modalities has unknown"):
        read_rows(config, str(tmp_path / "run"))
    assert os.listdir(tmp_path) == []


def test_the_source_weight_error_suggests_a_flag_absl_reads_as_the_training_modalities():
    rows = [ManifestRow(image_id=f"{m}{p}{v}", patient_id=f"P{p}", study_id=f"S{p}{v}",
                        order=str(v), modality=m, dataset="d", view="",
                        path=f"/nowhere/{m}{p}{v}.png",
                        split="train")
            for m in ("ct", "xray") for p in range(2) for v in range(2)]
    cfg = default_data_config()
    with cfg.unlocked():
        cfg.modalities.mri.source_weight = 1.0
    with pytest.raises(ValueError, match="no training rows of modality 'mri'") as e:
        pipeline.make_train_loader(rows, cfg, seed=0)
    suggested = str(e.value).split("train on those only with ")[1]
    assert parsed_by_absl(suggested) == ("ct", "xray")


def test_protocols_listed_in_one_name_are_refused_with_the_flag_that_works():
    from mami_jax.train.settings_check import check_eval
    from configs.all import get_config
    for typed in ("reid,history", "history+reid"):
        value = parsed_by_absl(f"--config.eval.protocols={typed}", "eval.protocols")
        assert len(value) == 1
        config = get_config("runlocal")
        with config.unlocked():
            config.eval.protocols = value
        with pytest.raises(ValueError) as e:
            check_eval(config.eval)
        suggested = str(e.value).split("several are given as a tuple: ")[1]
        assert parsed_by_absl(suggested, "eval.protocols") == tuple(typed.replace("+", ",")
                                                                    .split(","))
    config = get_config("runlocal")
    with config.unlocked():
        config.eval.protocols = ("reid", "rank")
    with pytest.raises(ValueError) as e:
        check_eval(config.eval)
    assert "several" not in str(e.value)              # not a list: no suggestion


def test_teachers_listed_in_one_name_are_refused_with_the_flag_that_works():
    from configs.all import RUNLOCAL_TEACHERS
    from mami_jax.data.teacher_join import TeacherJoinError, check_config
    key = "data.teacher_features.teachers"
    typed = ",".join(RUNLOCAL_TEACHERS)
    config = absl_config(f"--config.{key}={typed}", "runlocal,align")
    assert tuple(config.data.teacher_features.teachers) == (typed,)     # absl: one name
    with pytest.raises(TeacherJoinError) as e:
        check_config(config)
    suggested = str(e.value).split("several are given as a tuple: ")[1]
    assert parsed_by_absl(suggested, key) == tuple(RUNLOCAL_TEACHERS)
