"""Test set-up: eight virtual CPU devices, so sharding is tested without accelerators.

The flag must be set before jax is imported anywhere, which is why it lives here.
"""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

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
