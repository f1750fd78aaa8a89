"""The one error line a history command printed (its tests' shared reading of stderr; the
``no_model`` fixture they share is in conftest.py)."""


def error_line(capsys) -> str:
    """The one error line of a command (stderr holds nothing else but progress bars)."""
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err
    return lines[0]
