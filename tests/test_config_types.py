"""A run's ``config.json`` is checked against the experiment config's keys and types when
it is read (``config_types.check_run_config``, called by ``config_files.json_config``),
and the applications' ``--set KEY=VALUE`` values are read as their key's type
(``config_types.override_value`` through ``config_overrides.apply_overrides``).

Before, a config.json with a key missing failed later with an ``AttributeError`` traceback
(at worst after the whole embedding pass), a value of the wrong type as ``int('many')``
naming no key, and a misspelt key was accepted; an override ml_collections refused ended in
its ``TypeError`` traceback, ``perturb.steps=two`` named no key and ``perturb.steps=2.7``
became 2."""

import glob
import json
import os
import re

import pytest

from mami_jax.config_overrides import apply_overrides
from mami_jax.config import base_config
from mami_jax.config_files import REPO_ROOT, load_config, run_config_path
from mami_jax.config_types import FREE_FORM_TABLES, Kind, describe, fits, override_value
from mami_jax.train.run_config import write_run_config

#: Every experiment config of configs/ with every word it knows (configs/all.py: alone and
#: combined as its docstring shows them).
EXPERIMENT_SPECS = [
    "configs/all.py", "configs/all.py:runlocal", "configs/all.py:runlocal,align",
    "configs/all.py:runlocal,align=anatomy", "configs/all.py:teachers=/features",
    "configs/all.py:runlocal,teachers=/features", "configs/all.py:finetune=/m.pth",
    "configs/all.py:runlocal,finetune=/m.pth", "configs/all.py:runlocal,align,finetune=/m.pth",
] + [f"configs/{m}.py{arg}" for m in ("xray", "ct", "fundus", "mri", "pathology")
     for arg in ("", ":runlocal")]


def test_every_experiment_config_and_word_is_listed():
    """A new experiment file (one built on base_config) or word of configs/all.py must be
    added to EXPERIMENT_SPECS, so that its written config.json is read back here."""
    experiment_files = {
        os.path.relpath(p, REPO_ROOT) for p in glob.glob(os.path.join(REPO_ROOT, "configs", "*.py"))
        if re.search(r"=\s*base_config\(\)", open(p).read())}
    assert experiment_files == {s.partition(":")[0] for s in EXPERIMENT_SPECS}
    from configs import all as all_config
    words = {w.partition("=")[0] for s in EXPERIMENT_SPECS for w in s.partition(":")[2].split(",")}
    assert set(all_config.WORDS) <= words


@pytest.mark.parametrize("spec", EXPERIMENT_SPECS)
def test_every_shipped_configs_written_config_is_read_back(tmp_path, spec):
    config = load_config(spec)
    write_run_config(str(tmp_path), config)
    assert load_config(run_config_path(str(tmp_path))).to_dict() == config.to_dict()


def test_the_free_form_tables_are_blocks_of_the_base_config():
    """A table renamed in base_config without FREE_FORM_TABLES would refuse its names."""
    base = base_config()
    for path in FREE_FORM_TABLES:
        node = base
        for part in path.split("."):
            node = node[part]
        assert hasattr(node, "keys"), path


def _written(tmp_path, change):
    """``configs/all.py:runlocal``'s config.json with ``change(values)`` applied; its path."""
    values = json.loads(load_config("configs/all.py:runlocal").to_json())
    change(values)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(values))
    return str(path)


def _refusal(path):
    with pytest.raises(ValueError) as e:
        load_config(path)
    prefix = (f"config file '{path}' does not have the experiment config's keys and types "
              "(mami_jax/config.py): ")
    assert str(e.value).startswith(prefix), str(e.value)
    return str(e.value)[len(prefix):]


def _only_seed(values):
    for key in list(values):
        if key != "seed":
            del values[key]


def test_missing_keys_take_their_defaults_with_one_warning(tmp_path, capsys):
    """A run written before a key existed lacks it: the key takes the experiment config's
    default, and one warning line names what was filled in."""
    path = _written(tmp_path, lambda v: v["eval"].pop("num_negatives"))
    cfg = load_config(path)
    assert cfg.eval.num_negatives == base_config().eval.num_negatives
    runlocal = load_config("configs/all.py:runlocal").to_dict()
    runlocal["eval"]["num_negatives"] = cfg.eval.num_negatives
    assert cfg.to_dict() == runlocal
    assert capsys.readouterr().err.splitlines() == [
        f"warning: config file '{path}' has no eval.num_negatives (written before they "
        "existed?): their defaults (mami_jax/config.py) are used"]
    path = _written(tmp_path, lambda v: v["data"]["modalities"].pop("ct"))
    assert load_config(path).data.modalities.ct.to_dict() == (
        base_config().data.modalities.ct.to_dict())
    load_config(_written(tmp_path, _only_seed))
    assert capsys.readouterr().err.splitlines()[-1].startswith(
        "warning: config file '" + path + "' has no compilation_cache_dir, data, eval, init, "
        "loss, ... (11 in all) (written before")


def test_unknown_keys_are_named_with_their_new_place(tmp_path):
    def change(values):
        values["bogus_key"] = 1
        values["model"]["widht"] = 64
        values["data"]["eval_batch_size"] = 64
    assert _refusal(_written(tmp_path, change)) == (
        "unknown keys: bogus_key, data.eval_batch_size (renamed: use eval.batch_size), "
        "model.widht")


def _set(path, value):
    def change(values):
        *parents, last = path.split(".")
        node = values
        for part in parents:
            node = node[part]
        node[last] = value
    return change


@pytest.mark.parametrize("key, value, named", [
    ("eval.batch_size", "many", 'eval.batch_size="many" (expects an integer)'),
    ("eval.batch_size", 64.0, "eval.batch_size=64.0 (expects an integer)"),
    ("eval.batch_size", True, "eval.batch_size=true (expects an integer)"),
    ("eval.verification", 1, "eval.verification=1 (expects true or false)"),
    ("eval.metric", 1, "eval.metric=1 (expects a string)"),
    ("eval.ks", 5, "eval.ks=5 (expects a list of integers)"),
    ("eval.ks", ["1"], 'eval.ks=["1"] (expects a list of integers)'),
    ("data.only_modalities", [1], "data.only_modalities=[1] (expects a list of strings)"),
    ("partition_rules", [".*"], 'partition_rules=[".*"] (expects a list of lists)'),
    ("optim.learning_rate", "fast", 'optim.learning_rate="fast" (expects a number)'),
    ("optim.learning_rate", None, "optim.learning_rate=null (expects a number)"),
    ("data.modalities.ct.source_weight", "heavy",
     'data.modalities.ct.source_weight="heavy" (expects a number or null)'),
    ("model", 1, "model=1 (expects an object)"),
    ("loss.terms", 1.0, "loss.terms=1.0 (expects an object of numbers)"),
    ("loss.terms.align", "x", 'loss.terms.align="x" (expects a number)'),
    ("data.teacher_features.dims", {"anatomy": 12.5},
     "data.teacher_features.dims.anatomy=12.5 (expects an integer)"),
    ("eval.metric", ["x" * 50], 'eval.metric=["' + "x" * 35 + '... (expects a string)'),
])
def test_a_value_of_the_wrong_type_is_named_with_the_type_its_key_takes(tmp_path, key, value,
                                                                         named):
    assert _refusal(_written(tmp_path, _set(key, value))) == f"wrong type: {named}"


def test_each_kind_of_fault_is_listed_in_one_message(tmp_path):
    def change(values):
        del values["seed"]
        values["bogus"] = 1
        values["eval"]["batch_size"] = "many"
    assert _refusal(_written(tmp_path, change)) == (
        'unknown key: bogus; wrong type: eval.batch_size="many" (expects an integer)')


@pytest.mark.parametrize("key, value", [
    ("optim.learning_rate", 1),                      # an int is a number
    ("data.modalities.ct.source_weight", None),      # a placeholder takes null
    ("data.modalities.ct.source_weight", 2),
    ("loss.terms", {"triplet": 1}),                  # a table holds any names
    ("data.source_weights", {"nih_chestxray14:xray": 0.5}),
    ("data.split_fractions", {"train": 0.8, "test": 0.2}),
    ("optim.lr_multipliers", {"model": 0.5}),
    ("data.teacher_features.dims", {"anatomy": 12}),
    ("optim.freeze", ["^mami/block_0/"]),
    ("partition_rules", [[".*", []]]),
])
def test_what_configs_vary_is_accepted(tmp_path, key, value):
    node = load_config(_written(tmp_path, _set(key, value)))
    for part in key.split("."):
        node = node[part]
    assert json.loads(json.dumps(node.to_dict() if hasattr(node, "to_dict") else node)) == value


def test_an_exported_models_carried_config_is_checked_too(tmp_path):
    """The config a model file exported from a run carries is read by the same check."""
    from mami_jax.config_files import json_config
    with pytest.raises(ValueError, match="^the experiment config in m.pth does not have the "
                       r"experiment config's keys and types \(mami_jax/config.py\): "
                       "unknown key: bogus$"):
        json_config(json.dumps(dict(json.loads(base_config().to_json()), bogus=1)),
                    "the experiment config in m.pth")


def test_kinds_follow_the_reference_values():
    assert fits(1, Kind(float)) and not fits(True, Kind(float)) and not fits(1.5, Kind(int))
    assert not fits(1, Kind(bool)) and fits(None, Kind(float, nullable=True))
    assert describe(Kind(tuple, item=str), python=True) == "a list of strings"
    assert describe(Kind(bool), python=True) == "True or False"
    assert describe(Kind(float, nullable=True), python=True) == "a number or None"


# --set KEY=VALUE of the applications (config_overrides.apply_overrides).

def _privacy(*items):
    cfg = load_config("configs/privacy.py")
    apply_overrides(cfg, list(items))
    return cfg


@pytest.mark.parametrize("item, key, value", [
    ("perturb.steps=3", "perturb.steps", 3),
    ("perturb.epsilon=1", "perturb.epsilon", 1.0),          # an int for a float: a float
    ("perturb.epsilon=0.02", "perturb.epsilon", 0.02),
    ("every_slice=False", "every_slice", False),
    ("perturb.norm=2", "perturb.norm", "2"),                # a text key takes the text
    ("perturb.norm='linf'", "perturb.norm", "linf"),        # ... or a quoted one
    ("experiment=configs/all.py:runlocal", "experiment", "configs/all.py:runlocal"),
    ("perturb.ensemble=/tmp/nowhere", "perturb.ensemble", ("/tmp/nowhere",)),
    ("perturb.ensemble=RUN_A+RUN_B@1000", "perturb.ensemble", ("RUN_A", "RUN_B@1000")),
    ("perturb.ensemble=('A', 'B')", "perturb.ensemble", ("A", "B")),
    ("perturb.ensemble=['A']", "perturb.ensemble", ("A",)),
    ("perturb.ensemble=", "perturb.ensemble", ()),
    ("perturb.modality_epsilon={'ct': 0.02}", "perturb.modality_epsilon", {"ct": 0.02}),
    ("perturb.modality_ensemble={'xray': 'A+B'}", "perturb.modality_ensemble", {"xray": "A+B"}),
    ("perturb.modality_objective={}", "perturb.modality_objective", {}),
])
def test_an_override_takes_its_keys_type(item, key, value):
    node = _privacy(item)
    for part in key.split("."):
        node = node[part]
    got = node.to_dict() if hasattr(node, "to_dict") else node
    assert got == value and type(got) is type(value)


@pytest.mark.parametrize("item, message", [
    ("perturb.steps=2.7", "perturb.steps takes an integer"),
    ("perturb.steps=two", "perturb.steps takes an integer"),
    ("perturb.steps=True", "perturb.steps takes an integer"),
    ("perturb.epsilon=small", "perturb.epsilon takes a number"),
    ("every_slice=0", "every_slice takes True or False"),
    ("perturb.ensemble=(1, 2)", "perturb.ensemble takes a list of strings: ('A', 'B') or A+B"),
    ("perturb.modality_epsilon=0.02",
     "perturb.modality_epsilon takes a dict, written {'KEY': VALUE, ...}"),
    ("perturb.modality_ensemble=A+B",
     "perturb.modality_ensemble takes a dict, written {'KEY': VALUE, ...}"),
    ("perturb.nope=1", "no config key 'perturb.nope'"),
    ("perturb.steps.x=1", "no config key 'perturb.steps.x'"),
    ("perturb.steps", "expected KEY=VALUE"),
])
def test_an_override_of_another_type_is_refused_naming_it(item, message):
    with pytest.raises(ValueError) as e:
        _privacy(item)
    assert str(e.value) == f"override {item!r}: {message}"


def test_override_value_reads_a_placeholder_as_its_declared_type():
    assert override_value("0.5", None, float) == 0.5
    assert override_value("None", None, float) is None
    with pytest.raises(ValueError, match="^a number or None$"):
        override_value("heavy", None, float)


def test_an_override_of_a_moved_key_names_its_new_place():
    """The benchmarks' --set on an experiment config names a renamed key's new place; the
    same key under another config (no ``moved``) is only unknown."""
    from mami_jax.config_renames import renamed_key_message
    cfg = load_config("configs/fundus.py:runlocal")
    apply_overrides(cfg, ["loss.terms.id=0.5", "optim.learning_rate=1"], moved=renamed_key_message)
    assert cfg.loss.terms.id == 0.5 and cfg.optim.learning_rate == 1.0
    with pytest.raises(ValueError) as e:
        apply_overrides(cfg, ["loss.id_weight=1"], moved=renamed_key_message)
    assert str(e.value) == ("override 'loss.id_weight=1': config key loss.id_weight was "
                            "renamed: use loss.terms.id")
    with pytest.raises(ValueError, match="no config key 'loss.id_weight'$"):
        apply_overrides(cfg, ["loss.id_weight=1"])
