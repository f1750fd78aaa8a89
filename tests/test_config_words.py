"""The words after a config file's colon (``configs/all.py:runlocal,align``) say what they
do or are refused: before, ``runlocal=0`` turned runlocal on (any value was "on"),
``align=`` and ``teachers=`` were dropped (the run went on without teachers), and a word
given twice kept its last value."""

from __future__ import annotations

import os

import pytest

from mami_jax.config import parse_arg
from mami_jax.config_files import load_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_words_are_read_as_switches_and_values():
    words = parse_arg(" runlocal , teachers=/f , align ", ("runlocal", "teachers", "align"),
                      {"teachers": "DIR"}, optional_values=("align",))
    assert words == {"runlocal": True, "teachers": "/f", "align": True}
    assert parse_arg("align=a+b", ("align",), optional_values=("align",)) == {"align": "a+b"}
    assert parse_arg(None) == {} and parse_arg(",,") == {}


@pytest.mark.parametrize("arg, message", [
    ("runlocal=0", "config word 'runlocal' is a switch and takes no value (got runlocal=0): "
                   "leave the word out to turn it off"),
    ("runlocal,runlocal", "config word 'runlocal' is given twice; give it once"),
    ("teachers", "config word 'teachers' needs a value: teachers=DIR"),
    ("teachers=", "config word 'teachers' needs a value: teachers=DIR"),
    ("align=", "config word 'align' was given an empty value: write align alone or "
               "align=VALUE"),
    ("algn", "unknown config argument(s) ['algn']; known: runlocal, teachers, align"),
])
def test_a_word_that_would_be_misread_is_refused(arg, message):
    with pytest.raises(ValueError) as e:
        parse_arg(arg, ("runlocal", "teachers", "align"), {"teachers": "DIR"},
                  optional_values=("align",))
    assert str(e.value) == message


@pytest.mark.parametrize("spec, message", [
    ("all.py:runlocal,align=", "config word 'align' was given an empty value"),
    ("all.py:teachers=", "config word 'teachers' needs a value: teachers=FEATURES_DIR"),
    ("all.py:runlocal,finetune=", "config word 'finetune' needs a value: finetune=FILE.pth"),
    ("all.py:runlocal=False", "config word 'runlocal' is a switch and takes no value"),
    ("ct.py:runlocal=no", "config word 'runlocal' is a switch and takes no value"),
])
def test_the_experiment_files_refuse_misread_words(spec, message):
    with pytest.raises(ValueError) as e:
        load_config(os.path.join(REPO, "configs", spec))
    assert message in str(e.value)


def test_the_documented_experiment_words_still_read():
    plain = load_config(os.path.join(REPO, "configs", "all.py"))
    local = load_config(os.path.join(REPO, "configs", "all.py:runlocal,align=anatomy"))
    assert local.model.width < plain.model.width
    assert tuple(local.data.teacher_features.teachers) == ("anatomy",)
    tuned = load_config(os.path.join(REPO, "configs", "all.py:runlocal,finetune=m.pth"))
    assert tuned.init.official_checkpoint == "m.pth"
    bag = load_config(os.path.join(REPO, "configs", "all.py:teachers=/features"))
    assert bag.data.teacher_features.dir == "/features"
