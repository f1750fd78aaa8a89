"""What the data, sampler and evaluation code resolve from each experiment config.

``effective(config)`` lists, per modality, the transform parameters, slice count,
flip / rotate / stain / evaluation-view flags, the source weights handed to the
sampler, the evaluation batch size and every other config value (flattened);
``quickstart_digest(config, cache_dir)`` adds, on small phantoms, the sampler's
plan of the first steps and a digest of one training and one evaluation view per
modality. ``tests/fixtures/config_effective.json`` holds the dump of every
``configs/*.py`` with and without ``runlocal``; a re-laid configuration must
resolve to the same dump (tests/test_config_effective.py).

Regenerate (only when a change of the recipe is intended):
    python tests/config_dump.py tests/fixtures/config_effective.json
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import os
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_FILES = ("all", "xray", "ct", "fundus", "mri", "pathology")
CONFIG_ARGS = ("", "runlocal")

#: Keys whose value is listed per modality or elsewhere in the dump, or not compared
#: (train.debug_kill_at_step was a test hook, now removed from the config).
_NOT_IN_OTHER = ("data.modalities", "data.source_weights", "data.only_modalities",
                 "data.teacher_features",  # added after the fixture was dumped
                 "eval.batch_size", "train.debug_kill_at_step")


def load_config(name: str, arg: str):
    """``configs/<name>.py`` loaded by path, as ``config_flags`` does."""
    if REPO not in sys.path:
        sys.path.insert(0, REPO)
    path = os.path.join(REPO, "configs", f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"config_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg or None)


def _flat(tree, prefix=""):
    out = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        else:
            out[key] = v
    return out


def _jsonable(v):
    if isinstance(v, (tuple, list)):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    return v


def effective(config) -> dict:
    from mami_jax.data.config import modality_settings, sampler_source_weights

    d = config.data
    settings = modality_settings(d)
    per = {}
    for m, s in settings.items():
        per[m] = {
            "augment": dataclasses.asdict(s.augment),
            "slices": s.slices,
            "flip": s.flip,
            "rotate": s.rotate,
            "stain_normalize": s.stain_normalize,
            "eval_whole": s.eval_whole,
            "eval_symmetry": s.eval_symmetry,
            "eval_view": [s.augment.resize_size, s.eval_image_size],
        }
    flat = _flat(config.to_dict())
    other = {k: v for k, v in flat.items()
             if not any(k == n or k.startswith(n + ".") for n in _NOT_IN_OTHER)}
    return _jsonable({
        "modalities": per,
        "sampler_source_weights": sampler_source_weights(d, settings),
        "eval_batch_size": int(config.eval.batch_size),
        "only_modalities": list(d.only_modalities),
        "other": other,
    })


def _digest(x: np.ndarray) -> list:
    x = np.ascontiguousarray(x, np.float32)
    return [list(x.shape), round(float(x.mean()), 6), hashlib.sha1(x.tobytes()).hexdigest()[:16]]


def quickstart_digest(config, cache_dir: str, steps: int = 12) -> dict:
    """The sampler's first ``steps`` plans and one training / evaluation view per modality,
    on small phantoms (20 patients, 48 px, 4 slices, the config's pathology field)."""
    from mami_jax.data import example_reader, pipeline
    from mami_jax.data.loading import load_rows
    from mami_jax.data.manifest import MODALITIES

    with config.unlocked():
        config.phantoms.update(dict(patients=20, visits=3, image_size=48, slices=4,
                                    cache_dir=cache_dir))
    rows = load_rows(config, cache_dir)
    loader = pipeline.make_train_loader(rows, config.data, seed=config.seed)
    plans = []
    for step in range(steps):
        plan = loader.plan(step)
        src = loader.sources[plan.source]
        plans.append([src.name, src.num_slices, round(src.weight, 9), plan.rows.tolist(),
                      plan.labels.tolist()])
    views = {}
    for m in MODALITIES:
        index = next((i for i, r in enumerate(rows) if r.modality == m and r.split == "train"), None)
        if index is None:
            continue
        train = example_reader.read_example(rows[index], config.data,
                                      np.random.default_rng([config.seed, 0, 1, index]))
        views[m] = {"row": index, "train": _digest(train),
                    "eval": _digest(example_reader.read_example(rows[index], config.data))}
    return {"plans": plans, "views": views}


def dump_all(cache_dir: str) -> dict:
    out = {}
    for name in CONFIG_FILES:
        for arg in CONFIG_ARGS:
            out[f"{name}.py:{arg}" if arg else f"{name}.py"] = effective(load_config(name, arg))
    out["quickstart"] = quickstart_digest(load_config("all", "runlocal"), cache_dir)
    return out


if __name__ == "__main__":
    import tempfile

    target = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        REPO, "tests", "fixtures", "config_effective.json")
    with tempfile.TemporaryDirectory() as tmp:
        data = dump_all(os.environ.get("MAMI_DUMP_PHANTOMS", tmp))
    from mami_jax.runtime.atomic_files import write_text_atomic

    write_text_atomic(target, json.dumps(data, indent=1, sort_keys=True) + "\n")
    print(f"wrote {target}")
