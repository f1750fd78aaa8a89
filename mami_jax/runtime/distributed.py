"""Multi-host start-up: ``jax.distributed.initialize()`` when the process is one of several.

A multi-worker Cloud TPU is found from its environment. Elsewhere ``JAX_COORDINATOR_ADDRESS``
(host:port of process 0) says the run is one of several; JAX then learns the number of
processes and each one's rank from the launcher (SLURM, Open MPI) or, started by hand or
by another launcher (where it stopped with "Number of processes must be defined"), from
``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID`` (they win over what JAX would find). Those
two without a coordinator address are refused: each process would train alone.
"""

from __future__ import annotations

import os

import jax

COUNT_ENV, RANK_ENV = "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"


def _whole(name: str) -> int | None:
    """The whole number in environment variable ``name`` (None when unset)."""
    text = os.environ.get(name, "").strip()
    if not text:
        return None
    if not text.isdigit():
        raise ValueError(f"environment variable {name}={text!r}: expected a whole number")
    return int(text)


def process_settings() -> dict:
    """The ``jax.distributed.initialize`` arguments set by ``JAX_NUM_PROCESSES`` and
    ``JAX_PROCESS_ID`` (both or neither, the rank below the count), else {}."""
    count, rank = _whole(COUNT_ENV), _whole(RANK_ENV)
    if (count is None) != (rank is None):
        given, missing = (COUNT_ENV, RANK_ENV) if rank is None else (RANK_ENV, COUNT_ENV)
        raise ValueError(f"environment variable {given} is set but {missing} is not: set both "
                         "(the number of processes, and this one's rank from 0), or neither")
    if count is None:
        return {}
    if not 0 <= rank < count:
        raise ValueError(f"environment variables {RANK_ENV}={rank}, {COUNT_ENV}={count}: the "
                         f"rank must be in [0, {count})")
    return {"num_processes": count, "process_id": rank}


def maybe_initialize_distributed() -> None:
    """A coordinator address, or a multi-worker Cloud TPU, means several processes: join them
    before anything touches the devices."""
    hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
    settings = process_settings()
    if not (os.environ.get("JAX_COORDINATOR_ADDRESS") or "," in hosts):
        if settings.get("num_processes", 1) > 1:
            raise ValueError(f"environment variable {COUNT_ENV}={settings['num_processes']} "
                             "says several processes, but JAX_COORDINATOR_ADDRESS (host:port of "
                             "process 0) is not set: each process would train alone")
        return
    if not jax.distributed.is_initialized():
        jax.distributed.initialize(**settings)
