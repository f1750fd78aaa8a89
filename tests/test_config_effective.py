"""The re-laid configuration resolves to what the old one did (tests/config_dump.py).

``tests/fixtures/config_effective.json`` was dumped from the configuration before it
was re-laid (per-modality tuples and dicts, evaluation settings under data.*, the CPU
variant inside the base): for every configs/*.py with and without ``runlocal``, the
per-modality values the pipeline, sampler and evaluator use, the source weights, the
evaluation batch size and every other value; and for the quick start
(configs/all.py:runlocal) the sampler's first plans and one training and one
evaluation view per modality on small phantoms. The quick start's plans were dumped again
on 2026-12-07, when the sampler began giving a patient with fewer than K images each of
them once before drawing again (the digest's phantoms have 3 visits, K = 4; the quick
start's own have 4, and its batches did not change).

Data, evaluation and phantom values are compared whole. Of the model, optimiser and
training values, the runlocal variant must set exactly what it set before, to the
same values; the base defaults themselves belong to the paper's recipe and are not
pinned here.
"""

import json
import os

import pytest

from mami_jax.config_renames import RENAMED
from tests import config_dump

FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures",
                       "config_effective.json")
READ_BY_DATA_AND_EVAL = ("data.", "eval.", "phantoms.")   # and "seed"


@pytest.fixture(scope="module")
def expected():
    with open(FIXTURE) as f:
        return json.load(f)


def _dump(name, arg):
    return json.loads(json.dumps(config_dump.effective(config_dump.load_config(name, arg))))


def _data_and_eval(other):
    return {k: v for k, v in other.items() if k == "seed" or k.startswith(READ_BY_DATA_AND_EVAL)}


def _in_new_spelling(other):
    """The fixture's keys renamed one to one since it was dumped (config_renames.RENAMED)."""
    one_to_one = {old: new for old, new in RENAMED.items() if " " not in new and "<" not in new}
    return {one_to_one.get(k, k): v for k, v in other.items()}


@pytest.mark.parametrize("name", config_dump.CONFIG_FILES)
def test_every_config_resolves_as_before(expected, name):
    got = {arg: _dump(name, arg) for arg in config_dump.CONFIG_ARGS}
    want = {arg: expected[f"{name}.py:{arg}" if arg else f"{name}.py"] for arg in config_dump.CONFIG_ARGS}
    for arg in config_dump.CONFIG_ARGS:
        for key in ("modalities", "sampler_source_weights", "eval_batch_size", "only_modalities"):
            assert got[arg][key] == want[arg][key], (arg, key)
        assert _data_and_eval(got[arg]["other"]) == _data_and_eval(want[arg]["other"]), arg
    plain, local = "", "runlocal"
    want = {arg: dict(w, other=_in_new_spelling(w["other"])) for arg, w in want.items()}
    was_set = {k: v for k, v in want[local]["other"].items() if want[plain]["other"].get(k) != v}
    assert was_set and "model.width" in was_set
    assert {k: got[local]["other"].get(k, "<missing>") for k in was_set} == was_set
    now_set = {k for k, v in got[local]["other"].items() if got[plain]["other"].get(k) != v}
    assert now_set <= set(was_set), sorted(now_set - set(was_set))


def test_quick_start_samples_crops_and_transforms_as_before(expected, tmp_path):
    got = config_dump.quickstart_digest(config_dump.load_config("all", "runlocal"), str(tmp_path))
    got = json.loads(json.dumps(got))
    assert got["plans"] == expected["quickstart"]["plans"]
    assert _rounding_free(got["views"]) == _rounding_free(expected["quickstart"]["views"])


def _rounding_free(views: dict) -> dict:
    """The views' rows, shapes and means to 4 decimals, without the byte digests: numpy's
    vectorised math rounds differently on CPUs with and without AVX-512, so the phantom
    pixels (and the views' bytes) differ in the last bits between machines, while a
    changed crop, transform or sampled row moves the mean far more."""
    return {m: {"row": v["row"], **{k: [v[k][0], round(v[k][1], 4) + 0.0]
                                    for k in ("train", "eval")}}
            for m, v in views.items()}
