"""benchmarks/step_profile.py: HLO attribution on a hand-written module, torch phase
attribution on hand-made events, and a profiled tiny training step on both sides."""

import json
import types

import pytest

from benchmarks import step_profile

HLO = """HloModule jit_step

%fused_computation.1 (p0: f32[4,8], p1: f32[8,8]) -> f32[4,8] {
  %p0 = f32[4,8]{1,0} parameter(0)
  %p1 = f32[8,8]{1,0} parameter(1)
  ROOT %dot.1 = f32[4,8]{1,0} dot(%p0, %p1), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}

%fused_computation.2 (p0: f32[4,8]) -> f32[4,8] {
  %p0 = f32[4,8]{1,0} parameter(0)
  ROOT %tanh.1 = f32[4,8]{1,0} tanh(%p0), metadata={op_name="jit(step)/transpose(jvp(TrainModel))/mami/block_3/mlp/tanh"}
}

ENTRY %main (x: f32[4,8], w: f32[8,8]) -> f32[4,8] {
  %x = f32[4,8]{1,0} parameter(0), metadata={op_name="x"}
  %w = f32[8,8]{1,0} parameter(1)
  %ynn_fusion.1 = f32[4,8]{1,0} fusion(%x, %w), kind=kCustom, calls=%fused_computation.1, metadata={op_name="jit(step)/jvp(TrainModel)/mami/block_0/attn/qkv/dot_general"}
  %ynn_fusion.2 = f32[4,8]{1,0} fusion(%ynn_fusion.1, %w), kind=kCustom, calls=%fused_computation.1
  %loop_fusion = f32[4,8]{1,0} fusion(%ynn_fusion.2), kind=kLoop, calls=%fused_computation.2
  %copy.3 = f32[4,8]{1,0} copy(%loop_fusion), metadata={op_name="jit(step)/cond/branch_1_fun/add"}
  %copy_bitcast_fusion.5 = f32[8,8]{1,0} fusion(%w), kind=kLoop, calls=%fused_computation.2, metadata={op_name="state.params['mami']['w']"}
  ROOT %add.4 = f32[4,8]{1,0} add(%copy.3, %x), metadata={op_name="jit(step)/jvp()/add"}
}
"""


def test_hlo_instructions_get_phase_kind_and_part():
    ins, mm = step_profile.parse_hlo(HLO)
    assert mm == {"fused_computation.1"}
    got = {name: step_profile.classify_instruction(ins[name], mm)
           for name in ("ynn_fusion.1", "ynn_fusion.2", "loop_fusion", "copy.3", "add.4",
                        "copy_bitcast_fusion.5")}
    assert got["ynn_fusion.1"] == ("forward", "matmul", "mami/block_*/attn")
    # no metadata anywhere: the op_name of the instruction scheduled before it
    assert got["ynn_fusion.2"] == ("forward", "matmul", "mami/block_*/attn")
    # no metadata on the fusion: the op_name inside its computation
    assert got["loop_fusion"] == ("backward", "other", "mami/block_*/mlp")
    assert got["copy.3"] == ("update", "copy", "optimizer")
    assert got["add.4"] == ("forward", "other", "loss")
    # a relayout of a parameter before the forward pass uses it
    assert got["copy_bitcast_fusion.5"] == ("forward", "copy", "inputs (relayout)")


def test_torch_events_get_the_phase_of_their_scope_or_autograd():
    def event(name, parent=None):
        return types.SimpleNamespace(name=name, cpu_parent=parent)
    update = event("train_step.update")
    backward_node = event("autograd::engine::evaluate_function: MmBackward0")
    assert step_profile.torch_phase(event("aten::mul_", event("aten::foreach", update))) == "update"
    assert step_profile.torch_phase(event("aten::mm", backward_node)) == "backward"
    assert step_profile.torch_phase(event("aten::mm", event("train_step.forward"))) == "forward"
    assert step_profile.torch_phase(event("aten::mm")) is None


def test_tiny_training_steps_are_profiled_on_both_sides(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        report = step_profile.run(step_profile.parse_args(
            ["--preset", "tiny", "--rounds", "1", "--batch", "8", "--num-classes", "8",
             "--json", str(tmp_path / "p.json"), "--png", str(tmp_path / "p.png")]))
    finally:
        torch.set_num_threads(threads)
    saved = json.loads((tmp_path / "p.json").read_text())
    assert saved["buckets_ms"] == report["buckets_ms"]
    for side in ("flax", "torch"):
        buckets = saved["buckets_ms"][side]
        for phase in step_profile.PHASES:
            assert sum(buckets[f"{phase}/{k}"] for k in step_profile.KINDS) > 0, (side, phase)
        assert buckets["forward/matmul"] > 0 and buckets["backward/matmul"] > 0
    parts = saved["flax_parts_ms"]
    assert any(k.startswith("forward/mami/block_*") for k in parts)
    assert any(k.startswith("update/") for k in parts)
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"
    assert "flax/torch" in capsys.readouterr().out


def test_batch_not_made_of_whole_patients_is_refused(capsys):
    with pytest.raises(SystemExit) as exit_info:
        step_profile.parse_args(["--batch", "6", "--images-per-patient", "4"])
    assert exit_info.value.code == 2
    assert "--batch 6" in capsys.readouterr().err.strip().splitlines()[-1]
