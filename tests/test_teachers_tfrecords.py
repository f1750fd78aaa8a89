"""Teacher features as TFRecords: bit-exact read-back, resumable and split extraction, and
every inconsistency an error naming the shard and the record."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from mami_jax.data import teacher_features as tf_files
from mami_jax.data.manifest import read_manifest
from mami_jax.phantoms import generator
from mami_jax.runtime.atomic_files import TEMP_MARK
from teachers import extract, registry, writer
from teachers.loaders import load_teacher, run_batch
from teachers.preprocess import teacher_input
from mami_jax.data.decode import decode
from mami_jax.data.image_signature import file_stamp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    out = tmp_path_factory.mktemp("ph") / "phantoms"
    return generator.generate(str(out), patients=4, visits=2, image_size=32, slices=2, workers=1)


@pytest.fixture(scope="module")
def single_run(phantoms, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("feats") / "one")
    index = extract.run(phantoms, "anatomy", out, rows_per_shard=7, show_progress=False)
    return out, index


def _files(folder):
    return {name: open(os.path.join(folder, name), "rb").read() for name in sorted(os.listdir(folder))}


def test_random_tiny_features_read_back_bit_exact(phantoms, tmp_path, monkeypatch):
    out = str(tmp_path / "f")
    written = {}
    real = writer.write_shard

    def capture(out_dir, shard, num_shards, records, skipped, stamps, run):
        written.update((i, f["random_tiny"].copy()) for i, f in records)
        return real(out_dir, shard, num_shards, records, skipped, stamps, run=run)

    monkeypatch.setattr(writer, "write_shard", capture)
    index = extract.run(phantoms, "random_tiny", out, rows_per_shard=10, batch_size=5,
                        show_progress=False)
    rows = read_manifest(phantoms)
    assert index["records"] == len(rows) == 24 and len(index["shards"]) == 3
    assert index["teachers"]["random_tiny"]["feature_dim"] == 64
    assert index["teachers"]["random_tiny"]["records"] == len(rows)
    stored = tf_files.load_features(out, manifest_ids=[r.image_id for r in rows])["random_tiny"]
    assert stored.image_ids == tuple(r.image_id for r in rows)
    assert stored.vectors.dtype == np.float32
    assert np.array_equal(stored.vectors.view(np.uint32),
                          np.stack([written[i] for i in stored.image_ids]).view(np.uint32))
    # and they are the teacher's features of the decoded, preprocessed images
    teacher = load_teacher(registry.get_spec("random_tiny"))
    direct = run_batch(teacher, np.stack([teacher_input(decode(r.path), teacher.spec) for r in rows]))
    np.testing.assert_allclose(stored.vectors, direct, rtol=1e-4, atol=1e-5)
    assert np.abs(stored.vectors[0] - stored.vectors[1]).max() > 1e-3


def test_index_records_teacher_facts(single_run, phantoms):
    out, index = single_run
    info = index["teachers"]["anatomy"]
    assert info["feature_dim"] == 256 and info["dtype"] == "float32"
    assert info["fingerprint"].startswith("sha256:") and info["pooling"]
    assert index["manifest"]["rows"] == len(read_manifest(phantoms))
    for shard in index["shards"]:
        assert tf_files.file_sha256(os.path.join(out, shard["file"])) == shard["sha256"]
    assert sum(s["records"] for s in index["shards"]) == index["records"] == 24
    # each record's file stamp, taken when it was read: what training checks the files by
    stamps = tf_files.load_file_stamps(out)
    rows = {r.image_id: r for r in read_manifest(phantoms)}
    assert len(stamps) == 24
    assert all(stamps[i] == file_stamp(rows[i].path) for i in stamps)


def test_killed_extraction_resumes_without_redoing_finished_shards(phantoms, single_run, tmp_path,
                                                                   monkeypatch):
    out = str(tmp_path / "resumed")
    real = writer.write_shard
    calls = []

    def dies_on_second(*args, **kwargs):
        calls.append(args[1])
        if len(calls) == 2:
            raise KeyboardInterrupt("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(writer, "write_shard", dies_on_second)
    with pytest.raises(KeyboardInterrupt):
        extract.run(phantoms, "anatomy", out, rows_per_shard=7, show_progress=False)
    first = os.path.join(out, tf_files.shard_name(0, 4))
    stat = os.stat(first)
    assert not os.path.exists(os.path.join(out, tf_files.INDEX_FILE))
    # what a SIGKILL during shard 1 leaves behind
    stale = os.path.join(out, f".{tf_files.shard_name(1, 4)}{TEMP_MARK}x1y2")
    open(stale, "wb").write(b"half a shard")

    calls.clear()
    monkeypatch.setattr(writer, "write_shard", lambda *a, **k: calls.append(a[1]) or real(*a, **k))
    index = extract.run(phantoms, "anatomy", out, rows_per_shard=7, show_progress=False)
    assert calls == [1, 2, 3]                                  # shard 0 not redone
    assert os.stat(first).st_mtime_ns == stat.st_mtime_ns and os.stat(first).st_ino == stat.st_ino
    assert not os.path.exists(stale)
    assert index is not None and _files(out) == _files(single_run[0])


def test_two_processes_give_the_union_of_one_run(phantoms, single_run, tmp_path):
    out = str(tmp_path / "split")
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    procs = [subprocess.Popen([sys.executable, "-m", "teachers.extract", "--manifest", phantoms,
                               "--teachers", "anatomy", "--out", out, "--rows-per-shard", "7",
                               "--shard", str(i), "--num-shards", "2"],
                              cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for i in range(2)]
    for p in procs:
        stdout, stderr = p.communicate(timeout=300)
        assert p.returncode == 0, stderr
    assert _files(out) == _files(single_run[0])


def test_other_teachers_in_the_same_folder_are_refused(phantoms, single_run, tmp_path):
    out = str(tmp_path / "mixed")
    shutil.copytree(single_run[0], out)
    with pytest.raises(writer.RunMismatchError, match="run.json describes another extraction"):
        extract.run(phantoms, "random_tiny", out, rows_per_shard=7, show_progress=False)


def _copy(single_run, tmp_path):
    out = str(tmp_path / "copy")
    shutil.copytree(single_run[0], out)
    return out


def _record_offsets(path):
    data = open(path, "rb").read()
    offsets, pos = [], 0
    while pos < len(data):
        offsets.append(pos)
        pos += 12 + int.from_bytes(data[pos:pos + 8], "little") + 4
    return offsets


def test_corrupt_record_names_shard_and_record(single_run, tmp_path):
    out = _copy(single_run, tmp_path)
    path = os.path.join(out, tf_files.shard_name(1, 4))
    offset = _record_offsets(path)[2] + 40           # inside record 2's payload
    data = bytearray(open(path, "rb").read())
    data[offset] ^= 0xFF
    open(path, "wb").write(bytes(data))
    with pytest.raises(tf_files.TeacherFeatureError,
                       match=r"features-00001-of-00004.tfrecord: record 2 .*data CRC mismatch"):
        tf_files.load_features(out)


def _rewrite_shard(out, shard, edit):
    """Rewrites one shard through the real writer with edited records."""
    path = os.path.join(out, tf_files.shard_name(shard, 4))
    records = [(image_id, values) for _, image_id, values in tf_files.read_shard(path, {"anatomy": 256})]
    writer.write_shard(out, shard, 4, edit(records), [])


def test_wrong_feature_size_names_shard_and_id(single_run, tmp_path):
    out = _copy(single_run, tmp_path)
    _rewrite_shard(out, 2, lambda recs: [(i, {"anatomy": v["anatomy"][:255]}) if k == 3 else (i, v)
                                         for k, (i, v) in enumerate(recs)])
    bad_id = [i for _, i, _ in tf_files.read_shard(
        os.path.join(single_run[0], tf_files.shard_name(2, 4)), {"anatomy": 256})][3]
    with pytest.raises(tf_files.TeacherFeatureError,
                       match=rf"features-00002-of-00004.tfrecord: record 3 \(image_id '{bad_id}'\): "
                             r"feature/anatomy has 255 values, the index says 256"):
        tf_files.load_features(out)


def test_duplicate_image_id_names_both_places(single_run, tmp_path):
    out = _copy(single_run, tmp_path)
    first_id = next(tf_files.read_shard(os.path.join(out, tf_files.shard_name(0, 4)),
                                        {"anatomy": 256}))[1]
    _rewrite_shard(out, 3, lambda recs: [(first_id, recs[0][1])] + recs[1:])
    with pytest.raises(tf_files.TeacherFeatureError,
                       match=rf"features-00003-of-00004.tfrecord: record 0 \(image_id '{first_id}'\): "
                             r"duplicate image_id, first at features-00000-of-00004.tfrecord record 0"):
        tf_files.load_features(out)


def test_image_id_not_in_manifest_names_shard_and_id(single_run, phantoms):
    ids = [r.image_id for r in read_manifest(phantoms)]
    dropped = ids[9]                                  # shard 1 (rows 7..13), record 2
    with pytest.raises(tf_files.TeacherFeatureError,
                       match=rf"features-00001-of-00004.tfrecord: record 2 \(image_id '{dropped}'\): "
                             r"image_id not in m.csv"):
        tf_files.load_features(single_run[0], manifest_ids=[i for i in ids if i != dropped],
                               manifest_name="m.csv")


def test_changed_shard_and_unfinished_run_are_errors(single_run, tmp_path):
    out = _copy(single_run, tmp_path)
    os.remove(os.path.join(out, tf_files.INDEX_FILE))
    with pytest.raises(tf_files.TeacherFeatureError, match="has not finished every shard"):
        tf_files.load_features(out)
    out2 = str(tmp_path / "changed")
    shutil.copytree(single_run[0], out2)
    _rewrite_shard(out2, 1, lambda recs: recs[:-1])
    with pytest.raises(tf_files.TeacherFeatureError,
                       match="features-00001-of-00004.tfrecord: 6 records, index.json says 7"):
        tf_files.load_features(out2)


def test_cli_bad_input_is_one_error_line(phantoms, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:                # a usage error, status 2
        extract.main(["--manifest", phantoms, "--teachers", "nope", "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and err[0].startswith(
        "error: python -m teachers.extract: --teachers 'nope': unknown teacher 'nope'")
    assert extract.main(["--manifest", phantoms, "--teachers", "dinov2_base", "--out",
                         str(tmp_path / "y")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs local weights: --weights dinov2_base=PATH" in err[0]
    with pytest.raises(SystemExit) as e:           # a usage error: one line, not argparse's block
        extract.main(["--manifest", phantoms])
    assert e.value.code == 2 and capsys.readouterr().err.strip().splitlines() == [
        "error: python -m teachers.extract: the following arguments are required: --teachers, "
        "--out (see --help)"]


@pytest.mark.parametrize("flags, problem", [
    (["--weights", "random_tiny"], "--weights 'random_tiny': expected NAME=PATH"),
    (["--weights", "nosuch=x"], "--weights 'nosuch=x': unknown teacher 'nosuch'; known: "),
    (["--weights", "random_tiny=w"],          # the path was ignored, and recorded as read
     "--weights 'random_tiny=w': teacher random_tiny is built without weights files"),
    (["--weights", "rad_dino=a", "--weights", "rad_dino=b"],     # the last one won
     "--weights: rad_dino is given twice (a, b)"),
    (["--weights", "dinov2_base=/nonexistent"],      # was status 1, without the usage prefix
     "--weights given for ['dinov2_base'], which are not among --teachers ['random_tiny']"),
    (["--num-shards", "0"], "--num-shards 0: must be at least 1"),
    (["--shard", "2", "--num-shards", "2"], "--shard 2: must be in [0, --num-shards 2)"),
    (["--shard", "-1"], "--shard -1: must be in [0, --num-shards 1)"),
    (["--batch-size", "0", "--read-threads", "0"],
     "--batch-size 0, --read-threads 0: must be at least 1"),
])
def test_bad_counts_and_weights_are_usage_errors_naming_the_flag(tmp_path, capsys, flags, problem):
    """Status 2 as for any flag argparse refuses (they were 1, and --num-shards 0 read
    "--shard 0 must be in [0, --num-shards 0)"); nothing is read or made."""
    with pytest.raises(SystemExit) as e:
        extract.main(["--manifest", "m.csv", "--teachers", "random_tiny", "--out",
                      str(tmp_path / "o"), *flags])
    assert e.value.code == 2
    (err,) = capsys.readouterr().err.strip().splitlines()
    assert err.startswith(f"error: python -m teachers.extract: {problem}") and \
        err.endswith(" (see --help)"), err
    assert not os.path.exists(tmp_path / "o")


def test_unreadable_image_is_an_error_or_a_listed_skip(phantoms, tmp_path):
    root = str(tmp_path / "ph")
    shutil.copytree(os.path.dirname(phantoms), root)
    manifest = os.path.join(root, "manifest.csv")
    victim = [r for r in read_manifest(manifest) if r.modality != "ct"][3]
    open(victim.path, "wb").write(b"not an image")
    with pytest.raises(extract.ExtractError, match=rf"image_id '{victim.image_id}': unreadable"):
        extract.run(manifest, "random_tiny", str(tmp_path / "a"), show_progress=False)
    index = extract.run(manifest, "random_tiny", str(tmp_path / "b"), show_progress=False,
                        skip_unreadable=True)
    assert index["skipped"] == 1 and index["records"] == 23
    assert open(str(tmp_path / "b" / "skipped.txt")).read() == victim.image_id + "\n"
    assert victim.image_id not in tf_files.load_features(str(tmp_path / "b"))["random_tiny"].image_ids


def test_a_missing_image_is_refused_before_any_teacher_loads(phantoms, tmp_path, capsys):
    """It ended the extraction when its shard came, after the teachers had loaded and the
    shards before it were written."""
    root = str(tmp_path / "ph")
    shutil.copytree(os.path.dirname(phantoms), root)
    manifest = os.path.join(root, "manifest.csv")
    victim = [r for r in read_manifest(manifest) if r.modality != "ct"][-1]
    os.remove(victim.path)
    out = tmp_path / "a"
    assert extract.main(["--manifest", manifest, "--teachers", "random_tiny", "--out",
                         str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {manifest}: line ")
    assert err[0].endswith(f"(image_id={victim.image_id!r}): {victim.path}: no such file or "
                           "folder; --skip-unreadable leaves them out, listed in skipped.txt")
    assert not out.exists()
    index = extract.run(manifest, "random_tiny", str(tmp_path / "b"), show_progress=False,
                        skip_unreadable=True)
    assert index["skipped"] == 1
    assert open(str(tmp_path / "b" / "skipped.txt")).read() == victim.image_id + "\n"


def test_shards_parse_with_the_tfrecord_package_reader(single_run):
    """An independent reader of the standard format (the ``tfrecord`` package's loader,
    which follows TensorFlow's framing and Example schema) sees the same records."""
    from tfrecord.reader import tfrecord_loader

    out, index = single_run
    ours, theirs = [], []
    for shard in index["shards"]:
        path = os.path.join(out, shard["file"])
        ours += [(i, v["anatomy"]) for _, i, v in tf_files.read_shard(path, {"anatomy": 256})]
        theirs += [(bytes(r["image_id"]).decode(), r["feature/anatomy"]) for r in tfrecord_loader(
            path, None, description={"image_id": "byte", "feature/anatomy": "float"})]
    assert [i for i, _ in ours] == [i for i, _ in theirs] and len(ours) == 24
    for (_, a), (_, b) in zip(ours, theirs):
        assert np.array_equal(a, np.asarray(b, np.float32))


def test_a_run_stopped_before_its_first_shard_can_be_run_again_fixed(tmp_path):
    """An extraction that failed at once (an unreadable image) left only run.json; run
    again with the manifest fixed, it takes the new run's run.json (it was refused as
    another extraction); once a shard exists, another run is still refused."""
    out = str(tmp_path / "t")
    os.makedirs(out)
    writer.ensure_run(out, writer.header(manifest="old"))
    writer.ensure_run(out, writer.header(manifest="fixed"))
    with open(os.path.join(out, "run.json")) as f:
        assert json.load(f) == writer.header(manifest="fixed")
    open(os.path.join(out, "features-00000-of-00001.tfrecord"), "w").close()
    with pytest.raises(writer.RunMismatchError, match=r"differs in \['manifest'\]"):
        writer.ensure_run(out, writer.header(manifest="other"))
    writer.ensure_run(out, writer.header(manifest="fixed"))          # the same run goes on


def test_an_out_that_is_a_file_is_refused_before_any_teacher_loads(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text("not read")
    with pytest.raises(ValueError, match=r"^--out .*m\.csv: is a file, not a folder$"):
        extract.run(str(manifest), "anatomy", str(manifest), show_progress=False)
    assert manifest.read_text() == "not read"


def test_a_folder_that_is_no_feature_folder_says_so(tmp_path):
    """Both read as '.../index.json: missing', a folder that does not exist too."""
    with pytest.raises(tf_files.TeacherFeatureError) as e:
        tf_files.read_index(str(tmp_path / "nope"))
    assert str(e.value) == (f"{tmp_path / 'nope'}: no such folder (a feature folder is what "
                            "python -m teachers.extract --out writes)")
    with pytest.raises(tf_files.TeacherFeatureError) as e:
        tf_files.read_index(str(tmp_path))
    assert str(e.value) == (f"{tmp_path / 'index.json'}: missing; {tmp_path} is no feature "
                            "folder of python -m teachers.extract (which writes index.json last)")


def test_an_out_holding_another_commands_files_is_refused_before_any_teacher_loads(
        tmp_path, monkeypatch):
    """Before: features were written into whatever folder --out named, a training run or a
    history archive included, beside its own files."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.json").write_text("{}")
    before = sorted(os.listdir(run))
    monkeypatch.setattr(extract, "load_teacher", lambda *a, **k: pytest.fail("loaded"))
    with pytest.raises(ValueError, match=(
            rf"^--out {run}: holds files this command did not write \(checkpoints, "
            r"config.json\); give a new or empty folder$")):
        extract.run(str(tmp_path / "m.csv"), "anatomy", str(run), show_progress=False)
    assert sorted(os.listdir(run)) == before


def test_another_process_writing_its_run_json_does_not_make_the_folder_foreign(tmp_path):
    """Processes of one run (--shard i --num-shards n) start into one folder: the first
    one's run.json temporary is not another command's file."""
    from mami_jax.runtime.atomic_files import TEMP_MARK
    from mami_jax.runtime.output_guard import check_output_folder
    out = tmp_path / "f"
    out.mkdir()
    (out / f".run.json{TEMP_MARK}abc").write_text("{")
    check_output_folder(str(out), "--out", "run.json")
    (out / "notes.txt").write_text("")
    with pytest.raises(ValueError, match=r"holds files this command did not write \(notes.txt\)"):
        check_output_folder(str(out), "--out", "run.json")
