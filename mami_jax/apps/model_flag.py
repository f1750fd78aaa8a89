"""The re-ID model flag of both applications: ``--workdir``, also spelled ``--model`` (as
``python -m mami_jax.main`` spells it).

The spelling the user typed is kept in ``args.model_flag``, so an error about the model
names the flag as it was given (``--model run: no such file or folder``), not its other
name. The flag given twice (either spelling) is a usage error: which of two models the
user meant is not for the command to guess.
"""

from __future__ import annotations

import argparse

SPELLINGS = ("--workdir", "--model")


class _KeepSpelling(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        given = getattr(namespace, self.dest, None)
        if given is not None:
            parser.error(f"{option_string} {values}: the model was already given "
                         f"({namespace.model_flag} {given}); give one")
        setattr(namespace, self.dest, values)
        namespace.model_flag = option_string


def add_model_flag(parser: argparse.ArgumentParser, help: str, required: bool = True) -> None:
    """Adds ``--workdir``/``--model`` (dest ``workdir``) and ``model_flag``, the spelling
    used (``--workdir`` when the flag is not given)."""
    parser.add_argument(*SPELLINGS, dest="workdir", required=required, action=_KeepSpelling,
                        help=f"{help} (--model is the same flag, as in python -m mami_jax.main)")
    parser.set_defaults(model_flag=SPELLINGS[0])
