"""Keys that may be None, on ``main``'s command line and in a run's config.json.

A run's config.json read back was a ConfigDict of JSON's types: a placeholder stored as
null (``data.modalities.<m>.value_window``, ``source_weight``) became a key of type None,
whose override ml_collections refused ("Type NoneType ... not supported for overriding"),
though docs/running.md shows ``--config=RUN/config.json`` taking overrides; a float stored
as a whole number (a hand edit, ``"learning_rate": 1``) became an int key that refused
0.0005. And ``--config.KEY=None`` was read by the key's type: ``value_window`` became
``(None,)``, refused with a message offering "or None", and ``source_weight=None`` could
not be made a float.
"""

import json
import os
import subprocess
import sys

import pytest
from absl import flags
from ml_collections import config_flags

from mami_jax.config_files import JSON_CONFIG_FILE, load_config
from mami_jax.flag_parsing import may_be_none, none_overrides
from mami_jax.train.run_config import write_run_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def stored(tmp_path):
    """A run's config.json of ``configs/all.py:runlocal`` with the X-ray source weight
    unset (null, as its CT window is), and one hand-edited to an integer learning rate."""
    config = load_config("configs/all.py:runlocal")
    config.data.modalities.xray.source_weight = None
    write_run_config(str(tmp_path), config)
    path = tmp_path / "config.json"
    values = json.loads(path.read_text())
    assert values["data"]["modalities"]["ct"]["value_window"] is None
    assert values["data"]["modalities"]["xray"]["source_weight"] is None
    values["optim"]["learning_rate"] = 1
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps(values))
    return str(path), str(edited)


def absl_config(config: str, *overrides: str):
    """The config of ``--config=CONFIG OVERRIDES...`` as ml_collections' flag parses it (a
    JSON file through the package's loader, as ``main`` gives it)."""
    argv = ["main", f"--config={config}", *overrides]
    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, flag_values=values, sys_argv=argv)
    values(argv)
    return values.config


def test_a_stored_config_keeps_the_types_of_its_keys(stored):
    own, edited = stored
    cfg = load_config(own)
    assert cfg.data.modalities.ct.get_type("value_window") is tuple
    assert cfg.data.modalities.xray.get_type("source_weight") is float
    assert may_be_none(cfg, "data.modalities.ct.value_window")
    cfg = load_config(edited)
    assert cfg.optim.learning_rate == 1.0 and isinstance(cfg.optim.learning_rate, float)


def test_overrides_of_a_stored_config_read_as_on_the_config_file(stored):
    own, edited = stored
    cfg = absl_config(f"{JSON_CONFIG_FILE}:{own}",
                      "--config.data.modalities.ct.value_window=(-1000, 1000)",
                      "--config.data.modalities.xray.source_weight=0.5")
    assert cfg.data.modalities.ct.value_window == (-1000, 1000)
    assert cfg.data.modalities.xray.source_weight == 0.5
    cfg = absl_config(f"{JSON_CONFIG_FILE}:{edited}", "--config.optim.learning_rate=0.0005")
    assert cfg.optim.learning_rate == 0.0005


def test_a_stored_config_with_an_unknown_key_is_still_refused(stored, tmp_path):
    own, _ = stored
    values = json.loads(open(own).read())
    values["optim"]["learnig_rate"] = 0.1
    values["loss"]["terms"]["align"] = 0.01           # a table may name any term
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(values))
    with pytest.raises(ValueError, match=r"unknown key: optim\.learnig_rate$"):
        load_config(str(bad))
    del values["optim"]["learnig_rate"]
    bad.write_text(json.dumps(values))
    assert load_config(str(bad)).loss.terms.to_dict() == {"id": 1.0, "triplet": 1.0,
                                                          "align": 0.01}


def test_none_overrides_are_taken_out_for_keys_that_may_be_none():
    spec = os.path.join(REPO, "configs", "all.py") + ":runlocal"
    argv = ["--workdir=w", "--config.data.modalities.ct.value_window=None",
            "--config.data.modalities.xray.source_weight", "None",
            "--config.optim.learning_rate=None",              # a number: absl names it
            "--config.data.modalities.mri.value_window=None",  # not the last: absl's
            "--config.data.modalities.mri.value_window=(0, 1)"]
    kept, keys = none_overrides(argv, spec)
    assert keys == ["data.modalities.ct.value_window", "data.modalities.xray.source_weight"]
    assert kept == ["--workdir=w", "--config.optim.learning_rate=None",
                    "--config.data.modalities.mri.value_window=None",
                    "--config.data.modalities.mri.value_window=(0, 1)"]
    assert none_overrides(["--config.seed=3"], spec) == (["--config.seed=3"], [])


#: What ``main`` parses, printed: its flags, argv rewritten as its ``__main__`` does.
SHOW = """
import sys
from absl import flags
import mami_jax.main
from mami_jax import config_files, flag_parsing
argv = ["main", "--workdir=unused"] + config_files.flag_config_from_anywhere(sys.argv[1:])
sys.argv = argv
flag_parsing.parse_flags(argv)
c = flags.FLAGS.config
print(repr(c.data.modalities.ct.value_window), repr(c.data.modalities.xray.source_weight),
      repr(c.optim.learning_rate))
"""


def _show(*args):
    return subprocess.run([sys.executable, "-c", SHOW, *args], cwd=REPO, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.parametrize("config", ["configs/all.py:runlocal", "STORED"])
def test_main_sets_none_where_a_key_may_be_none(stored, config):
    """On a config file and on a run's config.json; a window that is set is unset so."""
    config = stored[0] if config == "STORED" else config
    proc = _show(f"--config={config}", "--config.data.modalities.ct.value_window=(1, 2)",
                 "--config.data.modalities.xray.source_weight=0.5")
    assert proc.returncode == 0 and proc.stdout.split() == ["(1,", "2)", "0.5", "0.001"], (
        proc.stderr[-2000:])
    proc = _show(f"--config={config}", "--config.data.modalities.ct.value_window=(1, 2)",
                 "--config.data.modalities.ct.value_window=None",
                 "--config.data.modalities.xray.source_weight=None")
    assert proc.returncode == 0 and proc.stdout.split() == ["None", "None", "0.001"], (
        proc.stderr[-2000:])


def test_none_for_a_key_that_takes_a_number_is_still_a_flag_error():
    proc = _show("--config=configs/all.py:runlocal", "--config.optim.learning_rate=None")
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1] == (
        "error: flag --config.optim.learning_rate=None: could not convert string to float: "
        "'None'"), proc.stderr[-2000:]
