"""Keeps third-party INFO chatter out of the training log.

orbax logs about 40 INFO lines for every checkpoint it saves (handler registration,
device-to-host transfers, temporary directories, ...): in the runlocal job they were
~400 of its ~490 log lines and buried the metrics. Records below WARNING that come from
the listed packages are dropped while absl's verbosity is at its default; ``--v=1`` (or
higher) lets them through again for debugging. Warnings and errors always pass.
"""

from __future__ import annotations

import logging
import os

from absl import logging as absl_logging

#: Packages whose INFO records the main job hides by default.
QUIET_PACKAGES = ("orbax",)


class DropLibraryInfo(logging.Filter):
    """A logging filter: False for sub-WARNING records from files inside ``packages``."""

    def __init__(self, packages=QUIET_PACKAGES):
        super().__init__()
        self.markers = tuple(f"{os.sep}{p}{os.sep}" for p in packages)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING or absl_logging.get_verbosity() >= 1:
            return True
        return not any(marker in record.pathname for marker in self.markers)


def quiet_library_info(packages=QUIET_PACKAGES) -> DropLibraryInfo:
    """Installs the filter on absl's handler (which every absl and Python log passes
    through under ``absl.app``); returns it so a caller can remove it."""
    handler = absl_logging.get_absl_handler()
    log_filter = DropLibraryInfo(packages)
    handler.addFilter(log_filter)
    return log_filter
