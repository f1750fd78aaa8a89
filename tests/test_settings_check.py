"""A training run's numeric settings out of range are one error naming the key, before the
workdir is made; every shipped config passes."""

from __future__ import annotations

import glob
import os

import pytest

from mami_jax.config_files import load_config
from mami_jax.train.settings_check import check_training_settings

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config():
    return load_config(os.path.join(REPO, "configs", "all.py") + ":runlocal")


def _set(config, key: str, value) -> None:
    """Sets the dotted ``key`` of ``config`` to ``value``."""
    *blocks, name = key.split(".")
    block = config
    for part in blocks:
        block = block[part]
    with config.unlocked():
        block[name] = value


@pytest.mark.parametrize("key, value, message", [
    ("optim.learning_rate", -1.0, "optim.learning_rate=-1.0: expected a number > 0"),
    ("optim.learning_rate", float("nan"), "optim.learning_rate=nan: expected a number > 0"),
    ("optim.b2", 1.0, "optim.b2=1.0: expected a number in [0, 1)"),
    ("optim.weight_decay", -0.1, "optim.weight_decay=-0.1: expected a number >= 0"),
    ("optim.grad_clip_norm", float("inf"),
     "optim.grad_clip_norm=inf: expected a number >= 0 (0: no clipping)"),
    ("optim.warmup_steps", -5, "optim.warmup_steps=-5: expected a whole number >= 0"),
    ("optim.grad_accum_steps", 0, "optim.grad_accum_steps=0: expected a whole number >= 1"),
    ("loss.label_smoothing", 1.5, "loss.label_smoothing=1.5: expected a number in [0, 1)"),
    ("eval.far", 2.0, "eval.far=2.0: expected a false-accept rate in (0, 1)"),
    ("eval.ks", (0,), "eval.ks=(0,): expected distinct ranks >= 1, e.g. (1, 5, 10)"),
    ("eval.ks", (1, 1), "eval.ks=(1, 1): expected distinct ranks >= 1, e.g. (1, 5, 10)"),
    ("eval.protocols", ("foo",),
     "eval.protocols=('foo',): expected one or both of 'reid', 'history'"),
    ("eval.protocols", (), "eval.protocols=(): expected one or both of 'reid', 'history'"),
    ("eval.metric", "cos", "eval.metric='cos': expected one of 'cosine', 'euclidean'"),
    ("train.total_steps", -1, "train.total_steps=-1: expected a whole number >= 0"),
    ("train.num_epochs", -2, "train.num_epochs=-2: expected a whole number >= 0"),
    ("train.eval_every", -1, "train.eval_every=-1: expected a whole number >= 0 (0: only at "
                             "the start and the end)"),
    ("train.checkpoint_every", 0, "train.checkpoint_every=0: expected a whole number >= 1"),
    ("train.log_every", 0, "train.log_every=0: expected a whole number >= 1"),
    ("train.keep_checkpoints", 0, "train.keep_checkpoints=0: expected a whole number >= 1"),
    ("eval.num_negatives", 0, "eval.num_negatives=0: expected a whole number >= 1"),
    # Read only after the phantoms (and for some the run's config) were written, or never:
    ("optim.schedule", "linear", "optim.schedule='linear': expected one of 'cosine', "
                                 "'constant'"),
    ("data.normalization", "zscore", "data.normalization='zscore': expected one of "
                                     "('imagenet', 'per_image')"),
    ("data.identity_classes", "study", "data.identity_classes='study': expected one of "
                                       "'patient', 'patient_modality'"),
    ("data.jpeg_min_short_side", -5, "data.jpeg_min_short_side=-5: expected a whole number of "
                                     "pixels >= 0 (0: full resolution)"),
    ("data.decode_cache_mb", -1, "data.decode_cache_mb=-1: expected a number of MiB >= 0 "
                                 "(0: no cache)"),
    ("data.num_workers", -1, "data.num_workers=-1: expected a whole number >= 0 (0: decode in "
                             "the main process)"),
    ("data.read_threads", 0, "data.read_threads=0: expected a whole number >= 1"),
    ("loss.id_neck", "bn", "loss.id_neck='bn': expected one of 'none', 'batch_standardize'"),
    ("loss.adversarial_rms", -0.5, "loss.adversarial_rms=-0.5: expected a number >= 0 (0: off)"),
    ("loss.align.variant", "pairs", "loss.align.variant='pairs': expected one of "
                                    "'difference', 'single'"),
    ("loss.align.temperature", 0.0, "loss.align.temperature=0.0: expected a number > 0"),
    ("phantoms.visits", 1, "phantoms.visits=1: expected a whole number >= 2 (one visit a "
                           "patient leaves nothing to match)"),
    ("loss.align.mlp_hidden", -1, "loss.align.mlp_hidden=-1: expected a whole number >= 0 "
                                  "(0: the model width)"),
    # Trained the opposite objective (a patient's images pushed apart) and ended well:
    ("loss.terms.triplet", -1.0, "loss.terms.triplet=-1.0: expected a weight >= 0 (0: the "
                                 "term is off; a negative weight maximises it)"),
    # Read only when a manifest lacks splits (the phantoms have theirs), else never:
    ("data.split_fractions.train", -0.3, "data.split_fractions: split fraction train=-0.3 "
                                         "is negative"),
    ("data.split_fractions.val", 0.5, "data.split_fractions: split fractions {'test': 0.2, "
                                      "'train': 0.7, 'val': 0.5} sum to 1.4, expected 1"),
    # Refused by the sampler without naming the key, the workdir made (and left empty):
    ("seed", -1, "seed=-1: expected a whole number >= 0 (below 2**63)"),
    ("seed", 2**63, "seed=9223372036854775808: expected a whole number >= 0 (below 2**63)"),
])
def test_a_setting_out_of_range_names_its_key(key, value, message):
    config = _config()
    _set(config, key, value)
    with pytest.raises(ValueError) as e:
        check_training_settings(config)
    assert str(e.value) == message


def test_an_objective_of_only_zero_weights_is_refused():
    """Every weight 0 trained on zero gradients (the weights only decayed) and ended well."""
    config = _config()
    with config.unlocked():
        config.loss.terms = {name: 0.0 for name in config.loss.terms}
    with pytest.raises(ValueError, match=r"^loss.terms=\{.*\}: every weight is 0"):
        check_training_settings(config)


def test_a_run_of_no_steps_is_refused():
    config = _config()
    with config.unlocked():
        config.train.total_steps, config.train.num_epochs = 0, 0
    with pytest.raises(ValueError, match=r"^train.total_steps=0 and train.num_epochs=0: "
                                         r"nothing to train; set one of them"):
        check_training_settings(config)


def test_a_multiplier_of_a_group_is_checked_too():
    config = _config()
    with config.unlocked():
        config.optim.lr_multipliers["classifier"] = -10.0
    with pytest.raises(ValueError, match=r"^optim.lr_multipliers.classifier=-10.0: expected a "
                                         r"number >= 0$"):
        check_training_settings(config)


def test_a_freeze_pattern_that_is_no_regular_expression_names_its_key():
    """Was a re.error traceback at the model build."""
    config = _config()
    with config.unlocked():
        config.optim.freeze = ("mami/(",)
    with pytest.raises(ValueError, match=r"^optim.freeze: 'mami/\(' is not a regular "
                                         r"expression: missing \), unterminated subpattern"):
        check_training_settings(config)


def test_partition_rules_naming_no_axis_of_the_mesh_or_no_pattern_are_refused():
    """A rule naming an axis the mesh lacks was a KeyError traceback when the state was
    placed, after the phantoms and the training-batch picture were written."""
    from mami_jax.runtime import sharding
    mesh = sharding.make_mesh()
    sharding.check_partition_rules(((".*/qkv/kernel$", (None, "model")), (".*", ())), mesh)
    with pytest.raises(ValueError, match=r"^partition_rules: rule '\.\*/qkv/kernel\$' names "
                                         r"mesh axis 'tensor'; the mesh's axes are "
                                         r"\['data', 'model'\]"):
        sharding.check_partition_rules(((".*/qkv/kernel$", (None, "tensor")),), mesh)
    with pytest.raises(ValueError, match=r"^partition_rules: '\[' is not a regular expression"):
        sharding.check_partition_rules((("[", ()),), mesh)


def test_a_model_group_across_processes_is_found():
    """Each process feeds its own share of the batch over the data axis: a model group of
    devices of two processes trained on half the batch (loss 3.1807 for 3.3183)."""
    from types import SimpleNamespace
    from mami_jax.runtime.sharding import model_groups_span_processes
    def grid(owners):
        return [[SimpleNamespace(process_index=p) for p in row] for row in owners]
    assert model_groups_span_processes(grid([[0, 0], [1, 1]])) is None
    assert model_groups_span_processes(grid([[0], [1]])) is None
    assert model_groups_span_processes(grid([[0, 1]])) == [0, 1]
    # eval and embed refuse it too (they crashed fingerprinting the parameters)
    import numpy as np
    from mami_jax.runtime.sharding import refuse_model_groups_across_processes
    mesh = SimpleNamespace(devices=np.asarray(grid([[0, 1]]), dtype=object),
                           shape={"data": 1, "model": 2})
    with pytest.raises(ValueError, match=r"^mesh.model=2: a model-axis group spans processes "
                                         r"\[0, 1\]"):
        refuse_model_groups_across_processes(mesh)


EXPERIMENTS = ["all.py", "all.py:runlocal", "all.py:runlocal,align", "all.py:runlocal,finetune=x.pth",
               "ct.py", "fundus.py", "mri.py", "pathology.py", "xray.py"]


@pytest.mark.parametrize("spec", EXPERIMENTS)
def test_every_shipped_experiment_config_passes(spec):
    check_training_settings(load_config(os.path.join(REPO, "configs", spec)))


def test_the_list_holds_every_experiment_config():
    names = {os.path.basename(p) for p in glob.glob(os.path.join(REPO, "configs", "*.py"))}
    apps_and_shared = {"history.py", "privacy.py", "common_runlocal.py"}
    assert names - apps_and_shared == {spec.split(":")[0] for spec in EXPERIMENTS}


def test_batches_that_do_not_split_over_the_data_axis_are_refused_before_the_workdir(tmp_path):
    """The tests run on 8 CPU devices (tests/conftest.py). An evaluation batch of 12 was
    refused at the first evaluation: after every step when that was the final one."""
    from mami_jax.train.trainer import train_and_evaluate
    from tests.history_workdir import write_xray_archive
    config = _config()
    with config.unlocked():
        config.data.manifest = write_xray_archive(
            str(tmp_path / "xr"), {"P0": "train", "P1": "train", "P2": "test", "P3": "test"})
        config.train.eval_at_start, config.train.total_steps = False, 1
        config.eval.batch_size = 12
    workdir = tmp_path / "run"
    with pytest.raises(ValueError) as e:
        train_and_evaluate(config, str(workdir))
    assert str(e.value) == "eval.batch_size=12 is not divisible by the 8 devices of the data axis"
    with config.unlocked():
        config.eval.batch_size = 16
        config.data.patients_per_batch, config.data.images_per_patient = 3, 2
    with pytest.raises(ValueError) as e:
        train_and_evaluate(config, str(workdir))
    assert str(e.value) == ("global batch data.patients_per_batch x data.images_per_patient = "
                            "3 x 2 = 6 is not divisible by the 8 devices of the data axis")
    assert not workdir.exists()


def _init_config(tmp_path, **init):
    config = _config()
    with config.unlocked():
        config.init.update(init)
    return config


def test_the_pretrained_weights_of_a_new_run_must_exist(tmp_path):
    """They were looked for only after the data was read and the workdir had checkpoints/
    and training_batches.png; a resumed run reads its checkpoint, not them."""
    new, resumed = str(tmp_path / "new"), str(tmp_path / "resumed")
    os.makedirs(os.path.join(resumed, "checkpoints", "2"))
    official = str(tmp_path / "mami.pth")
    config = _init_config(tmp_path, official_checkpoint=official)
    with pytest.raises(FileNotFoundError) as e:
        check_training_settings(config, new)
    assert str(e.value) == (f"init.official_checkpoint={official!r}: no such file (the "
                            "released .pth a new run is initialised from)")
    check_training_settings(config, resumed)
    check_training_settings(config)                 # no workdir: the settings alone
    clip = str(tmp_path / "ViT-B-16.pt")
    config = _init_config(tmp_path, clip_checkpoint=clip, require_pretrained=True)
    with pytest.raises(FileNotFoundError, match=rf"^init.clip_checkpoint='{clip}': no such "
                                                r"file or folder\. CLIP ViT-B/16 weights are"):
        check_training_settings(config, new)
    config = _init_config(tmp_path, clip_checkpoint="", require_pretrained=True)
    with pytest.raises(FileNotFoundError, match=r"^init.clip_checkpoint is not set\. CLIP"):
        check_training_settings(config, new)
    check_training_settings(config, resumed)
    open(clip, "w").close()
    check_training_settings(_init_config(tmp_path, clip_checkpoint=clip,
                                         require_pretrained=True), new)
    check_training_settings(_init_config(tmp_path, clip_checkpoint=str(tmp_path / "none"),
                                         require_pretrained=False), new)   # random init
    open(official, "w").close()
    check_training_settings(_init_config(tmp_path, official_checkpoint=official), new)


@pytest.mark.parametrize("key, value, message", [
    ("seed", -1, r"^seed=-1: expected a whole number >= 0"),
    ("loss.terms.triplet", -1.0, r"^loss.terms.triplet=-1.0: expected a weight >= 0"),
    ("init.official_checkpoint", "/nowhere/mami.pth",
     r"^init.official_checkpoint='/nowhere/mami.pth': no such file"),
])
def test_the_refusals_come_before_the_workdir_is_made(tmp_path, key, value, message):
    """(The manifest is missing too: a run that got past the check would stop there.)"""
    from mami_jax.train.trainer import train_and_evaluate
    config = _config()
    _set(config, key, value)
    with config.unlocked():
        config.data.manifest = str(tmp_path / "missing.csv")
    workdir = tmp_path / "run"
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        train_and_evaluate(config, str(workdir))
    assert not workdir.exists()


def test_a_partition_rule_that_does_not_divide_a_parameter_stops_before_the_workdir(tmp_path):
    """Found after the data was read and the workdir got its lock and training_batches.png
    (without a manifest, after the phantoms were generated)."""
    from mami_jax.train.trainer import train_and_evaluate
    config = _config()
    with config.unlocked():
        config.mesh.data, config.mesh.model = 1, 8
        config.model.width, config.model.num_heads, config.model.num_codes = 36, 4, 4
        config.model.qkv_groups, config.model.mlp_groups = 4, 4
        config.data.manifest = str(tmp_path / "missing.csv")
    workdir = tmp_path / "run"
    with pytest.raises(ValueError, match=r"^partition rule '.*/attn/out/kernel\$': "
                                         r"params/mami/block_0/attn/out/kernel dimension 36"):
        train_and_evaluate(config, str(workdir))
    assert not workdir.exists()
