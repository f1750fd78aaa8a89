"""The main job's log filter: orbax INFO lines out, warnings and our own lines in."""

import logging
import os

from absl import logging as absl_logging

from mami_jax.runtime.log_filters import DropLibraryInfo


def _record(path_parts, level):
    path = os.sep + os.path.join("site-packages", *path_parts)
    return logging.LogRecord("absl", level, path, 1, "message", None, None)


def test_drops_only_sub_warning_records_of_the_listed_packages():
    f = DropLibraryInfo(("orbax",))
    assert not f.filter(_record(("orbax", "checkpoint", "checkpoint_manager.py"), logging.INFO))
    assert not f.filter(_record(("orbax", "checkpoint", "atomicity.py"), logging.DEBUG))
    assert f.filter(_record(("orbax", "checkpoint", "checkpoint_manager.py"), logging.WARNING))
    assert f.filter(_record(("mami_jax", "train.py"), logging.INFO))
    # A package whose name merely starts the same is not matched.
    assert f.filter(_record(("orbaxlike", "x.py"), logging.INFO))


def test_higher_absl_verbosity_lets_everything_through():
    f = DropLibraryInfo(("orbax",))
    record = _record(("orbax", "checkpoint", "checkpoint_manager.py"), logging.INFO)
    old = absl_logging.get_verbosity()
    try:
        absl_logging.set_verbosity(1)
        assert f.filter(record)
    finally:
        absl_logging.set_verbosity(old)
    assert not f.filter(record)
