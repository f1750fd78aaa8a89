"""A TPU or GPU the machine has and JAX does not use, said before a long job starts.

``pip install -e .`` installs JAX's CPU build; on a TPU VM or a GPU machine the matching
build goes on top (docs/running.md, "Installing JAX for the machine"). Forgotten, or
broken by a mismatched version, JAX falls back to the CPU with one INFO line ("Unable to
initialize backend 'tpu'") and the run trains at a few images a second. The device files
say that an accelerator is there: ``/dev/accel*`` (TPU v4 and earlier), numbered
``/dev/vfio/`` groups (TPU v5e and later), ``/dev/nvidia<N>`` (NVIDIA GPUs). A user who set
``JAX_PLATFORMS`` chose the platform and is not told.
"""

from __future__ import annotations

import glob
import logging
import os
from typing import Mapping

#: The install line per accelerator (the build of the JAX version installed).
_INSTALL = {
    "TPU": 'pip install -U "jax[tpu]==$(python -c \'import jax; print(jax.__version__)\')"',
    "GPU": 'pip install -U "jax[cuda12]==$(python -c \'import jax; print(jax.__version__)\')"',
}


def _device_files(dev: str) -> tuple[str, list[str]] | None:
    """(kind, device files) of the first accelerator found under ``dev``; None if none."""
    tpu = sorted(glob.glob(os.path.join(dev, "accel[0-9]*"))
                 + [p for p in glob.glob(os.path.join(dev, "vfio", "*"))
                    if os.path.basename(p).isdigit()])
    if tpu:
        return "TPU", tpu
    gpu = sorted(glob.glob(os.path.join(dev, "nvidia[0-9]*")))
    return ("GPU", gpu) if gpu else None


def idle_accelerator_warning(backend: str, dev: str = "/dev",
                             environ: Mapping[str, str] = os.environ) -> str | None:
    """The warning for a machine whose TPU or GPU JAX is not using (``backend``: JAX's
    default backend, "cpu" when it fell back); None when there is nothing to say."""
    if backend != "cpu" or environ.get("JAX_PLATFORMS", "").strip():
        return None
    found = _device_files(dev)
    if found is None:
        return None
    kind, files = found
    return (f"JAX runs on the CPU, but this machine has a {kind} ({', '.join(files[:2])}"
            f"{', ...' if len(files) > 2 else ''}): the job will run many times slower. "
            f"Install JAX's {kind} build of the same version: {_INSTALL[kind]} (set "
            "JAX_PLATFORMS=cpu to run on the CPU on purpose)")


def warn_if_accelerator_idle() -> None:
    """Logs ``idle_accelerator_warning`` for JAX's backend (after ``jax.distributed`` is
    initialised: asking for the backend starts it)."""
    import jax
    warning = idle_accelerator_warning(jax.default_backend())
    if warning:
        logging.warning("%s", warning)
