"""Whether a command left a process behind: the tests start it in a session of its own
(``start_new_session=True``), so its process group holds it and every worker it started."""

import os
import signal
import time


def group_is_gone(group: int, seconds: float = 30) -> bool:
    """Whether process group ``group`` is empty within ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


def kill_group(group: int) -> None:
    """SIGKILL to what is left of ``group`` (a failed test's cleanup)."""
    try:
        os.killpg(group, signal.SIGKILL)
    except ProcessLookupError:
        pass
