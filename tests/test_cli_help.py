"""Every option of every command a user runs says what it is in --help.

The parser each command builds is caught as it parses (nothing runs), then walked,
sub-commands included."""

from __future__ import annotations

import argparse
import glob
import importlib
import os

import pytest

COMMANDS = ["mami_jax.apps.history.__main__", "mami_jax.apps.privacy.__main__",
            "mami_jax.data.preview_manifest", "mami_jax.data.check_images",
            "mami_jax.convert.__main__", "mami_jax.data.build_manifest",
            "mami_jax.phantoms.__main__", "mami_jax.evaluate.features", "teachers.extract",
            "mami_jax.data.tile_slides"]

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _benchmark_scripts():
    """``benchmarks.NAME`` of every script in benchmarks/ that builds a parser (the others,
    like ``phantom_baseline_features``, are helpers the scripts import)."""
    names = []
    for path in sorted(glob.glob(os.path.join(REPO, "benchmarks", "*.py"))):
        with open(path) as f:
            if ".add_argument(" in f.read():
                names.append("benchmarks." + os.path.splitext(os.path.basename(path))[0])
    return names


#: The benchmark scripts are commands a user runs too (``python benchmarks/mfu.py``).
BENCHMARK_COMMANDS = _benchmark_scripts()


class _Caught(Exception):
    def __init__(self, parser):
        super().__init__()
        self.parser = parser


def _parser_of(module_name, monkeypatch):
    def catch(self, *args, **kwargs):
        raise _Caught(self)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", catch)
    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", catch)
    with pytest.raises(_Caught) as caught:
        importlib.import_module(module_name).main([])
    return caught.value.parser


def _options_without_help(parser, where):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _options_without_help(sub, f"{where} {name}")
        elif action.option_strings and not (action.help or "").strip() and \
                not isinstance(action, argparse._HelpAction):
            yield f"{where} {'/'.join(action.option_strings)}"


@pytest.mark.parametrize("module_name", COMMANDS + BENCHMARK_COMMANDS)
def test_every_option_has_help(module_name, monkeypatch):
    parser = _parser_of(module_name, monkeypatch)
    assert list(_options_without_help(parser, module_name)) == []
    _format_every_help(parser)


def _format_every_help(parser):
    """--help of ``parser`` and of its sub-commands is printed, not a formatting error (a
    stray ``%`` beside ``%(default)s`` in one option's help breaks the whole page)."""
    parser.format_help()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _format_every_help(sub)


def test_the_benchmark_scripts_are_checked():
    assert "benchmarks.mfu" in BENCHMARK_COMMANDS and len(BENCHMARK_COMMANDS) >= 17
    assert "benchmarks.phantom_baseline_features" not in BENCHMARK_COMMANDS


def _long_options(parser, where):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _long_options(sub, f"{where} {name}")
        else:
            yield from ((where, s) for s in action.option_strings if s.startswith("--"))


@pytest.mark.parametrize("module_name", COMMANDS)
def test_every_option_is_spelled_with_hyphens(module_name, monkeypatch):
    """One spelling across the commands (``teachers.extract`` alone had ``--batch_size``
    beside every other command's ``--image-size``)."""
    parser = _parser_of(module_name, monkeypatch)
    assert [f"{w} {s}" for w, s in _long_options(parser, module_name) if "_" in s] == []


def test_an_option_in_the_other_spelling_is_the_same_option(monkeypatch, capsys):
    """``--read_threads`` and ``--read-threads`` (absl's ``main`` spells with ``_``, the
    commands with ``-``): either is read, abbreviated too, in sub-commands too; after
    ``--`` nothing is rewritten, and an option the command has in neither spelling is still
    the one-line usage error."""
    extract = _parser_of("teachers.extract", monkeypatch)
    history = _parser_of("mami_jax.apps.history.__main__", monkeypatch)
    monkeypatch.undo()
    base = ["--manifest", "m.csv", "--teachers", "anatomy", "--out", "o"]
    args = extract.parse_args(base + ["--read_threads", "2", "--num_shards=3", "--skip_unread",
                                      "--batch-size", "5"])
    assert (args.read_threads, args.num_shards, args.skip_unreadable, args.batch_size) == \
        (2, 3, True, 5)
    sub = history.parse_args(["index", "--model", "w", "--manifest", "m", "--out", "o",
                              "--app_config", "c.py"])
    assert sub.app_config == "c.py"
    with pytest.raises(SystemExit) as stop:
        extract.parse_args(base + ["--read_thread_count", "2"])
    assert stop.value.code == 2
    assert capsys.readouterr().err.startswith(
        "error: python -m teachers.extract: unrecognized arguments: --read_thread_count 2")
