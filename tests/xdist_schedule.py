"""How `pytest -n N` hands the tests to its workers (hooks in tests/conftest.py).

Two things bound the suite's wall time under pytest-xdist's default scheduler: a module
whose tests are split over two workers builds its module-scoped fixtures (a trained run,
extracted features) once per worker, and the longest tests, when they sit together in the
collection order, all land in one worker's first chunk while the other idles at the end.

So each module with a module-scoped fixture (``SHARED_FIXTURE_MODULES``) is one unit of
work, every other test its own unit, and the units are dealt out in the collection order,
which ``order`` puts heaviest first (``SLOW_FIRST``, longest first): a worker takes the
next unit when it has at most two tests left, so the long ones start early and spread.
What each test runs and asserts is unchanged; only who runs it, and when.
"""

from __future__ import annotations

import os
import re

#: Test modules with a module-scoped fixture: their tests stay on one worker.
#: tests/test_xdist_schedule.py checks this against the modules' sources.
SHARED_FIXTURE_MODULES = frozenset({
    "test_checkpoint_other_config.py", "test_config_effective.py", "test_convert_errors.py",
    "test_convert_parity.py", "test_data_pipeline.py", "test_history_archive_checks.py",
    "test_history_cli.py",
    "test_history_diagnosis_backbone.py", "test_history_guards.py",
    "test_history_query_output.py", "test_history_resume.py",
    "test_inference.py", "test_main_errors.py", "test_multiprocess.py",
    "test_phantoms.py", "test_privacy_cli.py", "test_privacy_gradient_agreement.py",
    "test_privacy_history_utility.py", "test_privacy_modality_ensemble.py",
    "test_privacy_perturb.py", "test_privacy_transfer.py", "test_resume.py",
    "test_teacher_join.py", "test_teachers_anatomy.py", "test_teachers_loaders.py",
    "test_teachers_preprocessing_parity.py", "test_teachers_run_settings.py",
    "test_teachers_shared_reading.py", "test_teachers_tfrecords.py",
    "test_teachers_value_window.py", "test_teachers_zero_shot.py", "test_torch_embedder.py",
})

#: Node id prefixes of the longest units, longest first (from `--durations` of the suite).
SLOW_FIRST = (
    "tests/test_train.py::test_main_end_to_end_and_resume_after_kill_is_exact",
    "tests/test_train.py::test_ctrl_c_while_training_names_the_checkpoint_to_go_on_from",
    "tests/test_multiprocess.py::",
    "tests/test_train.py::test_sigterm_while_training_saves_the_step_reached_and_the_run_goes_on_from_it",
    "tests/test_readme_commands.py::test_readme_commands_run",
    "tests/test_colab.py::test_notebook_runs_and_computes_what_it_shows[teachers_alignment",
    "tests/test_colab.py::test_notebook_runs_and_computes_what_it_shows[privacy",
    "tests/test_colab.py::test_notebook_runs_and_computes_what_it_shows[history",
    "tests/test_resume.py::",
    "tests/test_privacy_transfer.py::",
    "tests/test_colab.py::test_notebook_runs_and_computes_what_it_shows[quickstart",
    "tests/test_privacy_cli.py::",
    "tests/test_convert_parity.py::",
    "tests/test_history_diagnosis_backbone.py::",
    "tests/test_history_cli.py::",
    "tests/test_privacy_history_utility.py::",
    "tests/test_extension_points.py::test_each_group_has_its_own_learning_rate",
    "tests/test_align.py::test_sharded_equals_unsharded_and_pairs_span_the_global_batch",
    "tests/test_align.py::test_gradient_accumulation_pairs_within_each_microbatch",
    "tests/test_model.py::test_default_init_trains_every_generator_router_and_codebook",
    "tests/test_adversarial_training.py::test_the_configured_loss_is_taken_at_the_moved_images",
)

MODULE_FIXTURE = re.compile(r"""^\s*@pytest\.fixture\([^)]*scope=["'](module|session)["']""",
                            re.M)


def modules_with_shared_fixtures(test_dir: str) -> set[str]:
    """The test_*.py files of ``test_dir`` that define a module- or session-scoped fixture."""
    out = set()
    for name in os.listdir(test_dir):
        if name.startswith("test_") and name.endswith(".py"):
            with open(os.path.join(test_dir, name), encoding="utf-8") as f:
                if MODULE_FIXTURE.search(f.read()):
                    out.add(name)
    return out


def rank(nodeid: str) -> int:
    """Position of ``nodeid`` in ``SLOW_FIRST`` (len(SLOW_FIRST) for every other test)."""
    for i, prefix in enumerate(SLOW_FIRST):
        if nodeid.startswith(prefix):
            return i
    return len(SLOW_FIRST)


def order(items: list) -> None:
    """Sorts collected items in place: ``SLOW_FIRST`` first, the rest in collection order."""
    items.sort(key=lambda item: rank(item.nodeid))


def scope_of(nodeid: str) -> str:
    """The unit of work of ``nodeid``: its module's path, or the node id itself."""
    module = nodeid.split("::", 1)[0]
    return module if os.path.basename(module) in SHARED_FIXTURE_MODULES else nodeid


def make_scheduler(config, log):
    """The xdist scheduler: units per ``scope_of``, dealt in collection order."""
    from xdist.scheduler import LoadScopeScheduling

    class SharedFixtureScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return scope_of(nodeid)

    # LoadScopeScheduling otherwise re-sorts the units by their number of tests.
    config.option.loadscopereorder = False
    return SharedFixtureScheduling(config, log)
