"""Every benchmark script follows the rules of the package's commands: its parser is
``OneLineErrorParser`` (a usage error is one ``error:`` line, status 2), its long options are
spelled with hyphens, Ctrl-C and SIGTERM are one line (``run_command``), and an output named
as another kind of file (``--json manifest.csv``) is refused in one line before any work,
the file it names left as it was."""

from __future__ import annotations

import glob
import importlib
import os

import pytest

from mami_jax.runtime.cli_parser import OneLineErrorParser
from tests.test_cli_help import _long_options, _parser_of

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: Modules in benchmarks/ that other benchmarks import; not commands.
HELPERS = {"child_report", "phantom_baseline_features"}
BENCHMARKS = sorted(name for name in (os.path.splitext(os.path.basename(path))[0]
                                      for path in glob.glob(os.path.join(REPO, "benchmarks", "*.py")))
                    if name not in HELPERS)

#: (benchmark, output option, the other arguments it needs): the outputs whose name says
#: what they hold, .json reports and .png pictures.
NAMED_OUTPUTS = [
    ("execution_parity", "--json", []),
    ("input_speed", "--json", []),
    ("malloc_speed", "--json", []),
    ("mfu", "--json", []),
    ("model_speed", "--json", []),
    ("phantom_baselines", "--json", []),
    ("speed_vs_torch", "--json", []),
    ("step_profile", "--json", []),
    ("teacher_reading", "--json", []),
    ("history_bounds", "--out", ["--manifest", "{tmp}/missing.csv",
                                 "--features", "a={tmp}/missing.npz:x"]),
    ("history_index", "--out", []),
    ("history_index", "--png", ["--out", "{tmp}/index.json"]),
    ("step_profile", "--png", ["--json", "{tmp}/profile.json"]),
]


def test_the_benchmarks_are_found():
    assert "mfu" in BENCHMARKS and len(BENCHMARKS) >= 17


@pytest.mark.parametrize("name", BENCHMARKS)
def test_the_parser_is_the_commands_and_options_are_spelled_with_hyphens(name, monkeypatch):
    parser = _parser_of(f"benchmarks.{name}", monkeypatch)
    assert isinstance(parser, OneLineErrorParser)
    options = [s for _, s in _long_options(parser, name)]
    assert [s for s in options if "_" in s] == []
    checked = {(n, flag) for n, flag, _ in NAMED_OUTPUTS}
    assert [f for f in ("--json", "--png") if f in options and (name, f) not in checked] == []


@pytest.mark.parametrize("name", BENCHMARKS)
def test_the_script_runs_main_as_a_command(name):
    with open(os.path.join(REPO, "benchmarks", name + ".py")) as f:
        source = f.read()
    assert source.rstrip().endswith('if __name__ == "__main__":\n    run_command(main)')


@pytest.mark.parametrize("name", BENCHMARKS)
def test_an_unknown_option_is_one_usage_line(name, capsys):
    module = importlib.import_module(f"benchmarks.{name}")
    with pytest.raises(SystemExit) as exit_info:
        module.main(["--no-such-option"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err


@pytest.mark.parametrize("name,flag,others", NAMED_OUTPUTS)
def test_an_output_named_as_another_kind_is_refused_before_the_work(name, flag, others,
                                                                   tmp_path, capsys):
    slip = tmp_path / "m.csv"
    slip.write_text("image_id\n")
    module = importlib.import_module(f"benchmarks.{name}")
    argv = [flag, str(slip)] + [a.format(tmp=tmp_path) for a in others]
    assert module.main(argv) == 1
    err = capsys.readouterr().err.splitlines()
    suffix = ".png" if flag == "--png" else ".json"
    assert len(err) == 1 and err[0].startswith(f"error: {flag} {slip}: ") and \
        f"ending in {suffix}" in err[0], err
    assert slip.read_text() == "image_id\n"
    assert sorted(os.listdir(tmp_path)) == ["m.csv"]


def test_exit_status_is_the_works_own_one_error_line_or_a_bug_s_traceback(capsys):
    from mami_jax.runtime.error_line import exit_status

    assert exit_status(lambda: None) == 0 and exit_status(lambda: {"a": 1}) == 0
    assert exit_status(lambda: 3) == 3 and exit_status(lambda: True) == 0

    def missing():
        raise FileNotFoundError(2, "No such file or directory", "/data/m.csv")
    assert exit_status(missing) == 1
    assert capsys.readouterr().err == "error: [Errno 2] No such file or directory: '/data/m.csv'\n"

    def bug():
        raise KeyError("x")
    with pytest.raises(KeyError):
        exit_status(bug)
