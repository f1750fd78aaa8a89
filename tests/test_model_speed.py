"""benchmarks/model_speed.py: variants (fused and separate ComPA generators), ratios,
JSON, and its one-line errors. Tiny models; the timings themselves are not checked."""

import argparse
import json

import pytest

from benchmarks import model_speed
from tests.test_model import tiny_config


def test_measure_fused_against_separate_on_a_tiny_model():
    args = argparse.Namespace(batch=1, slices=2, size=32, rounds=2, dtype="float32",
                              mode="forward", variants="mami,mami_separate,plain_vit",
                              compa_impl="fused")
    out = model_speed.measure(args, tiny_config(depth=1))
    assert set(out) == {"mami", "mami_separate", "plain_vit"}
    assert out["plain_vit"]["ratio_to_plain_vit"] == 1.0
    assert len(out["mami"]["times_ms"]) == 2 and out["mami"]["ratio_to_separate"] > 0
    assert "ratio_to_separate" not in out["mami_separate"]
    # The fusion moves work into fewer operations; it adds no FLOPs (concatenations
    # are copies), and both do more than the plain ViT.
    assert out["mami"]["gflops"] == pytest.approx(out["mami_separate"]["gflops"], rel=0.01)
    assert out["mami"]["flop_ratio_to_plain_vit"] > 1.0


def test_built_variants_use_the_asked_generator_path(monkeypatch):
    seen = []
    monkeypatch.setattr(model_speed, "MaMI", lambda cfg: seen.append(cfg.compa_impl) or 1 / 0)
    args = argparse.Namespace(dtype="float32", compa_impl="separate")
    for variant in ("mami", "mami_separate"):
        with pytest.raises(ZeroDivisionError):
            model_speed.build(variant, args, tiny_config())
    assert seen == ["separate", "separate"]
    args.compa_impl = "fused"
    with pytest.raises(ZeroDivisionError):
        model_speed.build("compa_only", args, tiny_config())
    assert seen[-1] == "fused"


def test_the_attention_variant_changes_only_the_attention(monkeypatch):
    seen = {}
    monkeypatch.setattr(model_speed, "MaMI", lambda cfg: seen.update(cfg.to_dict()) or 1 / 0)
    args = argparse.Namespace(dtype="bfloat16", compa_impl="fused")
    configs = []
    for variant in ("mami", "mami_xla_attention"):
        with pytest.raises(ZeroDivisionError):
            model_speed.build(variant, args, tiny_config())
        configs.append(dict(seen))
    changed = {k for k in configs[0] if configs[0][k] != configs[1][k]}
    assert changed == {"attention"} and configs[1]["attention"] == "xla"
    assert configs[0]["dtype"] == "bfloat16" and configs[0]["use_compa"]


@pytest.mark.parametrize("argv,needle,status", [
    (["--rounds", "0"], "--rounds, --batch and --slices must be at least 1", 2),
    (["--compa-impl", "batched"], "--compa-impl", 2),
    (["--variants", "mami,bogus,plain_vit"], "'bogus'", 1),     # found after parsing
])
def test_bad_flags_give_one_error_line(argv, needle, status, capsys):
    try:
        code = model_speed.main(argv)
    except SystemExit as e:
        code = e.code
    assert code == status
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and needle in err[0], err


def test_json_holds_settings_and_load(tmp_path, monkeypatch, capsys):
    fake = {"mami": {"median_ms": 2.0, "cpu_ms": 3.0, "images_per_s": 1.0,
                     "ratio_to_plain_vit": 2.0,
                     "gflops": 1.0, "flop_ratio_to_plain_vit": 1.1, "ratio_to_separate": 0.5},
            "plain_vit": {"median_ms": 1.0, "cpu_ms": 2.0, "images_per_s": 2.0,
                          "ratio_to_plain_vit": 1.0,
                          "gflops": 0.9, "flop_ratio_to_plain_vit": 1.0}}
    monkeypatch.setattr(model_speed, "measure", lambda args: fake)
    path = tmp_path / "speed.json"
    model_speed.main(["--variants", "mami,plain_vit", "--json", str(path)])
    saved = json.loads(path.read_text())
    assert saved["results"] == fake
    assert saved["settings"]["compa_impl"] == "auto" and saved["settings"]["batch"] == 8
    assert len(saved["settings"]["load_average"]["start"]) == 3
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("mami"))
    assert row.split()[1:3] == ["2.0", "3.0"] and "1.500" in row and "0.500" in row
