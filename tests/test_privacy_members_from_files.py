"""Models that were never runs of ours (``Embedder.load``, which ensemble members and every
privacy command's model arguments go through): a released or exported ``.pth`` file and a
converter folder load as the same model as the workdir they came from (the public weights
an attacker may fine-tune from can be a member as they are); a model of another config,
a checkpoint step that is not there and a path that is none of these are refused, naming
what is wrong."""

import os

import jax
import ml_collections
import numpy as np
import pytest

from mami_jax.apps.privacy import ensemble
from mami_jax.config_files import load_config
from mami_jax.convert.checkpoint_dir import load_params, save_params
from mami_jax.inference import Embedder
from tests.history_workdir import make_workdir, write_config


def _leaves(member):
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(member.params)]


def test_a_file_or_converter_folder_is_the_same_member_as_its_workdir(tmp_path):
    pytest.importorskip("torch")
    from mami_jax.convert.official import export_official
    config = load_config(write_config(str(tmp_path)))
    workdir = make_workdir(str(tmp_path / "run"), config, seed=5)
    params, cfg = load_params(workdir)
    pth = str(tmp_path / "public.pth")
    export_official(pth, params, cfg, allow_non_released_shift=True)
    folder = save_params(str(tmp_path / "imported"), params, cfg)

    members = [ensemble.load_member(n, config) for n in (workdir, pth, folder)]
    images = np.random.default_rng(0).uniform(0, 1, (2, 1, 32, 32, 3)).astype(np.float32)
    reference = np.asarray(members[0].embed(members[0].params, images))
    assert np.linalg.norm(reference, axis=-1) == pytest.approx(1.0, abs=1e-5)
    placed = [x.sharding for x in jax.tree_util.tree_leaves(members[0].params)]
    for other in members[1:]:
        for a, b in zip(_leaves(members[0]), _leaves(other)):
            np.testing.assert_array_equal(a, b)
        # on the experiment's mesh as the workdir's: otherwise XLA may compile the same
        # model for other placements and write images that differ in the last bits
        assert [x.sharding for x in jax.tree_util.tree_leaves(other.params)] == placed
        np.testing.assert_allclose(np.asarray(other.embed(other.params, images)), reference,
                                   atol=1e-6)
    # a trainer workdir keeps its own path (WORKDIR@STEP still works beside files)
    at_step = ensemble.load_member(f"{workdir}@1", config)
    for a, b in zip(_leaves(members[0]), _leaves(at_step)):
        np.testing.assert_array_equal(a, b)


def test_a_member_of_another_config_or_nothing_is_refused(tmp_path):
    config = load_config(write_config(str(tmp_path)))
    workdir = make_workdir(str(tmp_path / "run"), config, seed=5)
    params, cfg = load_params(workdir)
    wider = ml_collections.ConfigDict(cfg.to_dict())
    wider.num_codes = cfg.num_codes * 2
    folder = save_params(str(tmp_path / "other"), params, wider)
    with pytest.raises(ValueError, match="num_codes"):
        ensemble.load_member(folder, config)
    missing = str(tmp_path / "nowhere.pth")
    with pytest.raises(FileNotFoundError, match="ensemble member .*no re-ID workdir, model file"):
        ensemble.load_member(missing, config)
    assert not os.path.exists(missing)
    # the same names, given to a command's own argument, are refused naming it
    with pytest.raises(FileNotFoundError, match=r"--held-out m1 '.*nowhere.pth': no re-ID"):
        Embedder.load(missing, config, role="--held-out m1")
    with pytest.raises(FileNotFoundError, match=r"checkpoints/7: no checkpoint of step 7"):
        Embedder.load(f"{workdir}@7", config)
    with pytest.raises(ValueError, match="STEP of WORKDIR@STEP must be a number"):
        Embedder.load(f"{workdir}@last", config)
