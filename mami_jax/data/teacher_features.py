"""Reads the teacher features that ``python -m teachers.extract`` stored as TFRecords.

The JAX side never runs the (PyTorch) teachers: it reads their features from a folder
holding ``features-KKKKK-of-NNNNN.tfrecord`` shards, one ``.json`` sidecar per shard,
``run.json`` (what the run computes) and ``index.json`` (written once every shard is
complete). Each record is a standard ``tf.train.Example`` with ``image_id`` (bytes) and
``feature/<teacher>`` (float list) for every teacher that applies to that image's
modality, so TensorFlow's own ``tf.data.TFRecordDataset`` parses the shards too; here
they are read without TensorFlow: the record framing (length, masked CRC-32C of the
length, payload, masked CRC-32C of the payload) is checked record by record, and the
payload is parsed with the ``tf.train.Example`` protobuf schema that the ``tfrecord``
package ships.

Every problem is an error naming the shard and the record (index and image id): a
CRC mismatch or truncated record, a feature whose size differs from the index, a
duplicated image id, an image id absent from the manifest, a shard whose SHA-256
differs from the index. Features come back bit-exact (float32, as written).
"""

from __future__ import annotations

import dataclasses
import json
import os
import struct
from typing import Iterable, Iterator, Mapping, Sequence

import numpy as np

from mami_jax.runtime.file_digest import file_sha256

#: ``format`` field of run.json / index.json; bump ``FORMAT_VERSION`` on any change.
FORMAT = "mami_jax-teacher-features"
FORMAT_VERSION = 1
INDEX_FILE = "index.json"
RUN_FILE = "run.json"
SKIPPED_FILE = "skipped.txt"
FEATURE_PREFIX = "feature/"
ID_KEY = "image_id"


class TeacherFeatureError(ValueError):
    """Stored teacher features are corrupt or inconsistent; the message names the file,
    the record and the image id where known."""


def shard_name(shard: int, num_shards: int) -> str:
    """File name of shard ``shard`` of ``num_shards`` (the sidecar swaps the extension)."""
    return f"features-{shard:05d}-of-{num_shards:05d}.tfrecord"


def sidecar_name(shard: int, num_shards: int) -> str:
    return sidecar_of(shard_name(shard, num_shards))


def sidecar_of(shard_file: str) -> str:
    """The sidecar's file name of the shard file ``shard_file``."""
    return shard_file[: -len(".tfrecord")] + ".json"


#: Sidecar key: {image_id: ``image_signature.file_stamp`` of its files when extracted}.
STAMPS_KEY = "file_stamps"

#: A glob matching every ``sidecar_name``.
SIDECAR_PATTERN = "features-*-of-*.json"


def masked_crc(data: bytes) -> bytes:
    """TFRecord's masked CRC-32C of ``data``, 4 little-endian bytes (the tfrecord writer's)."""
    from tfrecord.writer import TFRecordWriter

    return TFRecordWriter.masked_crc(data)


def iter_records(path: str) -> Iterator[tuple[int, bytes]]:
    """(record index, payload) of every record of a TFRecord file, CRCs checked."""
    with open(path, "rb") as f:
        data = f.read()
    pos, index = 0, 0
    while pos < len(data):
        where = f"{path}: record {index} (byte {pos})"
        if len(data) - pos < 12:
            raise TeacherFeatureError(f"{where}: truncated record header")
        length_bytes = data[pos:pos + 8]
        if masked_crc(length_bytes) != data[pos + 8:pos + 12]:
            raise TeacherFeatureError(f"{where}: length CRC mismatch (corrupt record)")
        (length,) = struct.unpack("<Q", length_bytes)
        start, end = pos + 12, pos + 12 + length
        if end + 4 > len(data):
            raise TeacherFeatureError(f"{where}: truncated record ({length} bytes announced)")
        payload = data[start:end]
        if masked_crc(payload) != data[end:end + 4]:
            raise TeacherFeatureError(f"{where}: data CRC mismatch (corrupt record)")
        yield index, payload
        pos, index = end + 4, index + 1


def parse_example(payload: bytes, where: str) -> tuple[str, dict[str, np.ndarray]]:
    """(image_id, {teacher: float32 vector}) of one serialised ``tf.train.Example``."""
    from google.protobuf.message import DecodeError
    from tfrecord import example_pb2

    example = example_pb2.Example()
    try:
        example.ParseFromString(payload)
    except DecodeError as e:
        raise TeacherFeatureError(f"{where}: not a tf.train.Example ({e})") from None
    feature = example.features.feature
    if ID_KEY not in feature or len(feature[ID_KEY].bytes_list.value) != 1:
        raise TeacherFeatureError(f"{where}: no single {ID_KEY!r} bytes value")
    image_id = feature[ID_KEY].bytes_list.value[0].decode("utf-8")
    values = {}
    for key, value in feature.items():
        if key == ID_KEY:
            continue
        if not key.startswith(FEATURE_PREFIX) or value.WhichOneof("kind") != "float_list":
            raise TeacherFeatureError(f"{where} (image_id {image_id!r}): unexpected key {key!r}")
        values[key[len(FEATURE_PREFIX):]] = np.asarray(value.float_list.value, np.float32)
    return image_id, values


def read_json(path: str) -> dict:
    try:
        with open(path) as f:
            value = json.load(f)
    except FileNotFoundError:
        raise TeacherFeatureError(f"{path}: missing") from None
    except json.JSONDecodeError as e:
        raise TeacherFeatureError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(value, dict) or value.get("format") != FORMAT:
        raise TeacherFeatureError(f"{path}: not a {FORMAT} file")
    if value.get("version") != FORMAT_VERSION:
        raise TeacherFeatureError(f"{path}: format version {value.get('version')}, this reader "
                                  f"reads {FORMAT_VERSION}")
    return value


def read_index(features_dir: str) -> dict:
    """``index.json`` of a finished extraction (an error if some shard is still missing)."""
    path = os.path.join(features_dir, INDEX_FILE)
    if os.path.isfile(features_dir):
        name = os.path.basename(features_dir)
        inside = name in (INDEX_FILE, RUN_FILE) or name.startswith("features-")
        raise TeacherFeatureError(
            f"{features_dir}: a file, not a feature folder ("
            + (f"give the folder that holds it, {os.path.dirname(features_dir) or '.'}"
               if inside else "a feature folder is what python -m teachers.extract --out "
               "writes") + ")")
    if not os.path.isdir(features_dir):
        raise TeacherFeatureError(f"{features_dir}: no such folder (a feature folder is what "
                                  "python -m teachers.extract --out writes)")
    if not os.path.isfile(path) and os.path.isfile(os.path.join(features_dir, RUN_FILE)):
        raise TeacherFeatureError(f"{path}: missing; the extraction in {features_dir} has not "
                                  "finished every shard (run it again to complete it)")
    if not os.path.isfile(path):
        raise TeacherFeatureError(f"{path}: missing; {features_dir} is no feature folder of "
                                  "python -m teachers.extract (which writes index.json last)")
    return read_json(path)


@dataclasses.dataclass(frozen=True)
class TeacherFeatures:
    """One teacher's stored features: ``vectors[k]`` belongs to ``image_ids[k]``."""

    name: str
    info: dict               # the index entry: dims, pooling, preprocessing, fingerprint...
    image_ids: tuple[str, ...]
    vectors: np.ndarray      # (N, feature_dim) float32

    def by_id(self) -> dict[str, np.ndarray]:
        return dict(zip(self.image_ids, self.vectors))


def read_shard(path: str, dims: Mapping[str, int]) -> Iterator[tuple[int, str, dict]]:
    """(record index, image_id, {teacher: vector}) of one shard; sizes checked against ``dims``."""
    for index, payload in iter_records(path):
        image_id, values = parse_example(payload, f"{path}: record {index}")
        for name, vec in values.items():
            where = f"{path}: record {index} (image_id {image_id!r})"
            if name not in dims:
                raise TeacherFeatureError(f"{where}: teacher {name!r} is not in the index "
                                          f"(teachers {sorted(dims)})")
            if vec.size != dims[name]:
                raise TeacherFeatureError(f"{where}: feature/{name} has {vec.size} values, the "
                                          f"index says {dims[name]}")
        yield index, image_id, values


def load_features(features_dir: str, teachers: Sequence[str] | None = None,
                  manifest_ids: Iterable[str] | None = None, manifest_name: str = "the manifest"
                  ) -> dict[str, TeacherFeatures]:
    """Every stored feature of ``teachers`` (default: all in the index), checked.

    Shards are read in index order; their SHA-256 must match the index, every record's
    CRCs must hold, each image id may appear once, and (when ``manifest_ids`` is given)
    must be one of them. ``teachers`` is a list of names: one name as a string is a
    TypeError (it was read as a list of its letters, each "not extracted").
    """
    if isinstance(teachers, str):
        raise TypeError(f"teachers: a list of teacher names, not one name ({teachers!r}): "
                        f"[{teachers!r}]")
    index = read_index(features_dir)
    infos = index["teachers"]
    wanted = list(infos) if teachers is None else list(teachers)
    unknown = [t for t in wanted if t not in infos]
    if unknown:
        raise TeacherFeatureError(f"{features_dir}: teachers {unknown} were not extracted "
                                  f"(stored: {sorted(infos)})")
    dims = {name: int(info["feature_dim"]) for name, info in infos.items()}
    known = None if manifest_ids is None else set(manifest_ids)
    seen: dict[str, str] = {}
    ids = {t: [] for t in wanted}
    vecs = {t: [] for t in wanted}
    for shard in index["shards"]:
        path = os.path.join(features_dir, shard["file"])
        if not os.path.isfile(path):
            raise TeacherFeatureError(f"{path}: listed in {INDEX_FILE} but missing")
        count = 0
        for rec, image_id, values in read_shard(path, dims):
            where = f"{path}: record {rec} (image_id {image_id!r})"
            if image_id in seen:
                raise TeacherFeatureError(f"{where}: duplicate image_id, first at {seen[image_id]}")
            seen[image_id] = f"{shard['file']} record {rec}"
            if known is not None and image_id not in known:
                raise TeacherFeatureError(f"{where}: image_id not in {manifest_name}")
            for t in wanted:
                if t in values:
                    ids[t].append(image_id)
                    vecs[t].append(values[t])
            count += 1
        if count != shard["records"]:
            raise TeacherFeatureError(f"{path}: {count} records, {INDEX_FILE} says "
                                      f"{shard['records']}")
        if file_sha256(path) != shard["sha256"]:
            raise TeacherFeatureError(f"{path}: SHA-256 differs from {INDEX_FILE} (file changed "
                                      "after extraction)")
    return {t: TeacherFeatures(t, infos[t], tuple(ids[t]),
                               np.stack(vecs[t]) if vecs[t] else np.zeros((0, dims[t]), np.float32))
            for t in wanted}


def load_file_stamps(features_dir: str) -> dict[str, str]:
    """{image_id: the ``file_stamp`` its files had when its features were extracted}, from
    the shards' sidecars; images of shards written before stamps were kept are absent."""
    stamps: dict[str, str] = {}
    for shard in read_index(features_dir)["shards"]:
        side = read_json(os.path.join(features_dir, sidecar_of(shard["file"])))
        value = side.get(STAMPS_KEY, {})
        if not isinstance(value, dict):
            raise TeacherFeatureError(f"{os.path.join(features_dir, sidecar_of(shard['file']))}:"
                                      f" {STAMPS_KEY} is no object")
        stamps.update(value)
    return stamps
