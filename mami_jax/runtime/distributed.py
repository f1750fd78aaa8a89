"""Multi-host start-up: ``jax.distributed.initialize()`` when the process is one of several."""

from __future__ import annotations

import os

import jax


def maybe_initialize_distributed() -> None:
    """A coordinator address, or a multi-worker Cloud TPU, means several processes: join them
    before anything touches the devices."""
    hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
    if os.environ.get("JAX_COORDINATOR_ADDRESS") or "," in hosts:
        jax.distributed.initialize()
