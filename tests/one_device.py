"""XLA_FLAGS for a child process that should see one CPU device.

tests/conftest.py gives the test process eight virtual CPU devices (XLA_FLAGS), which the
sharding tests need. Child processes inherit them; the notebooks and the README's
commands are what a user runs on one device, and a tiny run on eight virtual devices
sharing the machine's cores spends most of its time partitioning and synchronising. The
trainer on an eight-device mesh stays covered by tests/test_train.py and its neighbours.
"""

DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"


def without_device_count(flags: str) -> str:
    """``flags`` (an XLA_FLAGS value) less any --xla_force_host_platform_device_count."""
    return " ".join(f for f in flags.split() if not f.startswith(DEVICE_COUNT_FLAG))
