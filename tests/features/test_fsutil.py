"""features.fsutil: durable syncs, the one temp-then-rename write and the one directory swap."""

import errno
import os

import pytest

from features import faults, fsutil


class _Killed(BaseException):
    """Stands in for SIGKILL at a fault point: nothing after it runs."""


def test_rows_are_synced_with_f_fullfsync_where_the_os_has_it(monkeypatch):
    # macOS: fsync() leaves the rows in the drive's cache, so a marker could reach the disk first.
    import fcntl

    calls = []
    monkeypatch.setattr(fcntl, "F_FULLFSYNC", 51, raising=False)
    monkeypatch.setattr(fcntl, "fcntl", lambda fd, cmd, *a: calls.append(cmd))
    monkeypatch.setattr(os, "fdatasync", lambda fd: calls.append("fdatasync"), raising=False)
    fsutil.datasync(3)
    assert calls == [51]

    def unsupported(fd, cmd, *a):
        raise OSError(45, "Operation not supported")
    calls.clear()
    monkeypatch.setattr(fcntl, "fcntl", unsupported)
    fsutil.datasync(3)
    assert calls == ["fdatasync"]


def test_directory_fsync_failures_are_accepted_only_where_asked(tmp_path, monkeypatch):
    def refuse(fd):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", refuse)
    with pytest.raises(OSError):
        fsutil.fsync_dir(tmp_path)  # stage one's commits: a rename that may not be durable is an error
    fsutil.fsync_dir(tmp_path, best_effort=True)
    with pytest.raises(FileNotFoundError):
        fsutil.fsync_dir(tmp_path / "missing")
    fsutil.fsync_dir(tmp_path / "missing", best_effort=True)  # cannot even be opened (as on Windows)


def test_atomic_path_reaches_its_point_with_the_temp_file_synced_and_not_yet_renamed(tmp_path, monkeypatch):
    out, synced = tmp_path / "a.bin", []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(os.fstat(fd).st_size) or real_fsync(fd))
    with faults.raising_at("a_point", _Killed()), pytest.raises(_Killed):
        with fsutil.atomic_path(out, point="a_point") as tmp:
            with open(tmp, "wb") as f:
                f.write(b"12345")
    assert synced == [5] and not out.exists()  # synced, then stopped before the rename
    assert os.listdir(tmp_path) == []  # a raised error (not a kill) removes the temp file
    with fsutil.atomic_path(out, point="a_point") as tmp:  # unarmed, the point is a no-op
        with open(tmp, "wb") as f:
            f.write(b"12345")
    assert out.read_bytes() == b"12345" and os.listdir(tmp_path) == ["a.bin"]


def _tree(path, text):
    os.makedirs(path)
    (path / "f.txt").write_text(text)
    return path


def test_replace_dir_moves_a_new_directory_in(tmp_path):
    new = _tree(tmp_path / ".new", "new")
    fsutil.replace_dir(new, tmp_path / "d")
    assert (tmp_path / "d" / "f.txt").read_text() == "new" and sorted(os.listdir(tmp_path)) == ["d"]


def test_replace_dir_without_aside_never_replaces_a_directory_with_entries(tmp_path):
    _tree(tmp_path / "d", "someone else's")
    with pytest.raises(OSError):
        fsutil.replace_dir(_tree(tmp_path / ".new", "new"), tmp_path / "d")
    assert (tmp_path / "d" / "f.txt").read_text() == "someone else's"


def test_replace_dir_swaps_an_old_directory_out(tmp_path):
    _tree(tmp_path / "d", "old")
    fsutil.replace_dir(_tree(tmp_path / ".new", "new"), tmp_path / "d", aside=tmp_path / ".d.old")
    assert (tmp_path / "d" / "f.txt").read_text() == "new" and sorted(os.listdir(tmp_path)) == ["d"]


def test_replace_dir_killed_between_the_renames_keeps_the_old_directory_aside(tmp_path):
    _tree(tmp_path / "d", "old")
    with faults.raising_at("swap_point", _Killed()), pytest.raises(_Killed):
        fsutil.replace_dir(_tree(tmp_path / ".new", "new"), tmp_path / "d", aside=tmp_path / ".d.old",
                           point="swap_point")
    assert not (tmp_path / "d").exists() and (tmp_path / ".d.old" / "f.txt").read_text() == "old"


def test_replace_dir_puts_the_old_directory_back_when_the_new_one_cannot_move_in(tmp_path):
    _tree(tmp_path / "d", "old")
    with pytest.raises(FileNotFoundError):
        fsutil.replace_dir(tmp_path / ".gone", tmp_path / "d", aside=tmp_path / ".d.old")
    assert (tmp_path / "d" / "f.txt").read_text() == "old" and sorted(os.listdir(tmp_path)) == ["d"]


@pytest.mark.parametrize("durable", [True, False])
def test_replace_dir_syncs_the_parent_with_the_new_directory_in_place_before_the_old_one_goes(
        tmp_path, monkeypatch, durable):
    _tree(tmp_path / "d", "old")
    real_fsync, seen = os.fsync, []

    def spy(fd):  # what the parent holds when it is synced
        if os.path.samestat(os.fstat(fd), os.stat(tmp_path)):
            seen.append(((tmp_path / "d" / "f.txt").read_text(), sorted(os.listdir(tmp_path))))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    fsutil.replace_dir(_tree(tmp_path / ".new", "new"), tmp_path / "d", aside=tmp_path / ".d.old", durable=durable)
    assert seen == ([("new", [".d.old", "d"])] if durable else [])
