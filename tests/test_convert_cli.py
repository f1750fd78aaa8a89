"""``python -m mami_jax.convert``: the three commands end to end on tiny configs."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from mami_jax.convert import to_torch_state_dict, torch_io
from mami_jax.convert.__main__ import main
from mami_jax.convert.checkpoint_dir import load_params, save_params
from mami_jax.convert.mapping import build_table, flatten_params
from tests.test_convert_clip import (openai_config, openai_state_dict, tiny_hf_clip,
                                      torchscript_holding)
from tests.test_convert_io import assert_same_params, released_style_file
from tests.test_convert_mapping import random_params
from tests.test_model import tiny_config

torch = pytest.importorskip("torch")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def config_file(tmp_path, cfg):
    path = tmp_path / "model_config.json"
    path.write_text(cfg.to_json())
    return str(path)


def test_import_official_then_export_round_trip(tmp_path, capsys):
    cfg = tiny_config()
    params = random_params(cfg)
    pth = str(tmp_path / "released.pth")
    released_style_file(pth, cfg, params)
    ckpt = str(tmp_path / "ckpt")
    code, out, err = run(capsys, "import-official", "--pth", pth, "--out", ckpt,
                         "--model-config", config_file(tmp_path, cfg))
    assert code == 0, err
    n_unused = sum(not e.used for e in build_table(cfg))
    n_used = len(build_table(cfg)) - n_unused
    total = sum(v.size for v in flatten_params(params).values())
    assert f"keys loaded: {n_used}" in out
    assert f"keys ignored (unused by the forward pass): {n_unused}" in out
    assert "ln_post.weight" in out and "module. prefix removed" in out
    assert f"parameters: {total:,}" in out
    loaded, cfg2 = load_params(ckpt)
    assert cfg2 == cfg
    assert_same_params(loaded, params)

    # Refuses to overwrite; a bad file exits 1 with the file named, no traceback.
    code, _, err = run(capsys, "import-official", "--pth", pth, "--out", ckpt)
    assert code == 1 and "exists" in err
    code, _, err = run(capsys, "import-official", "--pth", pth, "--out", str(tmp_path / "x"))
    assert code == 1 and "wrong shape" in err and pth in err  # default config is ViT-B/16

    for name in ("model.pth", "model.safetensors"):
        out_file = str(tmp_path / name)
        code, out, err = run(capsys, "export-torch", "--checkpoint", ckpt, "--out", out_file)
        assert code == 0, err
        assert f"keys written: {n_used + n_unused} ({n_used} from params, {n_unused} unused" in out
        assert "converter layout" in out
        loaded = torch_io.load_file(out_file)
        state = loaded["model"] if name.endswith(".pth") else loaded
        from mami_jax.convert.torch_model import MaMITorch
        MaMITorch(cfg).load_state_dict(state, strict=True)
        want = to_torch_state_dict(params, cfg)
        for key, value in want.items():
            np.testing.assert_array_equal(state[key].numpy(), value, err_msg=key)


def trainer_workdir(tmp_path, steps):
    """(workdir, model config, params): a trainer's layout, the same tiny random params
    saved as each of ``steps``."""
    import orbax.checkpoint as ocp

    cfg = tiny_config(use_slice_adapter=False)
    params = random_params(cfg)
    workdir = tmp_path / "work"
    workdir.mkdir()
    (workdir / "model_config.json").write_text(cfg.to_json())
    manager = ocp.CheckpointManager(str(workdir / "checkpoints"), item_names=("params",))
    for step in steps:
        manager.save(step, args=ocp.args.Composite(params=ocp.args.StandardSave(params)))
    manager.wait_until_finished()
    manager.close()
    return workdir, cfg, params


def test_export_from_trainer_step_directory_with_module_prefix(tmp_path, capsys):
    workdir, cfg, params = trainer_workdir(tmp_path, (7,))
    out_file = str(tmp_path / "step7.pth")
    code, out, err = run(capsys, "export-torch", "--checkpoint",
                         str(workdir / "checkpoints" / "7"), "--out", out_file, "--module-prefix")
    assert code == 0, err
    assert "trainer step layout" in out
    sd = torch_io.load_file(out_file)["model"]
    assert all(k.startswith("module.") for k in sd)
    assert not any("adapter_pre_attn" in k for k in sd)
    # And back in through import-official, config read from the file.
    ckpt = str(tmp_path / "back")
    code, out, err = run(capsys, "import-official", "--pth", out_file, "--out", ckpt)
    assert code == 0, err
    assert "model config: file" in out
    back, cfg2 = load_params(ckpt)
    assert cfg2 == cfg
    assert_same_params(back, params)


def test_import_clip_from_hf_directory_and_torchscript(tmp_path, capsys):
    # One block: the fresh MaMI initialisation this command compiles costs time per parameter.
    # Width 64, one head: the OpenAI layout's 64-wide heads (the archive below).
    cfg = openai_config(depth=1)
    cfg_file = config_file(tmp_path, cfg)
    hf_dir = str(tmp_path / "hf")
    hf = tiny_hf_clip(hf_dir, num_hidden_layers=1, hidden_size=64, intermediate_size=256,
                      num_attention_heads=1)
    ckpt = str(tmp_path / "from_hf")
    code, out, err = run(capsys, "import-clip", "--source", hf_dir, "--out", ckpt,
                         "--model-config", cfg_file, "--seed", "3")
    assert code == 0, err
    n_backbone = 5 + 12 * cfg.depth  # patch, class, pos, ln_pre (2); 12 arrays a block
    assert f"backbone parameters loaded: {n_backbone} arrays" in out
    assert "huggingface layout" in out and "seed 3" in out
    params, cfg2 = load_params(ckpt)
    assert cfg2 == cfg
    np.testing.assert_array_equal(
        params["block_0"]["mlp"]["fc"]["kernel"],
        hf.state_dict()["encoder.layers.0.mlp.fc1.weight"].numpy().T)
    # ComPA keeps the model's own initialisation: default init has zero up-factor statics
    # and small random down-factor statics.
    assert not np.any(params["compa"]["block_0"]["q_up"]["static"])
    assert np.any(params["compa"]["block_0"]["q_down"]["static"])

    # OpenAI TorchScript archive into the checkpoint just written (--init-from keeps its
    # ComPA, adapters and head, and its config).
    archive = str(tmp_path / "ViT-tiny.pt")
    state = openai_state_dict(cfg)
    torchscript_holding(state, archive)
    code, _, err = run(capsys, "import-clip", "--source", archive, "--out",
                       str(tmp_path / "ts"), "--init-from", ckpt)
    assert code == 1 and "--allow-torchscript" in err
    code, out, err = run(capsys, "import-clip", "--source", archive, "--out",
                         str(tmp_path / "ts"), "--init-from", ckpt, "--allow-torchscript")
    assert code == 0, err
    assert "openai layout" in out and f"from {ckpt}" in out
    assert re.search(r"source keys ignored: 6 ", out)  # ln_post (2), proj, 3 text-tower keys
    again, _ = load_params(str(tmp_path / "ts"))
    np.testing.assert_array_equal(
        again["block_0"]["attn"]["out"]["bias"],
        state["visual.transformer.resblocks.0.attn.out_proj.bias"].float().numpy())
    for key in ("compa/block_0/fc_up/out/kernel", "block_0/adapter/fc1/kernel", "head_fc2/bias"):
        np.testing.assert_array_equal(flatten_params(again)[key], flatten_params(params)[key])


def test_python_dash_m_entry_point(tmp_path):
    cfg = tiny_config(use_compa=False)
    ckpt = str(tmp_path / "ckpt")
    save_params(ckpt, random_params(cfg), cfg)
    out_file = str(tmp_path / "m.safetensors")
    proc = subprocess.run([sys.executable, "-m", "mami_jax.convert", "export-torch",
                           "--checkpoint", ckpt, "--out", out_file],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "keys written:" in proc.stdout and os.path.exists(out_file)
    proc = subprocess.run([sys.executable, "-m", "mami_jax.convert", "export-torch",
                           "--checkpoint", str(tmp_path / "nowhere"), "--out", out_file],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "checkpoint directory not found" in proc.stderr


def test_overwrite_replaces_earlier_outputs_that_are_not_inputs(tmp_path, capsys):
    """--overwrite still does its job where no input is at stake: export-torch replaces an
    earlier file (refused without the flag, the file unchanged), import-official replaces
    an earlier converter folder from a file kept elsewhere."""
    cfg = tiny_config(use_compa=False, depth=1)
    first, second = random_params(cfg), random_params(cfg, seed=1)
    ckpt = str(tmp_path / "ckpt")
    save_params(ckpt, first, cfg)
    out_file = str(tmp_path / "m.pth")
    code, _, err = run(capsys, "export-torch", "--checkpoint", ckpt, "--out", out_file)
    assert code == 0, err
    earlier = open(out_file, "rb").read()
    save_params(ckpt, second, cfg, overwrite=True)
    code, _, err = run(capsys, "export-torch", "--checkpoint", ckpt, "--out", out_file)
    assert (code, err) == (1, f"error: --out {out_file} exists; choose a new file name or "
                              "pass --overwrite\n")
    assert open(out_file, "rb").read() == earlier
    code, out, err = run(capsys, "export-torch", "--checkpoint", ckpt, "--out", out_file,
                         "--overwrite")
    assert code == 0, err
    assert out.endswith(f"  wrote {out_file}\n")
    want = to_torch_state_dict(second, cfg)
    got = torch_io.load_file(out_file)["model"]
    for key, value in want.items():
        np.testing.assert_array_equal(got[key].numpy(), value, err_msg=key)

    # The export (of the second params) back over the folder it came from, from outside it.
    save_params(ckpt, first, cfg, overwrite=True)
    code, _, err = run(capsys, "import-official", "--pth", out_file, "--out", ckpt,
                       "--overwrite")
    assert code == 0, err
    assert_same_params(load_params(ckpt)[0], second)


def test_import_official_over_a_link_replaces_the_folder_it_points_to(tmp_path, capsys):
    """`--out LINK --overwrite` renamed the link aside and put a new folder in its place:
    the target kept the old weights, a '.current.mami-replaced' link stayed beside, and the
    next --overwrite failed with a bare '[Errno 20] Not a directory'."""
    cfg = tiny_config(use_compa=False, depth=1)
    first, second, third = (random_params(cfg, seed=s) for s in range(3))
    target = tmp_path / "models" / "v1"
    save_params(str(target), first, cfg)
    link = tmp_path / "current"
    link.symlink_to(target, target_is_directory=True)
    for i, params in enumerate((second, third)):
        pth = str(tmp_path / "files" / f"{i}.pth")
        os.makedirs(os.path.dirname(pth), exist_ok=True)
        released_style_file(pth, cfg, params)
        code, out, err = run(capsys, "import-official", "--pth", pth, "--out", str(link),
                             "--model-config", config_file(tmp_path / "files", cfg),
                             "--overwrite")
        assert (code, err) == (0, "")
        assert out.endswith(f"  wrote {os.path.realpath(target)}\n")
        assert link.is_symlink() and os.readlink(link) == str(target)
        assert_same_params(load_params(str(target))[0], params)
        assert sorted(os.listdir(tmp_path)) == ["current", "files", "models"]
        assert os.listdir(tmp_path / "models") == ["v1"]


def test_an_upper_case_safetensors_extension_is_safetensors(tmp_path, capsys):
    """The command line took `--out m.SAFETENSORS` (its check ignores the case) but the
    writer, testing the case, wrote a torch.save zip under that name; and a genuine
    safetensors file named `.SafeTensors` went to torch.load, whose error called it
    'not a weights-only checkpoint'."""
    import zipfile

    from safetensors import safe_open
    cfg = tiny_config(use_compa=False, depth=1)
    params = random_params(cfg)
    ckpt = str(tmp_path / "ckpt")
    save_params(ckpt, params, cfg)
    upper = str(tmp_path / "m.SAFETENSORS")
    code, _, err = run(capsys, "export-torch", "--checkpoint", ckpt, "--out", upper)
    assert (code, err) == (0, "")
    assert not zipfile.is_zipfile(upper)
    with safe_open(upper, framework="numpy") as f:
        assert f.metadata()["mami_config"] == cfg.to_json()
        np.testing.assert_array_equal(f.get_tensor("class_embedding"),
                                      params["class_embedding"])
    mixed = str(tmp_path / "m.SafeTensors")
    os.rename(upper, mixed)
    code, out, err = run(capsys, "import-official", "--pth", mixed, "--out",
                         str(tmp_path / "back"))
    assert (code, err) == (0, "")
    assert "model config: file" in out
    back, cfg2 = load_params(str(tmp_path / "back"))
    assert cfg2 == cfg
    assert_same_params(back, params)


def test_export_of_an_earlier_step_carries_the_config_that_trained_it(tmp_path, capsys):
    """A run resumed at step 2 with other settings keeps the config of steps 1..2 as
    ``config.until_step_2.json``; exporting step 2 embedded ``config.json`` (the later
    settings), so the applications read the exported file with a config it never had."""
    from mami_jax.config import base_config
    from mami_jax.convert.official import embedded_experiment

    workdir, _, _ = trainer_workdir(tmp_path, (2, 5))
    early, late = base_config(), base_config()
    early.optim.learning_rate, late.optim.learning_rate = 0.001, 0.5
    (workdir / "config.until_step_2.json").write_text(early.to_json())
    (workdir / "config.json").write_text(late.to_json())
    rates = {}
    for name, checkpoint in (("step2", workdir / "checkpoints" / "2"),
                             ("step5", workdir / "checkpoints" / "5"), ("latest", workdir)):
        out_file = str(tmp_path / f"{name}.pth")
        code, out, err = run(capsys, "export-torch", "--checkpoint", str(checkpoint),
                             "--out", out_file)
        assert code == 0, err
        rates[name] = json.loads(embedded_experiment(out_file))["optim"]["learning_rate"]
    assert rates == {"step2": 0.001, "step5": 0.5, "latest": 0.5}
