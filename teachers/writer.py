"""Writes the feature folder that ``mami_jax.data.teacher_features`` reads.

- ``run.json``: what this extraction computes (manifest checksum, teachers with their
  fingerprints, pooling, preprocessing and sizes, rows per shard, shard count). Every
  process of a run writes or checks it, so a resumed or parallel process that would
  mix different teachers, weights or manifests into one folder stops at once.
- ``features-KKKKK-of-NNNNN.tfrecord``: ``tf.train.Example`` records (TFRecord framing
  with the ``tfrecord`` package's masked CRC-32C) written under a temporary name and
  renamed when complete (``mami_jax.runtime.atomic_files.write_atomic``); then its
  sidecar ``.json`` (record count, SHA-256, skipped images, each record's file stamp). A shard is finished when
  both exist and agree, and finished shards are never redone.
- ``index.json`` (and ``skipped.txt`` if images were skipped): written by whichever
  process finds every shard finished; the same content whoever writes it.
"""

from __future__ import annotations

import glob
import json
import os
import struct

import numpy as np

from mami_jax.data import teacher_features as tf_files
from mami_jax.runtime import atomic_files, strict_json


class RunMismatchError(ValueError):
    """The output folder already holds another extraction."""


def _dump(value: dict) -> str:
    return strict_json.dumps(value, indent=1, sort_keys=True) + "\n"


def header(**fields) -> dict:
    return dict(format=tf_files.FORMAT, version=tf_files.FORMAT_VERSION, **fields)


def ensure_run(out_dir: str, run: dict) -> None:
    """Writes ``run.json``, or checks that the one there describes the same run. A folder
    that holds nothing else (a run stopped before its first shard, e.g. at an unreadable
    image, and then fixed) takes the new run's: there is nothing of the old one to mix."""
    path = os.path.join(out_dir, tf_files.RUN_FILE)
    if os.path.isfile(path):
        existing = tf_files.read_json(path)
        if existing == json.loads(_dump(run)):
            return
        if os.listdir(out_dir) != [tf_files.RUN_FILE]:
            diff = sorted(k for k in set(existing) | set(run) if existing.get(k) != run.get(k))
            raise RunMismatchError(f"{path} describes another extraction (differs in {diff}: "
                                   "teachers, weights, manifest or shard size); use a new --out")
    atomic_files.write_text_atomic(path, _dump(run))


def any_shard_done(out_dir: str) -> bool:
    """Whether ``out_dir`` holds a finished shard (its sidecar, written last)."""
    return bool(glob.glob(os.path.join(glob.escape(out_dir), tf_files.SIDECAR_PATTERN)))


def shard_done(out_dir: str, shard: int, num_shards: int) -> dict | None:
    """The sidecar of a finished shard, else None."""
    data = os.path.join(out_dir, tf_files.shard_name(shard, num_shards))
    side = os.path.join(out_dir, tf_files.sidecar_name(shard, num_shards))
    if not (os.path.isfile(data) and os.path.isfile(side)):
        return None
    meta = tf_files.read_json(side)
    return meta if meta.get("sha256") == tf_files.file_sha256(data) else None


def remove_own_temporaries(out_dir: str, shards) -> None:
    """Temporaries a killed process left for ``shards`` (only this process writes those)."""
    if not os.path.isdir(out_dir):
        return
    prefixes = tuple(f".{name}{atomic_files.TEMP_MARK}" for k, n in shards
                     for name in (tf_files.shard_name(k, n), tf_files.sidecar_name(k, n)))
    for name in os.listdir(out_dir):
        if name.startswith(prefixes):
            os.unlink(os.path.join(out_dir, name))


def serialize_example(image_id: str, features: dict[str, np.ndarray]) -> bytes:
    """A ``tf.train.Example`` (the ``tfrecord`` package's schema) with ``image_id`` and one
    ``feature/<teacher>`` float list per teacher, serialised deterministically (protobuf
    maps otherwise serialise in a per-process order, and shards must not depend on it)."""
    from tfrecord import example_pb2

    feature = {tf_files.ID_KEY: example_pb2.Feature(
        bytes_list=example_pb2.BytesList(value=[image_id.encode("utf-8")]))}
    for name in sorted(features):
        feature[tf_files.FEATURE_PREFIX + name] = example_pb2.Feature(
            float_list=example_pb2.FloatList(value=np.asarray(features[name], np.float32).tolist()))
    example = example_pb2.Example(features=example_pb2.Features(feature=feature))
    return example.SerializeToString(deterministic=True)


def write_shard(out_dir: str, shard: int, num_shards: int,
                records: list[tuple[str, dict[str, np.ndarray]]], skipped: list[str],
                stamps: dict[str, str] | None = None) -> dict:
    """Writes one shard and then its sidecar; returns the sidecar. ``stamps``: each
    record's ``image_signature.file_stamp`` (kept in the sidecar, so that training can tell
    features of images rewritten since under the same ids: ``teacher_join``).

    TFRecord framing: little-endian uint64 length, its masked CRC-32C, the payload, the
    payload's masked CRC-32C (``tfrecord``'s ``TFRecordWriter.masked_crc``).
    """
    path = os.path.join(out_dir, tf_files.shard_name(shard, num_shards))

    def write(tmp):
        with open(tmp, "wb") as f:
            for image_id, feats in records:
                payload = serialize_example(image_id, feats)
                length = struct.pack("<Q", len(payload))
                f.write(length + tf_files.masked_crc(length) + payload
                        + tf_files.masked_crc(payload))

    atomic_files.write_atomic(path, write)
    side = header(shard=shard, num_shards=num_shards, file=os.path.basename(path),
                  records=len(records), sha256=tf_files.file_sha256(path),
                  teacher_records={t: sum(t in f for _, f in records)
                                   for t in sorted({t for _, f in records for t in f})},
                  skipped=sorted(skipped),
                  **({tf_files.STAMPS_KEY: {i: stamps[i] for i, _ in records}}
                     if stamps is not None else {}))
    atomic_files.write_text_atomic(
        os.path.join(out_dir, tf_files.sidecar_name(shard, num_shards)), _dump(side))
    return side


def write_index_if_complete(out_dir: str, run: dict) -> dict | None:
    """``index.json`` once every shard is finished (None while some are missing)."""
    n = int(run["num_shards"])
    sides = [shard_done(out_dir, k, n) for k in range(n)]
    if any(s is None for s in sides):
        return None
    skipped = sorted(i for s in sides for i in s["skipped"])
    teachers = {name: dict(info, records=sum(s["teacher_records"].get(name, 0) for s in sides))
                for name, info in run["teachers"].items()}
    index = dict(run, teachers=teachers, skipped=len(skipped),
                 records=sum(s["records"] for s in sides),
                 shards=[dict(file=s["file"], records=s["records"], sha256=s["sha256"])
                         for s in sides])
    if skipped:
        atomic_files.write_text_atomic(os.path.join(out_dir, tf_files.SKIPPED_FILE),
                                       "".join(i + "\n" for i in skipped))
    atomic_files.write_text_atomic(os.path.join(out_dir, tf_files.INDEX_FILE), _dump(index))
    return index
