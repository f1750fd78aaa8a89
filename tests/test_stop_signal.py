"""``mami_jax.runtime.stop_signal``: what the trainer asks after every step.

The end-to-end case (a real SIGTERM to a training run, then the run going on from the
step it saved) is in tests/test_train.py."""

import os
import signal
import threading

import jax
from jax.experimental import multihost_utils

from mami_jax.runtime.stop_signal import StopRequests


def test_one_process_hears_sigterm_once_its_steps_began_and_puts_the_previous_handler_back():
    """Before the first step (reading the data, restoring, compiling: minutes for a large
    model) SIGTERM is left to the command's handler, which stops the run at once; noted
    there, it let the run compile and train a step before it stopped."""
    heard = []
    previous = signal.signal(signal.SIGTERM, lambda *a: heard.append("mine"))
    try:
        with StopRequests() as stop:
            os.kill(os.getpid(), signal.SIGTERM)   # starting: the command's handler stops it
            assert heard == ["mine"] and not stop.heard() and not stop.reached(1)
            stop.listen()                          # the first step has run
            stop.listen()
            assert not stop.reached(1) and not stop.heard()
            os.kill(os.getpid(), signal.SIGTERM)
            assert stop.heard()                            # between steps (an evaluation)
            assert stop.reached(2) and stop.reached(3)     # asked again: still stopping
        assert heard == ["mine"]
        os.kill(os.getpid(), signal.SIGTERM)
        assert heard == ["mine", "mine"]
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_several_processes_stop_at_the_step_jax_names_on_all_of_them(monkeypatch, caplog):
    """Each host stopping where it heard the signal would leave the others waiting in a
    collective for ever: the step is JAX's preemption service's, the same on every host."""
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    monkeypatch.setattr(multihost_utils, "reached_preemption_sync_point", lambda s: s == 5)
    before = signal.getsignal(signal.SIGTERM)
    with StopRequests() as stop:
        stop.listen()
        assert signal.getsignal(signal.SIGTERM) is before       # JAX's service listens
        assert [s for s in range(1, 8) if stop.reached(s)] == [5]
        stop._note(signal.SIGTERM, None)    # a host that heard it leaves no evaluation alone
        assert not stop.heard()

    def off(step):
        raise RuntimeError("Preemption sync manager has not been initialized.")
    monkeypatch.setattr(multihost_utils, "reached_preemption_sync_point", off)
    with caplog.at_level("WARNING"), StopRequests() as stop:
        assert not stop.reached(1) and not stop.reached(2)
    assert caplog.text.count("SIGTERM is not heard: Preemption sync manager") == 1


def test_outside_the_main_thread_nothing_is_installed():
    """signal.signal raises ValueError there (a notebook's or a test's worker thread)."""
    before = signal.getsignal(signal.SIGTERM)
    seen = []

    def run():
        with StopRequests() as stop:
            stop.listen()
            seen.append((signal.getsignal(signal.SIGTERM) is before, stop.reached(1)))
    t = threading.Thread(target=run)
    t.start()
    t.join()
    assert seen == [(True, False)]
