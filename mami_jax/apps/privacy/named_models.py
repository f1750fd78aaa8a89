"""``NAME=MODEL`` arguments (``privacy evaluate --model``; the privacy benchmarks'
``--held-out``, ``--member``, ``--white-box``): the name a table shows and the model (or
file) it stands for, in the order given."""

from __future__ import annotations


def named(specs: list[str], flag: str) -> list[tuple[str, str]]:
    """[(NAME, MODEL), ...] of ``specs``; one without a name or a model is a ValueError
    naming ``flag`` and the argument."""
    out = []
    for spec in specs:
        name, sep, model = spec.partition("=")
        if not sep or not name or not model:
            raise ValueError(f"{flag} {spec!r}: give it as NAME=MODEL")
        out.append((name, model))
    return out
