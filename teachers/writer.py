"""Writes the feature folder that ``mami_jax.data.teacher_features`` reads.

- ``run.json``: what this extraction computes (manifest checksum, teachers with their
  fingerprints, pooling, preprocessing and sizes, rows per shard, shard count, value
  windows, how splits were assigned). Every process of a run creates it exclusively or
  checks it at start (``ensure_run``), and checks it again before each shard it writes
  (``check_run``), so a resumed or parallel process that would mix other settings into
  one folder stops, before it writes a shard.
- ``features-KKKKK-of-NNNNN.tfrecord``: ``tf.train.Example`` records (TFRecord framing
  with the ``tfrecord`` package's masked CRC-32C) written under a temporary name and
  renamed when complete (``mami_jax.runtime.atomic_files.write_atomic``); then its
  sidecar ``.json`` (record count, SHA-256, skipped images, each record's file stamp, and
  ``run_sha256``: the digest of the settings of the run that wrote it, ``run_digest``). A
  shard is finished when both exist and agree, and finished shards are never redone; a
  shard of another run's settings (a folder gathered from machines run with different
  flags) is an error naming it, never taken as finished.
- ``index.json`` (and ``skipped.txt`` if images were skipped): written by whichever
  process finds every shard finished, each of this run's settings; the same content
  whoever writes it.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import json
import os
import struct
import tempfile

import numpy as np

from mami_jax.data import teacher_features as tf_files
from mami_jax.runtime import atomic_files, strict_json


class RunMismatchError(ValueError):
    """The output folder already holds another extraction."""


#: Sidecar key: ``run_digest`` of the settings (``run.json``) of the run that wrote the shard.
RUN_DIGEST_KEY = "run_sha256"


def _dump(value: dict) -> str:
    return strict_json.dumps(value, indent=1, sort_keys=True) + "\n"


def header(**fields) -> dict:
    return dict(format=tf_files.FORMAT, version=tf_files.FORMAT_VERSION, **fields)


def run_digest(run: dict) -> str:
    """SHA-256 of ``run`` as ``run.json`` holds it: equal for equal settings, whichever
    process or machine computes it (keys sorted, one JSON text)."""
    return hashlib.sha256(_dump(run).encode("utf-8")).hexdigest()


def _differing(existing: dict, run: dict) -> list[str]:
    run = json.loads(_dump(run))
    return sorted(k for k in set(existing) | set(run) if existing.get(k) != run.get(k))


def _create_exclusive(path: str, text: str) -> bool:
    """Publishes ``text`` as ``path`` unless ``path`` exists (False then): written whole
    under a temporary name, then hard-linked to ``path``, which fails when ``path``
    exists, so of processes starting together exactly one creates it and the others
    read it whole. Where the file system has no hard links, ``path`` is created with
    ``O_EXCL`` and written in place (exclusive still; a process reading it at that
    instant stops at its incomplete JSON rather than mixing)."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory,
                               prefix=f".{os.path.basename(path)}{atomic_files.TEMP_MARK}")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, atomic_files.file_mode())
        atomic_files.sync_file(tmp)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS):
                raise
            try:
                fd_out = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL,
                                 atomic_files.file_mode())
            except FileExistsError:
                return False
            with os.fdopen(fd_out, "w", encoding="utf-8") as f:
                f.write(text)
            atomic_files.sync_file(path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    atomic_files.sync_dir(directory)
    return True


def ensure_run(out_dir: str, run: dict, take_over: bool = True) -> None:
    """Creates ``run.json`` exclusively (``_create_exclusive``), or checks that the one
    there describes the same run.

    A folder that holds nothing else (a run stopped before its first shard, e.g. at an
    unreadable image, and then fixed) takes the new run's: there is nothing of the old
    one to mix. ``take_over`` False (the caller found no ``run.json`` when it started)
    refuses that too: the file was created meanwhile by another process starting into
    the same folder, with other settings, and of processes starting together the first
    keeps the folder. A run that was taken over while still computing its first shard
    stops at ``check_run`` before writing it, and a shard it wrote meanwhile carries its
    own ``run_digest``, which no process of the new run takes as finished
    (``shard_done``)."""
    path = os.path.join(out_dir, tf_files.RUN_FILE)
    if _create_exclusive(path, _dump(run)):
        return
    existing = tf_files.read_json(path)
    if existing == json.loads(_dump(run)):
        return
    if not take_over:
        raise RunMismatchError(f"{path}: created by another process with other settings "
                               f"while this one started (differs in "
                               f"{_differing(existing, run)}); run every process of a run "
                               "with the same flags, or use a new --out")
    if os.listdir(out_dir) != [tf_files.RUN_FILE]:
        raise RunMismatchError(f"{path} describes another extraction (differs in "
                               f"{_differing(existing, run)}: teachers, weights, manifest, "
                               "shard size, value windows or split); use a new --out")
    atomic_files.write_text_atomic(path, _dump(run))


def check_run(out_dir: str, run: dict) -> None:
    """RunMismatchError unless ``run.json`` still describes ``run``: another process,
    started later with other settings, may have taken the folder over while it held
    only ``run.json`` (``ensure_run``); this process's shards would then join a folder
    of other settings."""
    path = os.path.join(out_dir, tf_files.RUN_FILE)
    existing = tf_files.read_json(path)
    if existing != json.loads(_dump(run)):
        raise RunMismatchError(
            f"{path}: describes another extraction than this process's (differs in "
            f"{_differing(existing, run)}): a process with other settings took the folder "
            "over since this one started; run every process of a run with the same flags, "
            "or use a new --out")


def any_shard_done(out_dir: str) -> bool:
    """Whether ``out_dir`` holds a finished shard (its sidecar, written last)."""
    return bool(glob.glob(os.path.join(glob.escape(out_dir), tf_files.SIDECAR_PATTERN)))


def shard_done(out_dir: str, shard: int, num_shards: int, run: dict) -> dict | None:
    """The sidecar of a finished shard of ``run`` (this process's settings), else None.

    A finished shard whose sidecar records another run's digest (``run_digest``) is a
    RunMismatchError naming it: its features were computed with other settings (a folder
    gathered from machines run with different flags, or a process that started with
    others), and neither redoing it silently nor indexing it would be right. A sidecar
    with no digest, written before sidecars recorded one, is refused too: the folder's
    ``run.json`` matching says nothing about it, since the old writer checked
    ``run.json`` only when a process started, and the two ways a shard of other settings
    entered a folder (processes started with different flags, gathered folders) left
    exactly such sidecars beside a matching ``run.json``."""
    data = os.path.join(out_dir, tf_files.shard_name(shard, num_shards))
    side = os.path.join(out_dir, tf_files.sidecar_name(shard, num_shards))
    if not (os.path.isfile(data) and os.path.isfile(side)):
        return None
    meta = tf_files.read_json(side)
    if meta.get("sha256") != tf_files.file_sha256(data):
        return None
    digest = meta.get(RUN_DIGEST_KEY)
    if digest is None:
        raise RunMismatchError(
            f"{side}: written before sidecars recorded the settings of their run, so "
            f"whether {os.path.basename(data)} holds this run's features cannot be told; "
            "extract again into a new --out")
    if digest != run_digest(run):
        raise RunMismatchError(
            f"{side}: {os.path.basename(data)} was written by an extraction with other "
            f"settings than this run's (run.json); remove both files to compute the shard "
            "again with this run's settings, or use a new --out")
    return meta


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
                stamps: dict[str, str] | None = None, run: dict | None = None) -> dict:
    """Writes one shard and then its sidecar; returns the sidecar. ``stamps``: each
    record's ``image_signature.file_stamp`` (kept in the sidecar, so that training can tell
    features of images rewritten since under the same ids: ``teacher_join``). ``run``:
    the writing process's settings, checked against ``run.json`` first (``check_run``)
    and recorded in the sidecar as ``run_digest``; None takes the folder's ``run.json``
    as it is (a shard rewritten into a finished folder).

    TFRecord framing: little-endian uint64 length, its masked CRC-32C, the payload, the
    payload's masked CRC-32C (``tfrecord``'s ``TFRecordWriter.masked_crc``).
    """
    if run is None:
        run = tf_files.read_json(os.path.join(out_dir, tf_files.RUN_FILE))
    else:
        check_run(out_dir, run)
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
                  skipped=sorted(skipped), **{RUN_DIGEST_KEY: run_digest(run)},
                  **({tf_files.STAMPS_KEY: {i: stamps[i] for i, _ in records}}
                     if stamps is not None else {}))
    atomic_files.write_text_atomic(
        os.path.join(out_dir, tf_files.sidecar_name(shard, num_shards)), _dump(side))
    return side


def write_index_if_complete(out_dir: str, run: dict) -> dict | None:
    """``index.json`` once every shard is finished (None while some are missing), from
    ``run`` (this process's settings): only when ``run.json`` still describes them
    (``check_run``) and every shard was written with them (``shard_done``), so that the
    index never claims settings some shard's features were not computed with."""
    check_run(out_dir, run)
    n = int(run["num_shards"])
    sides = [shard_done(out_dir, k, n, run) for k in range(n)]
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
