"""A trainer checkpoint read with another model config is named as such, not as damaged.

orbax reports both a checkpoint of another model config (more blocks, other widths) and
a truly damaged one as restore errors; ``train/checkpointing.py`` tells them apart by the
item's metadata, so the user is told to use the run's own config rather than to delete a
good checkpoint. The checkpoints are tiny ``params``-only trainer steps.
"""

import os
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from mami_jax.train.checkpointing import Checkpointer, CheckpointError
from tests.test_convert_mapping import random_params
from tests.test_model import tiny_config

STEP = 7


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A trainer workdir whose step 7 holds the params of the tiny depth-2 config, as jax
    arrays like the trainer's (orbax restores numpy leaves as saved, whatever the target)."""
    workdir = str(tmp_path_factory.mktemp("other_config") / "run")
    manager = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"),
                                    item_names=("params",))
    manager.save(STEP, args=ocp.args.Composite(
        params=ocp.args.StandardSave(jax.tree_util.tree_map(jax.numpy.asarray,
                                                            random_params(tiny_config())))))
    manager.wait_until_finished()
    manager.close()
    return workdir


def _abstract(cfg):
    """ShapeDtypeStructs of ``cfg``'s params: what evaluation restores into."""
    return jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype),
                                  random_params(cfg))


def _restore_error(workdir, cfg) -> str:
    ckpt = Checkpointer(workdir, read_only=True)
    try:
        with pytest.raises(CheckpointError) as err:
            ckpt.restore_params(STEP, _abstract(cfg))
    finally:
        ckpt.close()
    return str(err.value)


def _copy(src, dst):
    shutil.copytree(src, dst)
    return str(dst)


def test_fewer_blocks_names_the_parameters_only_the_checkpoint_has(saved):
    step_dir = os.path.join(saved, "checkpoints", str(STEP))
    assert _restore_error(saved, tiny_config(depth=1)) == (
        f"checkpoint {step_dir} holds the parameters of another model config than the one "
        "given: 74 parameters of item 'params' differ in name or shape "
        "(block_1/adapter/conv_bias (8,) only in the checkpoint; "
        "block_1/adapter/conv_kernel (3, 8) only in the checkpoint; "
        "block_1/adapter/fc1/bias (8,) only in the checkpoint, ...). "
        "Use the model config the run was trained with")


def test_other_widths_name_both_shapes(saved):
    step_dir = os.path.join(saved, "checkpoints", str(STEP))
    # The same tree, other shapes: orbax's shape error, not a tree-structure one.
    assert _restore_error(saved, tiny_config(num_codes=2)) == (
        f"checkpoint {step_dir} holds the parameters of another model config than the one "
        "given: 3 parameters of item 'params' differ in name or shape "
        "(compa/codebook: (4, 8) in the checkpoint, (2, 16) in the given config's model; "
        "compa/router_fc2/bias: (4,) in the checkpoint, (2,) in the given config's model; "
        "compa/router_fc2/kernel: (32, 4) in the checkpoint, (32, 2) in the given "
        "config's model). Use the model config the run was trained with")


# orbax's concurrent reads of the cut data report to a closed event loop (see
# runtime/orbax_noise.py: quiet_failed_restore; the test below checks they are dropped).
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_damaged_items_are_still_damaged(saved, tmp_path):
    """Truncated data (read with the checkpoint's own config: its metadata, where readable,
    agrees) and unreadable metadata (whatever the config): damaged."""
    cut = _copy(saved, tmp_path / "cut")
    params_dir = os.path.join(cut, "checkpoints", str(STEP), "params")
    data = [os.path.join(here, name) for here, _, names in os.walk(params_dir)
            for name in names if os.path.basename(here) == "d"]
    assert data
    for path in data:
        os.truncate(path, os.path.getsize(path) // 2)
    step_dir = os.path.join(cut, "checkpoints", str(STEP))
    message = _restore_error(cut, tiny_config())
    assert message.startswith(f"checkpoint {step_dir} is damaged: item 'params' cannot be "
                              "read ("), message
    # tensorstore's own words name the cut file; orbax's wrapper ended in a cut Python repr
    assert "Error reading" in message and params_dir in message, message
    assert "<bound method" not in message and "TensorStore details" not in message, message

    garbage = _copy(saved, tmp_path / "garbage")
    with open(os.path.join(garbage, "checkpoints", str(STEP), "params", "_METADATA"),
              "w") as f:
        f.write("not json")
    step_dir = os.path.join(garbage, "checkpoints", str(STEP))
    for cfg in (tiny_config(), tiny_config(depth=1)):
        assert _restore_error(garbage, cfg) == (
            f"checkpoint {step_dir} is damaged: item 'params' cannot be read "
            "(JSONDecodeError: Expecting value: line 1 column 1 (char 0))")


def test_the_right_config_restores(saved):
    """The diagnosis runs only on failure: the checkpoint's own config reads it."""
    ckpt = Checkpointer(saved, read_only=True)
    try:
        got = ckpt.restore_params(STEP, _abstract(tiny_config()))
    finally:
        ckpt.close()
    np.testing.assert_array_equal(np.asarray(got["head_fc2"]["bias"]),
                                  random_params(tiny_config())["head_fc2"]["bias"])


LEFTOVERS_SCRIPT = """
import gc, sys, time
import jax
from mami_jax.train.checkpointing import Checkpointer, CheckpointError
from tests.test_convert_mapping import random_params
from tests.test_model import tiny_config
for workdir, overrides in ((sys.argv[1], {}), (sys.argv[2], {"num_codes": 2})):
    abstract = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype),
                                      random_params(tiny_config(**overrides)))
    ckpt = Checkpointer(workdir, read_only=True)
    try:
        ckpt.restore_params(%d, abstract)
    except CheckpointError as e:
        print("refused:", str(e)[:40])
    ckpt.close()
time.sleep(1)
gc.collect()
print("done")
""" % STEP


def test_a_failed_restore_in_a_script_or_notebook_is_its_error_alone(saved, tmp_path):
    """A command drops orbax's leftovers of a failed restore (``quiet_orbax_failure_noise``
    in its ``__main__``); a notebook or a script got the ``CheckpointError`` and then, from
    tensorstore's threads and the collector, thousands of lines of tracebacks: "Event loop
    is closed" for a damaged checkpoint, "Encountered error while reading array index" for
    one of another model config. The checkpointer now quiets them itself when a restore
    fails."""
    import subprocess
    import sys
    cut = _copy(saved, tmp_path / "cut")
    params_dir = os.path.join(cut, "checkpoints", str(STEP), "params")
    for here, _, names in os.walk(params_dir):
        for name in names:
            if os.path.basename(here) == "d":
                path = os.path.join(here, name)
                os.truncate(path, os.path.getsize(path) // 2)
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, "-c", LEFTOVERS_SCRIPT, cut, saved], cwd=repo,
                          capture_output=True, text=True, timeout=300)
    assert proc.stdout.count("refused: checkpoint") == 2 and proc.stdout.endswith("done\n"), \
        (proc.stdout, proc.stderr[-3000:])
    for leftover in ("Traceback", "Exception ignored", "Event loop is closed"):
        assert leftover not in proc.stderr, proc.stderr[-3000:]
