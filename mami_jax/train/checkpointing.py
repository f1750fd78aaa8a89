"""Training checkpoints: orbax CheckpointManager over WORKDIR/checkpoints/<step>/.

Each step directory holds three items:
- ``params``: MaMI's parameters alone (what evaluation, embedding and the PyTorch
  export read; ``python -m mami_jax.convert export-torch --checkpoint`` accepts it);
- ``train``: the identity classifier, optimizer state, step and RNG;
- ``data``: the grain iterator state, so a resumed run reads exactly the batches
  it would have read.
The model config is written next to them as WORKDIR/model_config.json.

orbax writes each step into a temporary directory and renames it when complete,
so a killed process never leaves a half-written checkpoint that would be
restored; the last N steps are kept.
"""

from __future__ import annotations

import json
import os

import grain
import jax
import orbax.checkpoint as ocp

from mami_jax.train.step import TrainState


def model_config_path(workdir: str) -> str:
    return os.path.join(workdir, "model_config.json")


def write_model_config(workdir: str, model_cfg) -> None:
    """Atomic write of the model config used to build the checkpointed params."""
    if jax.process_index() != 0:
        return
    os.makedirs(workdir, exist_ok=True)
    path = model_config_path(workdir)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(model_cfg.to_json(indent=2))
    os.replace(tmp, path)


def read_model_config(workdir: str) -> dict:
    with open(model_config_path(workdir)) as f:
        return json.load(f)


class Checkpointer:
    def __init__(self, workdir: str, keep: int = 3):
        self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
            item_names=("params", "train", "data"))

    def latest_step(self):
        return self.manager.latest_step()

    def save(self, state: TrainState, data_iterator) -> None:
        step = int(jax.device_get(state.step))
        train = {"classifier": state.params["classifier"], "opt_state": state.opt_state,
                 "step": state.step, "rng": state.rng}
        self.manager.save(step, args=ocp.args.Composite(
            params=ocp.args.StandardSave(state.params["mami"]),
            train=ocp.args.StandardSave(train),
            data=grain.checkpoint.CheckpointSave(data_iterator)))

    def restore(self, step: int, abstract_state: TrainState, data_iterator) -> TrainState:
        """Restores into the shardings of ``abstract_state`` (ShapeDtypeStructs with sharding)."""
        a = abstract_state
        abstract_train = {"classifier": a.params["classifier"], "opt_state": a.opt_state,
                          "step": a.step, "rng": a.rng}
        restored = self.manager.restore(step, args=ocp.args.Composite(
            params=ocp.args.StandardRestore(a.params["mami"]),
            train=ocp.args.StandardRestore(abstract_train),
            data=grain.checkpoint.CheckpointRestore(data_iterator)))
        train = restored["train"]
        return TrainState(step=train["step"], rng=train["rng"], opt_state=train["opt_state"],
                          params={"mami": restored["params"], "classifier": train["classifier"]})

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()
