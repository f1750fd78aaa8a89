"""Ctrl-C in a terminal reaches every process of its group: with ``data.num_workers`` > 0
the grain worker processes too. Each worker printed its own KeyboardInterrupt traceback,
and after the command's one ``interrupted`` line multiprocessing's resource tracker
reported the batches' shared memory and the queues' semaphores as leaked (the process
ends with ``os._exit``, which skips the finalisers that release them). Now the workers
leave the interrupt to the main process, and ``interrupts.end_process`` releases what the
skipped teardown would have, so the line is all that is printed.

(A worker is deaf to Ctrl-C once it has started; in the second or two it spends starting,
importing the command's module, it is not yet.)

The script below stands for the trainer and ``main``: a batch held in a frame the
interrupt unwinds, the iterator closed in a ``finally``, and ``end_process`` called
inside the ``except`` that caught the interrupt.
"""

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from tests.process_groups import group_is_gone, kill_group

SCRIPT = textwrap.dedent("""
    import sys, time
    import numpy as np
    from PIL import Image
    from mami_jax.data import pipeline
    from mami_jax.data.config import default_data_config, update_modalities
    from mami_jax.data.manifest import ManifestRow
    from mami_jax.runtime.interrupts import end_process, say_interrupted, stop_on_sigterm_like_ctrl_c

    stop_on_sigterm_like_ctrl_c()    # what run_command and main do

    root = sys.argv[1]
    rng = np.random.default_rng(0)
    rows = []
    for patient in "abc":
        for k in range(3):
            path = f"{root}/{patient}{k}.png"
            Image.fromarray((rng.random((40, 40)) * 255).astype(np.uint8)).save(path)
            rows.append(ManifestRow(f"d:{patient}{k}", patient, f"s{k}", str(k), "xray", "d",
                                    "", path, "train"))
    cfg = default_data_config()
    update_modalities(cfg, image_size=32, resize_size=36)
    cfg.patients_per_batch, cfg.images_per_patient = 2, 2
    cfg.num_workers, cfg.read_threads, cfg.prefetch = 2, 0, 2


    def train():
        it = iter(pipeline.make_train_loader(rows, cfg, seed=0))
        try:
            for _ in range(3):      # batches of both workers: both have started
                batch = next(it)
            print("ready", flush=True)
            while batch:            # a step that holds the batch when Ctrl-C comes
                time.sleep(0.05)
        finally:
            it.close()


    try:
        train()
    except KeyboardInterrupt:
        end_process(say_interrupted())
""")


@pytest.mark.parametrize("signum,to,status,line", [
    (signal.SIGINT, "group", 130, "interrupted"),           # Ctrl-C in a terminal
    (signal.SIGTERM, "group", 143, "stopped by SIGTERM"),   # Slurm, systemd: every process
])   # SIGTERM to the parent alone (kill PID) takes the same path in the parent; the
     # orphans it left are tested with the phantom renderer (tests/test_interrupts.py)
def test_a_stop_with_data_workers_prints_one_line_and_leaves_no_process(tmp_path, signum, to,
                                                                        status, line):
    """SIGTERM to every process of the group: the workers leave the stop to the parent for a
    grace period, so they are stopped in order, their shared memory released."""
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        assert proc.stdout.readline().strip() == "ready", proc.communicate(timeout=60)[1]
        (os.killpg if to == "group" else os.kill)(proc.pid, signum)
        out, err = proc.communicate(timeout=60)
        gone = group_is_gone(proc.pid)
    finally:
        proc.kill()
        kill_group(proc.pid)
    assert proc.returncode == status, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert "leaked" not in err, err
    assert err.strip().splitlines()[-1] == line, err
    assert gone, "a worker process outlived the command"
