"""Training as several hosts run it: two processes on this CPU (one device each), joined by
``jax.distributed`` through ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES`` and
``JAX_PROCESS_ID`` (``mami_jax.runtime.distributed``), collectives over gloo.

SIGTERM reaches one host of a preempted slice first; each process stopping where it heard
it would leave the other waiting in a collective for ever. The signal goes to process 1
only: both stop at the step JAX's preemption service names, save it together, and the same
two commands go on from it.
"""

import os
import signal
import socket
import subprocess
import sys
import threading

import pytest

from mami_jax.runtime.distributed import process_settings
from tests.one_device import without_device_count
from tests.test_train import ONE_BATCH_SHAPE, REPO, _main_command

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="gloo collectives on Linux")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _start(workdir, manifest, *flags, **changed) -> list[subprocess.Popen]:
    port = _free_port()
    procs = []
    for rank in range(2):
        cmd = _main_command(workdir, "unused", "--config.train.eval_at_start=False",
                            f"--config.data.manifest={manifest}", *flags,
                            **{**ONE_BATCH_SHAPE, **changed})
        env = {**os.environ, "JAX_COORDINATOR_ADDRESS": f"localhost:{port}",
               "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": str(rank), "JAX_PLATFORMS": "cpu",
               "JAX_CPU_COLLECTIVES_IMPLEMENTATION": "gloo",
               "XLA_FLAGS": without_device_count(os.environ.get("XLA_FLAGS", ""))
               + " --xla_force_host_platform_device_count=1"}
        procs.append(subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE, text=True))
    return procs


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    from mami_jax.phantoms import generate
    return generate(str(tmp_path_factory.mktemp("mp") / "ph"), patients=20, visits=3,
                    image_size=48, slices=4, workers=1)


def test_two_processes_stop_together_at_sigterm_to_one_and_go_on(manifest, tmp_path):
    work = tmp_path / "run"
    procs = _start(work, manifest, train__total_steps=10_000, train__checkpoint_every=10_000)
    err = [[], []]
    drain = threading.Thread(target=lambda: err[1].extend(procs[1].stderr))
    drain.start()
    try:
        for line in procs[0].stderr:
            err[0].append(line)
            if "step 3: train/" in line:
                procs[1].send_signal(signal.SIGTERM)
                break
        err[0].append(procs[0].communicate(timeout=300)[1])
        procs[1].wait(timeout=300)
    finally:
        for p in procs:
            p.kill()
        drain.join()
    logs = ["".join(e) for e in err]
    for rank in (0, 1):
        assert procs[rank].returncode == 143, logs[rank][-3000:]
    lines = [log.strip().splitlines()[-1] for log in logs]
    assert lines[0] == lines[1], lines                # the same step on both
    assert lines[0].startswith("stopped by SIGTERM after step ")
    step = int(lines[0].split("after step ")[1].split(",")[0])
    assert step >= 3 and os.listdir(work / "checkpoints") == [str(step)]
    assert "SIGTERM caught" in logs[1] and "SIGTERM caught" not in logs[0]

    again = _start(work, manifest, "--config.train.eval_at_end=False",
                   train__total_steps=step + 1)
    outs = [p.communicate(timeout=600)[1] for p in again]
    for rank in (0, 1):
        assert again[rank].returncode == 0, outs[rank][-3000:]
    assert f"resumed from {work / 'checkpoints' / str(step)}" in outs[0]
    assert "over 2 devices (2 processes)" in outs[0]
    assert f"step {step + 1}: train/" in outs[0]
    assert sorted(os.listdir(work / "checkpoints"), key=int) == [str(step), str(step + 1)]


@pytest.mark.parametrize("env, expected", [
    ({}, {}),
    ({"JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "3"}, {"num_processes": 4, "process_id": 3}),
    ({"JAX_NUM_PROCESSES": "4"}, "JAX_NUM_PROCESSES is set but JAX_PROCESS_ID is not"),
    ({"JAX_PROCESS_ID": "0"}, "JAX_PROCESS_ID is set but JAX_NUM_PROCESSES is not"),
    ({"JAX_NUM_PROCESSES": "two", "JAX_PROCESS_ID": "0"},
     "JAX_NUM_PROCESSES='two': expected a whole number"),
    ({"JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "2"},
     "JAX_PROCESS_ID=2, JAX_NUM_PROCESSES=2: the rank must be in [0, 2)"),
])
def test_the_process_count_and_rank_come_from_the_environment(monkeypatch, env, expected):
    """JAX itself reads them only from a cluster it knows (SLURM, Open MPI, a Cloud TPU):
    launched otherwise it stopped with "Number of processes must be defined"."""
    for name in ("JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    if isinstance(expected, dict):
        assert process_settings() == expected
    else:
        with pytest.raises(ValueError, match=expected.replace("[", r"\[").replace("(", r"\(")
                           .replace(")", r"\)")):
            process_settings()


def test_a_process_count_without_a_coordinator_is_refused(monkeypatch):
    """JAX_NUM_PROCESSES=2 without JAX_COORDINATOR_ADDRESS ran as process 0 of 1: each
    process trained alone."""
    from mami_jax.runtime.distributed import maybe_initialize_distributed
    for name in ("JAX_COORDINATOR_ADDRESS", "TPU_WORKER_HOSTNAMES"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("JAX_NUM_PROCESSES", "2")
    monkeypatch.setenv("JAX_PROCESS_ID", "1")
    with pytest.raises(ValueError, match=r"^environment variable JAX_NUM_PROCESSES=2 says several "
                                         r"processes, but JAX_COORDINATOR_ADDRESS"):
        maybe_initialize_distributed()
    monkeypatch.setenv("JAX_NUM_PROCESSES", "1")
    monkeypatch.setenv("JAX_PROCESS_ID", "0")
    maybe_initialize_distributed()          # one process: nothing to join
