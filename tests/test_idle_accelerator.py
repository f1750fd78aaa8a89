"""A TPU or GPU that JAX does not use is said before a job: on a TPU VM where only
``pip install -e .`` ran (JAX's CPU build), training fell back to the CPU with one INFO
line and ran at a few images a second."""

import pytest

from mami_jax.runtime.idle_accelerator import idle_accelerator_warning

TPU = 'pip install -U "jax[tpu]==$(python -c \'import jax; print(jax.__version__)\')"'
GPU = 'pip install -U "jax[cuda12]==$(python -c \'import jax; print(jax.__version__)\')"'


def dev(tmp_path, *names):
    for name in names:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).touch()
    return str(tmp_path)


@pytest.mark.parametrize("files, kind, named, install", [
    (("accel0", "accel1", "accel2", "accel3"), "TPU", "accel0, accel1, ...", TPU),  # v4
    (("vfio/vfio", "vfio/0"), "TPU", "vfio/0", TPU),                              # v5e, v6e
    (("nvidiactl", "nvidia-uvm", "nvidia0", "nvidia1"), "GPU", "nvidia0, nvidia1", GPU),
])
def test_an_accelerator_jax_does_not_use_is_named_with_the_install_line(tmp_path, files, kind,
                                                                        named, install):
    root = dev(tmp_path, *files)
    shown = ", ".join(f"{root}/{n}" for n in named.split(", ") if n != "...")
    shown += ", ..." if named.endswith("...") else ""
    assert idle_accelerator_warning("cpu", root, {}) == (
        f"JAX runs on the CPU, but this machine has a {kind} ({shown}): the job will run many "
        f"times slower. Install JAX's {kind} build of the same version: {install} (set "
        "JAX_PLATFORMS=cpu to run on the CPU on purpose)")


def test_nothing_is_said_when_jax_uses_it_or_was_told_the_platform_or_there_is_none(tmp_path):
    root = dev(tmp_path, "accel0", "nvidia0")
    assert idle_accelerator_warning("tpu", root, {}) is None
    assert idle_accelerator_warning("gpu", root, {}) is None
    assert idle_accelerator_warning("cpu", root, {"JAX_PLATFORMS": "cpu"}) is None
    bare = dev(tmp_path / "bare", "vfio/vfio", "nvidiactl", "null")
    assert idle_accelerator_warning("cpu", bare, {}) is None
