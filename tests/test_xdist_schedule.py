"""tests/xdist_schedule.py: its tables match the test files, and units and order are
what its docstring says."""

import os
import types

from tests import xdist_schedule as xs

TESTS = os.path.dirname(os.path.abspath(__file__))


def test_shared_fixture_modules_are_exactly_those_with_a_module_scoped_fixture():
    assert xs.modules_with_shared_fixtures(TESTS) == set(xs.SHARED_FIXTURE_MODULES)


def test_module_fixture_pattern():
    assert xs.MODULE_FIXTURE.search('@pytest.fixture(scope="module")\ndef run(tmp_path_factory):')
    assert xs.MODULE_FIXTURE.search("x = 1\n    @pytest.fixture(params=[1], scope='session')")
    assert not xs.MODULE_FIXTURE.search("s = '@pytest.fixture(scope=\"module\")'")
    assert not xs.MODULE_FIXTURE.search("@pytest.fixture\ndef run(tmp_path):")
    assert not xs.MODULE_FIXTURE.search('@pytest.fixture(scope="function")')


def test_every_slow_first_entry_names_an_existing_test():
    for prefix in xs.SLOW_FIRST:
        path, _, rest = prefix.partition("::")
        source = open(os.path.join(os.path.dirname(TESTS), path), encoding="utf-8").read()
        name = rest.split("[")[0]
        assert not name or f"def {name}(" in source, prefix
        if "[" in rest:   # a notebook's parameter: the notebook exists
            notebook = rest.split("[")[1]
            assert any(f.startswith(notebook) for f in os.listdir(
                os.path.join(os.path.dirname(TESTS), "colab"))), prefix


def test_units_group_shared_fixture_modules_and_split_the_rest():
    a = "tests/test_resume.py::test_label_map_differences"
    b = "tests/test_resume.py::test_model_config_differences"
    assert xs.scope_of(a) == xs.scope_of(b) == "tests/test_resume.py"
    nb = "tests/test_colab.py::test_notebook_runs_and_computes_what_it_shows[privacy.ipynb]"
    assert xs.scope_of(nb) == nb


def test_order_puts_the_slow_first_longest_first_and_keeps_the_rest():
    ids = ["tests/test_align.py::test_x", "tests/test_resume.py::test_y",
           "tests/test_atomic_files.py::test_z", xs.SLOW_FIRST[0]]
    items = [types.SimpleNamespace(nodeid=i) for i in ids]
    xs.order(items)
    assert [i.nodeid for i in items] == [ids[3], ids[1], ids[0], ids[2]]
