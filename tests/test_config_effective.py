"""The re-laid configuration resolves to what the old one did (tests/config_dump.py).

``tests/fixtures/config_effective.json`` was dumped from the configuration before it
was re-laid (per-modality tuples and dicts, evaluation settings under data.*, the CPU
variant inside the base): for every configs/*.py with and without ``runlocal``, the
per-modality values the pipeline, sampler and evaluator use, the source weights, the
evaluation batch size and every other value; and for the quick start
(configs/all.py:runlocal) the sampler's first plans and one training and one
evaluation view per modality on small phantoms.
"""

import json
import os

import pytest

from tests import config_dump

FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures",
                       "config_effective.json")


@pytest.fixture(scope="module")
def expected():
    with open(FIXTURE) as f:
        return json.load(f)


@pytest.mark.parametrize("name", config_dump.CONFIG_FILES)
@pytest.mark.parametrize("arg", config_dump.CONFIG_ARGS)
def test_every_config_resolves_as_before(expected, name, arg):
    got = json.loads(json.dumps(config_dump.effective(config_dump.load_config(name, arg))))
    want = expected[f"{name}.py:{arg}" if arg else f"{name}.py"]
    for key in ("modalities", "sampler_source_weights", "eval_batch_size", "only_modalities"):
        assert got[key] == want[key], key
    assert got["other"] == want["other"]


def test_quick_start_samples_crops_and_transforms_as_before(expected, tmp_path):
    got = config_dump.quickstart_digest(config_dump.load_config("all", "runlocal"), str(tmp_path))
    got = json.loads(json.dumps(got))
    assert got["plans"] == expected["quickstart"]["plans"]
    assert got["views"] == expected["quickstart"]["views"]
