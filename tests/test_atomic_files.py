"""runtime/atomic_files: a failed write leaves the old file, modes follow the umask, and only
this module's own leftovers are swept."""

import os

import pytest

from mami_jax.runtime import atomic_files


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    yield
    os.umask(old)


def test_failed_write_keeps_the_previous_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "metrics.json"
    atomic_files.write_text_atomic(str(path), "old")

    def broken(tmp):
        with open(tmp, "w") as f:
            f.write("half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        atomic_files.write_atomic(str(path), broken)
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["metrics.json"]


def test_modes_follow_the_umask(tmp_path, umask_027):
    path = atomic_files.write_bytes_atomic(str(tmp_path / "a" / "x.bin"), b"1")
    assert os.stat(path).st_mode & 0o777 == 0o640
    with atomic_files.staging_dir(str(tmp_path / "out")) as tmp:
        assert os.stat(tmp).st_mode & 0o777 == 0o750


def test_stale_temporaries_are_removed_and_nothing_else(tmp_path):
    (tmp_path / "keep.json").write_text("{}")
    (tmp_path / ".keep-hidden").write_text("")
    with pytest.raises(RuntimeError):
        with atomic_files.staging_dir(str(tmp_path / "out")) as tmp:
            raise RuntimeError("fails inside")
    assert not os.path.exists(tmp)
    fake_file = tmp_path / f".m.json{atomic_files.TEMP_MARK}abc.json"
    fake_dir = tmp_path / f".out{atomic_files.TEMP_MARK}xyz"
    fake_file.write_text("half")
    fake_dir.mkdir()
    removed = atomic_files.remove_stale_temporaries(str(tmp_path))
    assert sorted(removed) == sorted([str(fake_file), str(fake_dir)])
    assert sorted(os.listdir(tmp_path)) == [".keep-hidden", "keep.json"]


def test_a_folder_that_cannot_be_made_is_named_whole(tmp_path):
    """The OS names only the first missing part (``[Errno 2] ...: '/proc/nope'``); the
    error names the folder to be made and why, and keeps the OS error's type and errno."""
    blocker = tmp_path / "a_file"
    blocker.write_text("mine")
    with pytest.raises(NotADirectoryError) as e:
        atomic_files.write_text_atomic(str(blocker / "sub" / "x.txt"), "text")
    assert str(e.value) == f"cannot make the folder {blocker / 'sub'}: Not a directory"
    assert e.value.errno == 20 and blocker.read_text() == "mine"


def test_a_file_that_cannot_be_made_is_named_as_asked(tmp_path, monkeypatch):
    """The OS named the temporary (``'/proc/.x.csv.mami-tmp-oitvqz1e.csv'``), a name the user
    never gave; the error names the file asked for and keeps the OS error's type and errno."""
    def refuse(dir, prefix, suffix):
        raise PermissionError(13, "Permission denied", os.path.join(dir, prefix + "q1" + suffix))
    monkeypatch.setattr(atomic_files.tempfile, "mkstemp", refuse)
    target = tmp_path / "x.csv"
    with pytest.raises(PermissionError) as e:
        atomic_files.write_text_atomic(str(target), "text")
    assert str(e.value) == f"[Errno 13] Permission denied: '{target}'"
    assert e.value.errno == 13 and os.listdir(tmp_path) == []


def test_a_folder_replaced_while_killed_is_never_lost(tmp_path, monkeypatch):
    """publish_dir deleted the old folder before renaming the new one in: killed in
    between, neither was left. Now the old one waits aside (not a temporary: no sweep
    removes it) and the next replacement puts it back first."""
    final = tmp_path / "out"
    final.mkdir()
    (final / "a.txt").write_text("old")

    def staged(text):
        with atomic_files.staging_dir(str(final)) as tmp:
            with open(os.path.join(tmp, "a.txt"), "w") as f:
                f.write(text)
            return tmp

    real = os.rename

    def killed(src, dst):
        if dst == str(final):
            raise KeyboardInterrupt
        real(src, dst)

    tmp = staged("new")
    monkeypatch.setattr(atomic_files.os, "rename", killed)
    with pytest.raises(KeyboardInterrupt):
        atomic_files.publish_dir(tmp, str(final))
    monkeypatch.undo()
    aside = atomic_files.aside_path(str(final))
    assert not final.exists() and open(os.path.join(aside, "a.txt")).read() == "old"
    assert atomic_files.remove_stale_temporaries(str(tmp_path)) == [tmp]   # the new, unfinished
    atomic_files.publish_dir(staged("newer"), str(final))
    assert (final / "a.txt").read_text() == "newer" and os.listdir(tmp_path) == ["out"]
    assert atomic_files.finish_replacement(str(final)) is False


def _staged(final, text):
    with atomic_files.staging_dir(str(final)) as tmp:
        with open(os.path.join(tmp, "a.txt"), "w") as f:
            f.write(text)
        return tmp


def test_a_link_replaced_by_a_folder_leaves_no_link_aside(tmp_path):
    """replace_dir of a ``final`` that is a link: the link went aside and rmtree, refusing a
    link with its errors ignored, left it there; the next replacement's rename onto it failed
    with a bare [Errno 20]. Now the link is unlinked and its target left alone."""
    target = tmp_path / "models" / "current"
    target.mkdir(parents=True)
    (target / "a.txt").write_text("old")
    final = tmp_path / "out"
    final.symlink_to(target, target_is_directory=True)
    atomic_files.publish_dir(_staged(final, "new"), str(final))
    assert not final.is_symlink() and (final / "a.txt").read_text() == "new"
    assert sorted(os.listdir(tmp_path)) == ["models", "out"]
    assert (target / "a.txt").read_text() == "old"
    atomic_files.publish_dir(_staged(final, "newer"), str(final))
    assert (final / "a.txt").read_text() == "newer"
    assert sorted(os.listdir(tmp_path)) == ["models", "out"]


@pytest.mark.parametrize("dangling", [False, True])
def test_a_link_left_aside_does_not_block_the_next_replacement(tmp_path, dangling):
    """The state the old code left (a link kept aside beside a new folder): the next
    replacement failed with '[Errno 20] Not a directory'."""
    target = tmp_path / "target"
    target.mkdir()
    final = tmp_path / "out"
    final.mkdir()
    (final / "a.txt").write_text("old")
    os.symlink(str(target), atomic_files.aside_path(str(final)))
    if dangling:
        target.rmdir()
    atomic_files.publish_dir(_staged(final, "new"), str(final))
    assert (final / "a.txt").read_text() == "new"
    assert sorted(os.listdir(tmp_path)) == ["out"] + ([] if dangling else ["target"])


def test_a_file_written_over_a_folder_is_named_as_asked(tmp_path):
    """The rename failed naming the temporary ('.bad.mami-tmp-bfbuow6h' -> 'bad')."""
    folder = tmp_path / "bad"
    folder.mkdir()
    with pytest.raises(IsADirectoryError) as e:
        atomic_files.write_text_atomic(str(folder), "text")
    assert str(e.value) == f"[Errno 21] a folder, not a file: '{folder}'"
    assert os.listdir(tmp_path) == ["bad"] and os.listdir(folder) == []


def test_data_reaches_the_disk_before_the_rename(tmp_path, monkeypatch):
    """A rename that reaches the disk before the data leaves an empty file under the final
    name after a power cut: the temporary (file, or every file of a staged tree) is flushed
    before it is renamed, and the folder holding the new name after."""
    events = []
    real_fsync, real_replace, real_rename = os.fsync, os.replace, os.rename

    def fsync(fd):
        events.append(("sync", os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))))
        return real_fsync(fd)

    def moved(real, kind):
        def move(src, dst):
            events.append((kind, os.path.basename(src)))
            return real(src, dst)
        return move

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", moved(real_replace, "replace"))
    monkeypatch.setattr(os, "rename", moved(real_rename, "rename"))
    atomic_files.write_text_atomic(str(tmp_path / "a.json"), "{}")
    tmp = events[1][1]
    assert events == [("sync", tmp), ("replace", tmp), ("sync", tmp_path.name)]
    assert atomic_files.TEMP_MARK in tmp and (tmp_path / "a.json").read_text() == "{}"

    events.clear()
    with atomic_files.staging_dir(str(tmp_path / "tree")) as staged:
        os.makedirs(os.path.join(staged, "sub"))
        for name in ("sub/x.png", "y.dcm"):
            with open(os.path.join(staged, name), "w") as f:
                f.write(name)
        atomic_files.publish_dir(staged, str(tmp_path / "tree"))
    synced = [name for kind, name in events[:events.index(("rename", os.path.basename(staged)))]
              if kind == "sync"]
    assert {"x.png", "y.dcm", "sub", os.path.basename(staged)} <= set(synced)
    assert events[-1] == ("sync", tmp_path.name)
    assert (tmp_path / "tree" / "sub" / "x.png").read_text() == "sub/x.png"


def test_the_umask_is_read_without_being_set(monkeypatch):
    """Reading the umask with os.umask sets it to 022 for an instant: a file another thread
    made then (the checkpointer's) got 0644 under a umask of 077. Where /proc/self/status
    shows it, it is read from there."""
    import os
    import sys

    from mami_jax.runtime.atomic_files import current_umask
    if not sys.platform.startswith("linux"):
        pytest.skip("/proc/self/status is Linux's")
    old = os.umask(0o077)
    try:
        calls = []
        monkeypatch.setattr(os, "umask", lambda m: calls.append(m) or 0o077)
        assert current_umask() == 0o077 and calls == []
    finally:
        monkeypatch.undo()
        os.umask(old)
