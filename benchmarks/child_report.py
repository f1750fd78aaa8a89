"""Runs one measurement of a benchmark in a child process and reads the JSON report it
prints last.

``malloc_speed.py`` (the allocator is fixed when a process starts) and ``eval_scale.py``
(a process's peak memory is its own) measure each variant in a fresh process: the same
script with ``--child``. The child's output is captured, so a failed child used to end
the parent with a ``CalledProcessError`` traceback that named the command and hid the
child's reason; ``child_report`` ends it with that reason instead, the child's last line
of stderr, which the parent's ``exit_status`` prints as one ``error:`` line.
"""

from __future__ import annotations

import json
import signal
import subprocess


def child_report(cmd: list[str], what: str, env: dict | None = None) -> dict:
    """The JSON object on the last line ``cmd`` prints; ChildProcessError (an OSError,
    so one ``error:`` line) naming ``what`` and the child's reason if it fails."""
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise ChildProcessError(f"{what} failed ({exit_reason(proc.returncode)}): "
                                f"{last_error_line(proc.stderr)}")
    lines = proc.stdout.strip().splitlines()
    if not lines:
        raise ChildProcessError(f"{what} printed no report: {last_error_line(proc.stderr)}")
    return json.loads(lines[-1])


def exit_reason(returncode: int) -> str:
    """"exit status 1", or for a child ended by a signal its name ("killed by SIGKILL":
    the out-of-memory killer's, typically)."""
    if returncode > 0:
        return f"exit status {returncode}"
    try:
        return f"killed by {signal.Signals(-returncode).name}"
    except ValueError:
        return f"killed by signal {-returncode}"


def last_error_line(stderr: str) -> str:
    """The child's last non-blank stderr line without its own ``error:`` prefix (the
    parent adds one); a progress bar's carriage returns count as line ends."""
    lines = [line.strip() for line in stderr.replace("\r", "\n").splitlines() if line.strip()]
    if not lines:
        return "it printed nothing on stderr"
    last = lines[-1]
    return last[len("error:"):].strip() if last.startswith("error:") else last
