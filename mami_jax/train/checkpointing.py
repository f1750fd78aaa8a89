"""Training checkpoints: orbax CheckpointManager over WORKDIR/checkpoints/<step>/.

Each step directory holds four items:
- ``params``: MaMI's parameters alone (what evaluation, embedding and the PyTorch
  export read; ``python -m mami_jax.convert export-torch --checkpoint`` accepts it);
- ``train``: every other parameter group (the heads only training uses, e.g. the
  identity classifier), optimizer state, step and RNG;
- ``data``: ``{"next_step": N}``, the sampler step of the next batch. The batches are a
  pure function of (seed, step) (``data/sampler.py``), so a resumed run rebuilds its
  loader at that step and reads exactly the batches it would have read, whatever its
  number of data workers or processes. (The grain iterator state saved here before
  depended on both: a resume with another ``data.num_workers`` was refused as damaged,
  or read other batches. Checkpoints that hold it resume the same way.)
- ``labels``: the identity-label map the classifier was trained with: identity key
  ("dataset/patient_id", see ``data/sampler.py``) -> classifier row.
The model config is written next to them as WORKDIR/model_config.json.

What is resumed is what was saved. Before a resume writes anything, the requested
model config is compared with model_config.json (``check_model_config``; the keys in
``EXECUTION_ONLY_KEYS`` change how, not what, the model computes and may differ) and
the training identities with the saved label map (``check_label_map``): a classifier
row must keep meaning the same patient. A checkpoint without a label map cannot be
checked and is refused for training (evaluation and embedding read ``params`` only
and still accept it). Every refusal and every damaged item (missing folder,
truncated file, unreadable JSON) raises ``CheckpointError`` naming the step
directory or file and the item. A ``params`` item that is readable but holds other
parameter names or shapes than the requested model config has (a model_config.json
edited after training) is not called damaged: the error says it holds another model
config's parameters and lists the first differences (``_other_config_message``).

orbax writes each step into ``<step>.orbax-checkpoint-tmp*`` and renames it when
complete, so a killed process never leaves a half-written checkpoint that would be
restored; ``Checkpointer.remove_unfinished_saves`` deletes those leftovers at the
next start. Files are created with the umask's permissions (orbax honours it); the
last N steps are kept.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from typing import Mapping

import jax
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from mami_jax.models.config import EXECUTION_KEYS, differing_values
from mami_jax.models.embed import abstract_params
from mami_jax.runtime import sharding
from mami_jax.runtime.atomic_files import write_text_atomic
from mami_jax.runtime.json_object import parse_json_object
from mami_jax.runtime.no_space import is_no_space, no_space_error
from mami_jax.runtime.orbax_noise import quiet_abandoned_save, quiet_failed_restore
from mami_jax.train.heads import MODEL_GROUP  # the ``params`` item; other groups are heads
from mami_jax.train.step import TrainState

MODEL_CONFIG_FILE = "model_config.json"
ITEMS = ("params", "train", "data", "labels")

#: Model config keys that may differ between the saved and the requested config: the
#: initialisation scheme (already spent on the saved weights), numeric precision and
#: rematerialisation change how the weights were made or are run, not their function.
EXECUTION_ONLY_KEYS = frozenset(EXECUTION_KEYS)

#: A step folder orbax had not finished writing (orbax's temporary-path suffix).
_UNFINISHED_STEP = re.compile(r"^\d+\.orbax-checkpoint-tmp")

#: How many example identities a label-map refusal lists per kind of change, and how
#: many differing parameters a refusal of another model config's checkpoint lists.
_EXAMPLES = 3


class CheckpointError(ValueError):
    """A checkpoint or model_config.json cannot be used as asked; the message names
    the file or step directory, the item or config key, and what differs."""


# ----------------------------------------------------------------------------------
# model_config.json


def model_config_path(workdir: str) -> str:
    return os.path.join(workdir, MODEL_CONFIG_FILE)


def write_model_config(workdir: str, model_cfg) -> None:
    """Atomic write (umask permissions) of the model config the checkpointed params use."""
    if jax.process_index() != 0:
        return
    write_text_atomic(model_config_path(workdir), model_cfg.to_json(indent=2))


def read_model_config(workdir: str) -> dict:
    """The saved model config as a dict; a missing, non-JSON or non-object file is a
    CheckpointError naming it."""
    path = model_config_path(workdir)
    try:
        with open(path, "rb") as f:
            text = f.read()
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing: the checkpoints of {workdir} cannot be "
                              "matched to a model config") from None
    return parse_json_object(text, path, "model config values", CheckpointError)


def model_config_differences(saved: Mapping, requested: Mapping) -> dict[str, tuple]:
    """key -> (saved value, requested value) for every key that changes the function
    (``models.config.differing_values``: ``EXECUTION_ONLY_KEYS`` may differ)."""
    return differing_values(saved, requested, ignore=EXECUTION_ONLY_KEYS)


def check_model_config(workdir: str, model_cfg, action: str) -> None:
    """Raises CheckpointError listing ``model.<key>: saved -> requested`` when
    ``model_cfg`` differs from WORKDIR/model_config.json in a key that changes the
    function. ``action`` says what is refused ("resume training", "evaluate")."""
    saved = read_model_config(workdir)
    differ = model_config_differences(saved, model_cfg.to_dict())
    if differ:
        listed = "; ".join(f"model.{k}: {a!r} -> {b!r}" for k, (a, b) in differ.items())
        raise CheckpointError(
            f"refusing to {action}: the requested model config differs from "
            f"{model_config_path(workdir)} (saved -> requested): {listed}. Use the saved "
            f"values, or a new workdir for a different model")


# ----------------------------------------------------------------------------------
# identity-label map


def label_map_payload(label_map: Mapping[str, int]) -> dict:
    return {"num_classes": len(label_map),
            "label_map": {str(k): int(v) for k, v in sorted(label_map.items(), key=lambda kv: kv[1])}}


def label_map_differences(saved: Mapping[str, int], requested: Mapping[str, int]):
    """(added, removed, moved): identity keys only ``requested`` has, only ``saved`` has,
    and (key, saved row, requested row) for keys whose classifier row changed; sorted."""
    added = sorted(set(requested) - set(saved))
    removed = sorted(set(saved) - set(requested))
    moved = [(k, saved[k], requested[k]) for k in sorted(set(saved) & set(requested))
             if saved[k] != requested[k]]
    return added, removed, moved


def check_label_map(saved: Mapping[str, int], requested: Mapping[str, int], where: str) -> None:
    """Raises CheckpointError with the counts (and a few examples) of added, removed and
    moved identities when the training identities differ from the saved ones."""
    added, removed, moved = label_map_differences(saved, requested)
    if not (added or removed or moved):
        return

    def examples(keys):
        more = ", ..." if len(keys) > _EXAMPLES else ""
        return ", ".join(keys[:_EXAMPLES]) + more

    parts = []
    if added:
        parts.append(f"{len(added)} added (e.g. {examples(added)})")
    if removed:
        parts.append(f"{len(removed)} removed (e.g. {examples(removed)})")
    if moved:
        parts.append(f"{len(moved)} moved to another classifier row (e.g. "
                     f"{examples([f'{k}: row {a} -> {b}' for k, a, b in moved])})")
    raise CheckpointError(
        f"refusing to resume training: the training patients differ from those the "
        f"identity classifier of {where} was trained with ({len(saved)} saved, "
        f"{len(requested)} now): {'; '.join(parts)}. Train with the same manifest, "
        f"splits and modalities, or in a new workdir")


def _parse_label_map(payload, where: str) -> dict[str, int]:
    mapping = payload.get("label_map") if isinstance(payload, dict) else None
    if not isinstance(mapping, dict) or not all(
            isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool)
            for k, v in mapping.items()):
        raise CheckpointError(f"{where}: item 'labels' is not an identity-label map "
                              "(expected {\"label_map\": {identity: row}})")
    return mapping


# ----------------------------------------------------------------------------------
# the checkpoint manager


def latest_step(workdir: str):
    """The latest finished step in WORKDIR/checkpoints, or None; creates nothing."""
    if not os.path.isdir(os.path.join(workdir, "checkpoints")):
        return None
    ckpt = Checkpointer(workdir, read_only=True)
    try:
        return ckpt.latest_step()
    finally:
        ckpt.close()


class Checkpointer:
    """The step directories of one workdir. ``read_only`` opens existing checkpoints
    (evaluation, embedding) without creating anything."""

    def __init__(self, workdir: str, keep: int = 3, read_only: bool = False):
        self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
        self.keep = keep
        if read_only:  # (orbax's own read_only option logs a warning on every open)
            options = ocp.CheckpointManagerOptions(create=False)
        else:
            options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=ITEMS)

    def latest_step(self):
        return self.manager.latest_step()

    def step_dir(self, step: int) -> str:
        return os.path.join(self.directory, str(step))

    def remove_unfinished_saves(self) -> list[str]:
        """Deletes step folders a killed save left unfinished; returns their paths.
        Call at start-up, before the first save."""
        removed = []
        if jax.process_index() != 0 or not os.path.isdir(self.directory):
            return removed
        for name in sorted(os.listdir(self.directory)):
            if _UNFINISHED_STEP.match(name):
                path = os.path.join(self.directory, name)
                shutil.rmtree(path)
                logging.warning("removed the unfinished checkpoint save %s", path)
                removed.append(path)
        return removed

    def check_items(self, step: int, items=ITEMS) -> None:
        """Raises CheckpointError naming the step directory and every missing item."""
        where = self.step_dir(step)
        found = sorted(os.listdir(where)) if os.path.isdir(where) else []
        missing = [item for item in items if item not in found]
        if missing == ["labels"] and "labels" in items:
            raise CheckpointError(
                f"checkpoint {where} has no identity-label map (item 'labels'; checkpoints "
                f"written by an older mami_jax lack it), so its classifier rows cannot be "
                f"matched to patients: refusing to resume training. --mode=eval/embed still "
                f"read it; train in a new workdir")
        if missing:
            raise CheckpointError(
                f"checkpoint {where} is damaged: item(s) {missing} missing (found {found}). "
                f"Delete that step directory to resume from an earlier step")

    def _restore_item(self, step: int, item: str, args):
        # Before, not after, a failure: the other reads' leftovers may be reported while
        # the failure is still on its way here.
        quiet_failed_restore()
        try:
            restored = self.manager.restore(step, args=ocp.args.Composite(**{item: args}))
        except Exception as e:  # orbax, tensorstore and json raise many types
            # The params item is what a model config determines; the train item's layout
            # (heads, optimizer state) what the training settings do: either, readable but
            # of another layout, is not damage.
            if item in ("params", "train") and isinstance(args, ocp.args.StandardRestore):
                other = _other_config_message(self.step_dir(step), item, args.item)
                if other:
                    raise CheckpointError(other) from e
            raise CheckpointError(
                f"checkpoint {self.step_dir(step)} is damaged: item '{item}' cannot be read "
                f"({_first_line(e)})") from e
        if item == "train" and isinstance(args, ocp.args.StandardRestore):
            _refuse_partial(self.step_dir(step), restored[item], args.item)
        return restored[item]

    def saved_label_map(self, step: int) -> dict[str, int]:
        self.check_items(step, ("labels",))
        payload = self._restore_item(step, "labels", ocp.args.JsonRestore())
        return _parse_label_map(payload, self.step_dir(step))

    def save(self, state: TrainState, label_map: Mapping[str, int]) -> None:
        step = int(jax.device_get(state.step))
        with self._saving():
            self.manager.save(step, args=ocp.args.Composite(
                params=ocp.args.StandardSave(state.params["mami"]),
                train=ocp.args.StandardSave(_train_item(state)),
                data=ocp.args.JsonSave({"next_step": step}),
                labels=ocp.args.JsonSave(label_map_payload(label_map))))

    def restore(self, step: int, abstract_state: TrainState) -> TrainState:
        """Restores into the shardings of ``abstract_state`` (ShapeDtypeStructs with
        sharding), one item at a time so that an error names the item. The data order
        needs nothing restored: the loader is rebuilt at ``step`` (the module docstring)."""
        self.check_items(step)
        a = abstract_state
        params = self._restore_item(step, "params",
                                    ocp.args.StandardRestore(a.params[MODEL_GROUP]))
        train = self._restore_item(step, "train", ocp.args.StandardRestore(_train_item(a)))
        return TrainState(step=train["step"], rng=train["rng"], opt_state=train["opt_state"],
                          params={MODEL_GROUP: params, **train["heads"]})

    def restore_params(self, step: int, abstract_params):
        """MaMI's parameters alone (``abstract_params``: ShapeDtypeStructs with sharding)."""
        self.check_items(step, ("params",))
        return self._restore_item(step, "params", ocp.args.StandardRestore(abstract_params))

    def wait(self) -> None:
        with self._saving():
            self.manager.wait_until_finished()

    @contextlib.contextmanager
    def _saving(self):
        """A save (or the wait for one) that fails for want of space is a ``NoSpaceError``
        saying so, with the step a rerun goes on from (orbax's own error is tensorstore's
        RESOURCE_EXHAUSTED on one of many arrays)."""
        try:
            yield
        except Exception as e:
            if not is_no_space(e):
                raise
            quiet_abandoned_save()
            finished = sorted(int(n) for n in os.listdir(self.directory) if n.isdigit())
            goes_on = (f"it goes on from step {finished[-1]}, the last finished checkpoint"
                       if finished else "it starts over, as no checkpoint is finished")
            raise no_space_error(
                self.directory, "saving a checkpoint",
                f"free space there (train.keep_checkpoints={self.keep} keeps that many steps) "
                f"and run the same command again: {goes_on}") from e

    def close(self) -> None:
        self.manager.close()


def restore_model_params(workdir: str, config, mesh, action: str = "evaluate",
                         step: int | None = None):
    """(step, MaMI params) of checkpoint ``step`` of ``workdir`` (the latest by default),
    placed per ``config.partition_rules`` on ``mesh``, after ``check_model_config``: what
    evaluation, embedding and inference read. ``action`` names the use in a refusal."""
    check_model_config(workdir, config.model, action)
    if step is None:
        step = latest_step(workdir)
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {os.path.join(workdir, 'checkpoints')}; "
                                    "train first")
    elif not os.path.isdir(os.path.join(workdir, "checkpoints", str(step))):
        raise FileNotFoundError(f"{os.path.join(workdir, 'checkpoints', str(step))}: no "
                                f"checkpoint of step {step}")
    abstract = abstract_params(config.model, config.model.image_size)
    shardings = sharding.tree_shardings(abstract, config.partition_rules, mesh)
    target = jax.tree_util.tree_map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
    ckpt = Checkpointer(workdir, read_only=True)
    try:
        return step, ckpt.restore_params(step, target)
    finally:
        ckpt.close()


def _path_name(path) -> str:
    """A pytree key path as "block_0/attn/qkv/kernel"."""
    return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))))
                    for k in path)


def _shapes(tree) -> dict[str, tuple]:
    """path name -> shape of every leaf (arrays, ShapeDtypeStructs or orbax metadata)."""
    return {_path_name(path): tuple(getattr(leaf, "shape", ()))
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _saved_shapes(item_dir: str) -> dict[str, tuple] | None:
    """path name -> shape of the arrays an item's orbax metadata lists; None when the
    metadata cannot be read (then the item is damaged, not of another config)."""
    handler = ocp.StandardCheckpointHandler()
    try:
        return _shapes(handler.metadata(epath.Path(item_dir)))
    except Exception:  # noqa: BLE001 - any unreadable metadata means a damaged item
        return None
    finally:
        handler.close()


def _other_config_message(step_dir: str, item: str, expected) -> str | None:
    """Why a ``params`` restore into ``expected`` failed, when the reason is that the
    checkpoint holds another model config's parameters; None otherwise.

    orbax reports that case as a tree-structure or shape error, which the caller would
    otherwise call damage. Here the item's metadata is read: when it is readable and
    lists other parameter names or shapes than ``expected`` (ShapeDtypeStructs of the
    requested model config), the message names the first ``_EXAMPLES`` differences.
    When it is unreadable, or agrees with ``expected`` (the data itself is bad), None.
    """
    saved = _saved_shapes(os.path.join(step_dir, item))
    if saved is None:
        return None
    wanted = _shapes(expected)
    differences = []
    for path in sorted(set(saved) | set(wanted)):
        if path not in wanted:
            differences.append(f"{path} {saved[path]} only in the checkpoint")
        elif path not in saved:
            differences.append(f"{path} {wanted[path]} only in the given config's model")
        elif saved[path] != wanted[path]:
            differences.append(f"{path}: {saved[path]} in the checkpoint, {wanted[path]} "
                               "in the given config's model")
    if not differences:
        return None
    more = ", ..." if len(differences) > _EXAMPLES else ""
    listed = f"({'; '.join(differences[:_EXAMPLES])}{more})"
    if item == "train":
        return (f"checkpoint {step_dir} holds the optimizer state and heads of other training "
                f"settings than the ones given: {len(differences)} entries of item 'train' "
                f"differ in name or shape {listed}. Settings such as optim.freeze, "
                "optim.grad_clip_norm, optim.lr_multipliers and loss.terms shape them: resume "
                "with the run's own (RUN/config.json), or train in a new workdir")
    return (f"checkpoint {step_dir} holds the parameters of another model config than the "
            f"one given: {len(differences)} parameters of item '{item}' differ in name or "
            f"shape {listed}. Use the model config the run was trained with")


def _refuse_partial(step_dir: str, restored, expected) -> None:
    """orbax restores a tree of fewer entries than asked for without a word (another
    ``optim.freeze`` leaves the moments of the newly trained parameters None, and the first
    step failed on them with a TypeError): an entry asked for and not restored is refused
    as a change of training settings."""
    missing = [_path_name(path) for path, leaf in jax.tree_util.tree_flatten_with_path(
        restored, is_leaf=lambda x: x is None)[0] if leaf is None]
    wanted = {_path_name(path) for path, _ in jax.tree_util.tree_flatten_with_path(expected)[0]}
    missing = [m for m in missing if m in wanted]
    if missing:
        more = ", ..." if len(missing) > _EXAMPLES else ""
        raise CheckpointError(
            f"checkpoint {step_dir} holds the optimizer state of other training settings than "
            f"the ones given: {len(missing)} entries of item 'train' are not in it "
            f"({'; '.join(missing[:_EXAMPLES])}{more}). Settings such as optim.freeze shape "
            "it: resume with the run's own (RUN/config.json), or train in a new workdir")


def _train_item(state: TrainState) -> dict:
    """What the ``train`` item holds: every parameter group but MaMI's, and the rest of
    the state (works alike on arrays and on ShapeDtypeStructs)."""
    heads = {g: p for g, p in state.params.items() if g != MODEL_GROUP}
    return {"heads": heads, "opt_state": state.opt_state, "step": state.step, "rng": state.rng}


def _first_line(error: BaseException) -> str:
    """``Type: first line`` of the error at the root of ``error``'s causes: tensorstore's
    own error names the file and what is wrong with it (``OUT_OF_RANGE: Error reading
    ".../0.0.0" ...``), where the one orbax raises names an array index and ends in a
    Python repr cut at its first line."""
    root = error
    while root.__cause__ is not None:
        root = root.__cause__
    for e in (root, error):
        text = str(e).split("See full TensorStore details")[0].strip()
        if text:
            return f"{type(e).__name__}: {text.splitlines()[0][:300]}"
    return repr(error)
