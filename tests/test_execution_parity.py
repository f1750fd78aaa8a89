"""benchmarks/execution_parity.py: every execution path of a tiny MaMI against the float32
reference on this CPU (the cuDNN path is skipped here, with its reason), the verdict's
status and error line, and its flags."""

import json

import pytest

from benchmarks import execution_parity


def test_paths_are_compared_with_the_reference_and_judged_by_their_tolerance(
        tmp_path, monkeypatch, capsys):
    # bfloat16 held to float32's rounding must fail: the verdict, not just the numbers.
    monkeypatch.setitem(execution_parity.TOLERANCE, "bfloat16", 1e-6)
    out = tmp_path / "parity.json"
    status = execution_parity.main(["--preset", "tiny", "--depth", "1", "--batch", "2",
                                    "--json", str(out)])
    assert status == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: bfloat16, bfloat16_fused differ from the reference beyond tolerance"]
    paths = json.loads(out.read_text())["paths"]
    assert paths["reference"]["embedding"] == paths["reference"]["gradient"] == 0.0
    # On a CPU "default" precision is full float32: the separate path is the reference's
    # program; the fused generators at most reorder float32 sums.
    assert paths["float32"]["embedding"] == 0.0 and paths["float32"]["ok"]
    assert paths["float32_fused"]["embedding"] < 1e-5 and paths["float32_fused"]["ok"]
    for name in ("bfloat16", "bfloat16_fused"):
        assert 1e-4 < paths[name]["embedding"] < 5e-2 and not paths[name]["ok"]
        assert 1e-4 < paths[name]["gradient"] < 5e-2
    assert "GPU only" in paths["bfloat16_cudnn_fused"]["skipped"]


@pytest.mark.parametrize("argv,needle", [
    (["--batch", "0"], "--batch and --slices must be at least 1"),
    (["--depth", "-1"], "--depth at least 0"),
])
def test_bad_flags_give_one_error_line(argv, needle, capsys):
    with pytest.raises(SystemExit) as exit_info:
        execution_parity.main(argv)
    assert exit_info.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "error: " in last and needle in last, last
