"""The feature-shift setting travels with the weights: the released function by default,
recorded in every checkpoint and export, never swapped silently."""

import json
import os

import numpy as np
import pytest

from mami_jax.convert import torch_io
from mami_jax.convert.__main__ import main
from mami_jax.convert.checkpoint_dir import load_params, save_params
from mami_jax.convert.official import (ConfigMismatchError, ShiftInputError, export_official,
                                       load_official)
from tests.test_convert_io import released_style_file
from tests.test_convert_mapping import flax_forward, random_params
from tests.test_model import tiny_config

torch = pytest.importorskip("torch")


def torch_embeddings(cfg, state, x):
    from mami_jax.convert.torch_model import MaMITorch
    module = MaMITorch(cfg)
    module.load_state_dict({k: torch.as_tensor(np.asarray(v)) for k, v in state.items()},
                           strict=True)
    with torch.no_grad():
        out = module.eval()(torch.from_numpy(x))
    return {k: v.numpy() for k, v in out.items()}


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def config_file(tmp_path, cfg, name="model_config.json"):
    path = tmp_path / name
    path.write_text(cfg.to_json())
    return str(path)


def test_authors_file_import_export_import_keeps_the_authors_function(tmp_path):
    """Authors' layout without a config -> our params -> our export -> our params again.

    The reference is MaMITorch with the shift reading the router, the authors' function,
    fed the authors' file directly; Flax on the twice-imported params must equal it.
    """
    authors_cfg = tiny_config(shift_input="router")
    params = random_params(authors_cfg, seed=11)
    authors = str(tmp_path / "authors.pth")
    released_style_file(authors, authors_cfg, params)   # module. prefix, no mami_config
    first = load_official(authors, tiny_config())
    assert first.cfg.shift_input == "router" and first.config_source == "argument"
    exported = str(tmp_path / "export.pth")
    export_official(exported, first.params, first.cfg)
    assert json.loads(torch_io.load_file(exported)["mami_config"])["shift_input"] == "router"
    second = load_official(exported)
    assert second.config_source == "file" and second.cfg.shift_input == "router"

    authors_state = {k[len("module."):]: v for k, v in
                     torch_io.load_file(authors)["model"].items()}
    rng = np.random.default_rng(5)
    for t in (1, 3):
        x = rng.standard_normal((2, t, 32, 32, 3), dtype=np.float32)
        want = torch_embeddings(authors_cfg, authors_state, x)
        got = flax_forward(second.cfg, second.params, x)
        for key in ("embedding", "local_map"):
            w = want[key]
            np.testing.assert_allclose(np.asarray(getattr(got, key)), w, rtol=0,
                                       atol=1e-5 * np.abs(w).max(), err_msg=f"T={t} {key}")
        # The test can tell the two shifts apart: the other one is far off.
        other = flax_forward(tiny_config(shift_input="patch_mean"), second.params, x)
        gap = np.abs(np.asarray(other.embedding) - want["embedding"]).max()
        assert gap > 0.05 * np.abs(want["embedding"]).max(), (t, gap)


def test_export_of_another_shift_is_refused_unless_opted_in(tmp_path):
    cfg = tiny_config(shift_input="patch_mean")
    params = random_params(cfg)
    path = str(tmp_path / "mean.pth")
    with pytest.raises(ShiftInputError, match="shift_input='patch_mean'") as err:
        export_official(path, params, cfg)
    assert "allow_non_released_shift=True" in str(err.value)
    assert not os.path.exists(path)
    export_official(path, params, cfg, allow_non_released_shift=True)
    assert json.loads(torch_io.load_file(path)["mami_config"])["shift_input"] == "patch_mean"
    # Our loader reads the setting back and computes the exported function.
    back = load_official(path)
    assert back.config_source == "file" and back.cfg.shift_input == "patch_mean"
    x = np.random.default_rng(2).standard_normal((1, 2, 32, 32, 3), dtype=np.float32)
    want = torch_embeddings(cfg, torch_io.load_file(path)["model"], x)["embedding"]
    got = np.asarray(flax_forward(back.cfg, back.params, x).embedding)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max())


def test_cli_export_refuses_another_shift_and_the_flag_records_it(tmp_path, capsys):
    cfg = tiny_config(shift_input="patch_mean", use_slice_adapter=False)
    ckpt = str(tmp_path / "ckpt")
    save_params(ckpt, random_params(cfg), cfg)
    out_file = str(tmp_path / "m.safetensors")
    code, out, err = run(capsys, "export-torch", "--checkpoint", ckpt, "--out", out_file)
    assert code == 1 and out == ""
    assert len(err.splitlines()) == 1 and err.startswith("error: refusing to export")
    assert "shift_input='patch_mean'" in err and "--allow-non-released-shift" in err
    assert not os.path.exists(out_file)
    code, out, err = run(capsys, "export-torch", "--checkpoint", ckpt, "--out", out_file,
                         "--allow-non-released-shift")
    assert code == 0, err
    assert "shift_input='patch_mean'" in out
    meta = json.loads(torch_io.read_safetensors_metadata(out_file)["mami_config"])
    assert meta["shift_input"] == "patch_mean"


def test_authors_file_under_another_shift_is_refused_unless_opted_in(tmp_path, capsys):
    cfg = tiny_config()
    params = random_params(cfg)
    authors = str(tmp_path / "authors.pth")
    released_style_file(authors, cfg, params)
    mean_cfg = tiny_config(shift_input="patch_mean")
    with pytest.raises(ShiftInputError) as err:
        load_official(authors, mean_cfg)
    assert authors in str(err.value) and "shift_input='patch_mean'" in str(err.value)
    result = load_official(authors, mean_cfg, allow_non_released_shift=True)
    assert result.cfg.shift_input == "patch_mean"

    mean_json = config_file(tmp_path, mean_cfg)
    code, _, err = run(capsys, "import-official", "--pth", authors, "--out",
                       str(tmp_path / "c1"), "--model-config", mean_json)
    assert code == 1 and len(err.splitlines()) == 1 and "shift_input='patch_mean'" in err
    assert not os.path.exists(tmp_path / "c1")
    code, out, err = run(capsys, "import-official", "--pth", authors, "--out",
                         str(tmp_path / "c1"), "--model-config", mean_json,
                         "--allow-non-released-shift")
    assert code == 0, err
    assert "shift_input='patch_mean'" in out
    assert load_params(str(tmp_path / "c1"))[1].shift_input == "patch_mean"


def test_setting_is_recorded_in_checkpoints_and_exports(tmp_path):
    for shift in ("router", "patch_mean"):
        cfg = tiny_config(shift_input=shift)
        params = random_params(cfg)
        ckpt = str(tmp_path / f"ckpt_{shift}")
        save_params(ckpt, params, cfg)
        with open(os.path.join(ckpt, "model_config.json")) as f:
            assert json.load(f)["shift_input"] == shift
        assert load_params(ckpt)[1].shift_input == shift
        path = str(tmp_path / f"{shift}.pth")
        export_official(path, params, cfg, allow_non_released_shift=True)
        assert json.loads(torch_io.load_file(path)["mami_config"])["shift_input"] == shift


def _without_shift_input(cfg) -> str:
    values = json.loads(cfg.to_json())
    del values["shift_input"]
    return json.dumps(values)


def test_saved_config_without_shift_input_is_refused(tmp_path):
    cfg = tiny_config(use_compa=False)
    params = random_params(cfg)
    ckpt = str(tmp_path / "ckpt")
    save_params(ckpt, params, cfg)
    with open(os.path.join(ckpt, "model_config.json"), "w") as f:
        f.write(_without_shift_input(cfg))
    with pytest.raises(ValueError) as err:
        load_params(ckpt)
    assert "model_config.json: model config lacks 'shift_input'" in str(err.value)

    from mami_jax.convert import to_torch_state_dict
    state = to_torch_state_dict(params, cfg)
    for name in ("old.pth", "old.safetensors"):
        path = str(tmp_path / name)
        torch_io.save_state_dict(path, state, extra={"mami_config": _without_shift_input(cfg)})
        with pytest.raises(ValueError) as err:
            load_official(path)
        assert f"{path}:mami_config: model config lacks 'shift_input'" in str(err.value)


def test_embedded_config_differing_from_the_given_one_is_refused(tmp_path, capsys):
    cfg = tiny_config()
    params = random_params(cfg)
    path = str(tmp_path / "export.pth")
    export_official(path, params, cfg)
    with pytest.raises(ConfigMismatchError) as err:
        load_official(path, tiny_config(shift_input="patch_mean"))
    assert "shift_input: saved 'router', given 'patch_mean'" in str(err.value)
    with pytest.raises(ConfigMismatchError) as err:
        load_official(path, tiny_config(rank=2, adapter_width=16))
    assert "adapter_width: saved 8, given 16; rank: saved 4, given 2" in str(err.value)
    # Execution settings are not part of the function: a given dtype is used as given.
    result = load_official(path, tiny_config(dtype="bfloat16", remat=True))
    assert result.cfg.dtype == "bfloat16" and result.config_source == "argument"

    code, _, err = run(capsys, "import-official", "--pth", path, "--out", str(tmp_path / "c"),
                       "--model-config", config_file(tmp_path, tiny_config(depth=3)))
    assert code == 1 and len(err.splitlines()) == 1
    assert "depth: saved 2, given 3" in err and path in err
