"""Every option of every command a user runs says what it is in --help.

The parser each command builds is caught as it parses (nothing runs), then walked,
sub-commands included."""

from __future__ import annotations

import argparse
import importlib

import pytest

COMMANDS = ["mami_jax.apps.history.__main__", "mami_jax.apps.privacy.__main__",
            "mami_jax.convert.__main__", "mami_jax.data.build_manifest",
            "mami_jax.phantoms.__main__", "mami_jax.evaluate.features", "teachers.extract"]


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
        elif action.option_strings and not action.help and \
                not isinstance(action, argparse._HelpAction):
            yield f"{where} {'/'.join(action.option_strings)}"


@pytest.mark.parametrize("module_name", COMMANDS)
def test_every_option_has_help(module_name, monkeypatch):
    parser = _parser_of(module_name, monkeypatch)
    assert list(_options_without_help(parser, module_name)) == []
