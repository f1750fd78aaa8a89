"""Test set-up: eight virtual CPU devices, so sharding is tested without accelerators, and
XLA's quick CPU code generation.

The flags must be set before jax is imported anywhere, which is why they live here.
"""

import atexit
import os
import shutil
import tempfile

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()

# The tests' programs are tiny and compiled once or twice each, so the suite spends more time
# in XLA's CPU code generation than in running them: LLVM without its optimisation passes
# compiles them faster and computes the same operations (matrix products call the same
# library kernels). docs/test_suite.md has the measurement. A level given in XLA_FLAGS wins
# (XLA_FLAGS=--xla_backend_optimization_level=3, XLA's default: compiled as users' runs are).
OPTIMIZATION_FLAG = "--xla_backend_optimization_level"
if OPTIMIZATION_FLAG not in os.environ["XLA_FLAGS"]:
    os.environ["XLA_FLAGS"] += f" {OPTIMIZATION_FLAG}=0"
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# One persistent compilation cache for the whole session, fresh each time: made by the first
# pytest process (xdist's controller), whose environment the workers and every child process
# inherit. The notebooks' kernels, the README's commands and the CLI tests compile the same
# tiny programs again (a second model trained, an evaluation after training, the same run in
# the other worker) and load them instead. JAX keys an entry by the whole program, so what a
# test computes is unchanged; the tests of the cache itself point their processes at folders
# of their own.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="mami_jax_tests_")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)
# Several processes read and write that folder at once. JAX writes an entry in place, so a
# reader could meet half of one (a warning, then the program compiled again); with a size
# limit set, JAX takes a file lock around every read and write. The limit is far above what a
# session writes (some 40 MB), so nothing is ever evicted.
# (JAX needs the filelock package for it: the test extra installs it.)
os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(8 << 30))

import pytest  # noqa: E402  (after the flag, like every import that may pull in jax)

from tests import xdist_schedule  # noqa: E402


def pytest_collection_modifyitems(config, items):
    xdist_schedule.order(items)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    # Only under the default `--dist load` (`-n N` alone, as in the CI command).
    if config.getvalue("dist") == "load":
        return xdist_schedule.make_scheduler(config, log)
    return None


@pytest.fixture
def no_model(monkeypatch):
    """Fails the test if a history command loads a model: what a command refuses, it
    refuses before (tests/test_history_guards.py, tests/test_history_archive_checks.py)."""
    from mami_jax.apps.history import commands

    def trap(*args, **kwargs):
        raise AssertionError("the model was loaded before the input was checked")
    monkeypatch.setattr(commands, "TrainedModel", trap)
