"""One feature folder holds features of one run's settings: shards of processes started
with other flags, or gathered from machines that ran with other flags, are refused naming
them (they were indexed under the settings of whichever process finished last, and
training could not tell); ``--split`` derives the splits training derives where the
manifest gives none; the progress bar of a run that skips an image ends at its total;
``--weights`` for a teacher not extracted is a usage error."""

import json
import os
import shutil

import pytest

pytest.importorskip("torch")

from mami_jax.data import teacher_features as tf_files  # noqa: E402
from mami_jax.data.manifest import read_manifest, write_manifest  # noqa: E402
from mami_jax.phantoms import generator  # noqa: E402
from teachers import extract, writer  # noqa: E402

WINDOW = ["--value-window", "ct=-1000,1000"]


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    out = tmp_path_factory.mktemp("ph") / "phantoms"
    return generator.generate(str(out), patients=4, visits=2, image_size=32, slices=2, workers=1)


def _extract(manifest, out, *flags, teachers="random_tiny"):
    return extract.main(["--manifest", manifest, "--teachers", teachers, "--out", str(out),
                         "--rows-per-shard", "8", *flags])


def _files(folder):
    return {name: open(os.path.join(folder, name), "rb").read()
            for name in sorted(os.listdir(folder))}


def _error(capsys):
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_a_gathered_folder_with_a_shard_of_other_settings_names_it_and_writes_no_index(
        phantoms, tmp_path, capsys):
    """docs/teachers.md's gathering: machine B forgot --value-window. The rerun over the
    gathered folder wrote index.json saying every CT was read through the window, while
    shard 1's CTs were read min-max."""
    reference = tmp_path / "reference"
    assert _extract(phantoms, reference, *WINDOW) == 0
    a, b, gathered = tmp_path / "a", tmp_path / "b", tmp_path / "all"
    assert _extract(phantoms, a, "--shard", "0", "--num-shards", "2", *WINDOW) == 0
    assert _extract(phantoms, b, "--shard", "1", "--num-shards", "2") == 0
    shard1 = tf_files.shard_name(1, 3)
    assert _files(b)[shard1] != _files(reference)[shard1]        # it holds CTs read min-max
    gathered.mkdir()
    for folder in (b, a):                                         # run.json: A's
        for name in os.listdir(folder):
            shutil.copy(folder / name, gathered / name)
    capsys.readouterr()
    assert _extract(phantoms, gathered, *WINDOW) == 1
    side = gathered / tf_files.sidecar_name(1, 3)
    assert _error(capsys) == (
        f"error: {side}: {shard1} was written by an extraction with other settings than this "
        "run's (run.json); remove both files to compute the shard again with this run's "
        "settings, or use a new --out")
    assert not (gathered / tf_files.INDEX_FILE).exists()
    # the remedy the message gives: the shard computed again, with the run's settings
    os.remove(side)
    os.remove(gathered / shard1)
    assert _extract(phantoms, gathered, *WINDOW) == 0
    assert _files(gathered) == _files(reference)


def test_a_process_whose_folder_is_taken_over_stops_before_writing_a_shard(
        phantoms, tmp_path, monkeypatch):
    """Process A (--value-window) computes its first shard while B, started later without
    it, finds a folder holding only run.json and takes it over. A wrote its shards under
    B's run.json, and the index, from A's settings, claimed windows B's shards lack."""
    out = str(tmp_path / "f")
    real = extract.shard_features
    started = []

    def b_starts_meanwhile(*args, **kwargs):
        if not started:
            started.append(True)
            extract.run(phantoms, "random_tiny", out, shard=1, num_shards=2, rows_per_shard=8,
                        show_progress=False)
        return real(*args, **kwargs)

    monkeypatch.setattr(extract, "shard_features", b_starts_meanwhile)
    with pytest.raises(writer.RunMismatchError) as e:
        extract.run(phantoms, "random_tiny", out, shard=0, num_shards=2, rows_per_shard=8,
                    show_progress=False, value_windows={"ct": (-1000.0, 1000.0)})
    assert str(e.value) == (
        f"{out}/run.json: describes another extraction than this process's (differs in "
        "['value_windows']): a process with other settings took the folder over since this "
        "one started; run every process of a run with the same flags, or use a new --out")
    assert sorted(os.listdir(out)) == sorted(
        [tf_files.RUN_FILE, tf_files.shard_name(1, 3), tf_files.sidecar_name(1, 3)])
    assert "value_windows" not in tf_files.read_json(os.path.join(out, tf_files.RUN_FILE))


def test_a_run_json_created_while_this_process_starts_is_not_taken_over(
        phantoms, tmp_path, monkeypatch, capsys):
    """Two processes started into a new folder with different settings: the one that
    found no run.json at its start and another's at its end took the folder over too."""
    other = tmp_path / "other"
    assert _extract(phantoms, other, *WINDOW) == 0
    theirs = (other / tf_files.RUN_FILE).read_text()
    out = tmp_path / "f"
    real = extract.load_teacher

    def the_other_creates_it(*args, **kwargs):
        out.mkdir(exist_ok=True)
        (out / tf_files.RUN_FILE).write_text(theirs)
        return real(*args, **kwargs)

    monkeypatch.setattr(extract, "load_teacher", the_other_creates_it)
    capsys.readouterr()
    assert _extract(phantoms, out) == 1
    assert _error(capsys) == (
        f"error: {out / tf_files.RUN_FILE}: created by another process with other settings "
        "while this one started (differs in ['value_windows']); run every process of a run "
        "with the same flags, or use a new --out")
    assert os.listdir(out) == [tf_files.RUN_FILE]
    assert (out / tf_files.RUN_FILE).read_text() == theirs


def test_run_json_is_created_once(tmp_path):
    """Of two creators the second gets False and the first one's file, whole; no
    temporary is left."""
    path = str(tmp_path / tf_files.RUN_FILE)
    assert writer._create_exclusive(path, "first\n") is True
    assert writer._create_exclusive(path, "second\n") is False
    assert open(path).read() == "first\n" and os.listdir(tmp_path) == [tf_files.RUN_FILE]


def test_index_refuses_a_shard_written_before_the_folder_was_taken_over(tmp_path):
    """A process passed its check of run.json, another took the folder over and wrote the
    next shard: neither writes index.json, each naming what differs."""
    out = str(tmp_path / "f")
    os.makedirs(out)
    old = writer.header(manifest="m", num_shards=2, teachers={}, value_windows={"ct": [0, 1]})
    new = writer.header(manifest="m", num_shards=2, teachers={})
    writer.ensure_run(out, old)
    writer.write_shard(out, 0, 2, [], [], run=old)
    with open(os.path.join(out, tf_files.RUN_FILE), "w") as f:     # as the race leaves it
        f.write(writer._dump(new))
    writer.write_shard(out, 1, 2, [], [], run=new)
    with pytest.raises(writer.RunMismatchError) as e:
        writer.write_index_if_complete(out, new)
    assert str(e.value).startswith(f"{out}/features-00000-of-00002.json: "
                                   "features-00000-of-00002.tfrecord was written by an "
                                   "extraction with other settings than this run's")
    with pytest.raises(writer.RunMismatchError, match=r"run.json: describes another extraction "
                                                      r"than this process's \(differs in "
                                                      r"\['value_windows'\]\)"):
        writer.write_index_if_complete(out, old)
    assert not os.path.exists(os.path.join(out, tf_files.INDEX_FILE))


def test_a_sidecar_from_before_run_digests_is_refused(phantoms, tmp_path, capsys):
    """Its run.json matching does not say which settings it was computed with (both ways
    a shard of other settings got into a folder left a matching run.json)."""
    out = tmp_path / "f"
    assert _extract(phantoms, out) == 0
    side = out / tf_files.sidecar_name(2, 3)
    meta = json.loads(side.read_text())
    del meta[writer.RUN_DIGEST_KEY]
    side.write_text(json.dumps(meta))
    capsys.readouterr()
    assert _extract(phantoms, out) == 1
    assert _error(capsys) == (
        f"error: {side}: written before sidecars recorded the settings of their run, so "
        f"whether {tf_files.shard_name(2, 3)} holds this run's features cannot be told; "
        "extract again into a new --out")


def _without_splits(phantoms, tmp_path, keep=0):
    path = str(tmp_path / "manifest.csv")
    rows = read_manifest(phantoms)
    write_manifest([r if k < keep else r.replace(split="") for k, r in enumerate(rows)], path)
    return path


def test_split_of_a_manifest_without_splits_is_the_one_training_derives(phantoms, tmp_path,
                                                                         capsys):
    """``--split test`` failed with "no rows in split 'test'" where the scorer and training
    test on the rows whose split they derive from the patient ids."""
    from mami_jax.config import base_config
    from mami_jax.data.loading import load_rows

    manifest = _without_splits(phantoms, tmp_path)
    config = base_config()
    config.data.manifest = manifest
    test_ids = [r.image_id for r in load_rows(config, str(tmp_path / "wd")) if r.split == "test"]
    assert 0 < len(test_ids) < 24
    out = tmp_path / "f"
    assert _extract(manifest, out, "--split", "test") == 0
    assert tf_files.load_features(str(out))["random_tiny"].image_ids == tuple(test_ids)
    index = tf_files.read_index(str(out))
    assert index["split"] == "test" and index["split_assignment"] == {
        "fractions": {"test": 0.2, "train": 0.7, "val": 0.1}, "seed": 0}
    assert json.loads((out / tf_files.RUN_FILE).read_text())["split_assignment"] == \
        index["split_assignment"]
    # the same rule over the same manifest: a rerun resumes it
    assert _extract(manifest, out, "--split", "test") == 0


def test_split_of_a_manifest_splitting_some_rows_is_refused(phantoms, tmp_path, capsys):
    manifest = _without_splits(phantoms, tmp_path, keep=3)
    assert _extract(manifest, tmp_path / "f", "--split", "test") == 1
    assert _error(capsys) == (f"error: {manifest}: 21 of 24 rows have no split; assign all "
                              "or none (none: splits are derived from the patient ids)")
    assert not (tmp_path / "f").exists()
    assert _extract(phantoms, tmp_path / "g", "--split", "nope") == 1
    counts = {}
    for r in read_manifest(phantoms):
        counts[r.split] = counts.get(r.split, 0) + 1
    assert _error(capsys) == (f"error: {phantoms}: no rows in split 'nope' (the rows' splits: "
                              + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) + ")")


def test_progress_ends_at_its_total_when_an_image_is_skipped(phantoms, tmp_path, monkeypatch):
    """A skipped row advanced the bar by the teachers that read pixels only: with the
    anatomy teacher it stopped one short (71/72)."""
    import tqdm

    root = tmp_path / "ph"
    shutil.copytree(os.path.dirname(phantoms), root)
    manifest = str(root / "manifest.csv")
    victim = [r for r in read_manifest(manifest) if r.modality == "xray"][0]
    open(victim.path, "wb").write(b"not an image")
    bars = []

    class Bar:
        def __init__(self, total, **kwargs):
            self.total, self.n = total, 0
            bars.append(self)

        def update(self, n):
            self.n += n

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(tqdm, "tqdm", Bar)
    index = extract.run(manifest, "random_tiny,anatomy", str(tmp_path / "f"),
                        skip_unreadable=True)
    assert index["skipped"] == 1
    (bar,) = bars
    assert bar.total == 2 * 24 and bar.n == bar.total
