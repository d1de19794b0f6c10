"""Crash-safe file helpers shared by both stages: durable syncs, temp-then-rename writes, one directory
swap, one directory walker.

A file that matters is written under a temporary name beside its final path, synced, and renamed
into place, so a reader (or a rerun after a kill) sees the old file or the new one, never half of
one. Everything in bneck that writes such a file goes through :func:`atomic_path`; a finished
directory (a model directory, a SavedModel) is moved into place by :func:`replace_dir`.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import uuid

from features.faults import fault_point


def datasync(fd: int) -> None:
    """Make ``fd``'s written data durable, down to the drive's own cache where the OS can ask for that."""
    # On macOS fsync() only hands the data to the drive, which may reorder it with the marker
    # written next; F_FULLFSYNC waits until the drive has it on stable storage.
    if hasattr(fcntl, "F_FULLFSYNC"):
        try:
            fcntl.fcntl(fd, fcntl.F_FULLFSYNC)
            return
        except OSError:  # file systems that do not support it (network shares)
            pass
    # Looked up on each call (not bound at import), so a test can stand in for the system's call.
    if hasattr(os, "fdatasync"):
        os.fdatasync(fd)
    else:  # macOS has no fdatasync
        os.fsync(fd)


def fsync_dir(path, *, best_effort: bool = False) -> None:
    """Make the renames in directory ``path`` durable (a rename is an update of the directory).

    A file system that cannot fsync a directory (EINVAL, ENOTSUP) is accepted. ``best_effort``
    accepts any failure, even a directory that cannot be opened (Windows), for callers whose
    rename is already done and must not be reported as failed over its durability (a model
    directory, :func:`replace_dir`); stage one's commits use the strict default.
    """
    try:
        fd = os.open(os.fspath(path) or ".", os.O_RDONLY)
    except OSError:
        if best_effort:
            return
        raise
    try:
        os.fsync(fd)
    except OSError as exc:
        if not best_effort and exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):  # file systems that cannot
            raise
    finally:
        os.close(fd)


def temp_beside(path) -> str:
    """A hidden, unique temporary name in ``path``'s directory (same file system, so the rename is atomic)."""
    path = os.fspath(path)
    head, tail = os.path.split(path)
    # The suffix stays last: writers such as Pillow and Keras' plot_model pick the format from it.
    return os.path.join(head, f".{tail}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}{os.path.splitext(tail)[1]}")


@contextlib.contextmanager
def atomic_path(path, *, durable: bool = True, point: str | None = None):
    """Yield a temporary path to write; on success it is renamed to ``path``, on any error removed.

    ``durable`` fsyncs the written file and the directory around the rename, for files a crash
    must not lose (chunk markers, feature files, model directories); previews and reports skip it.
    ``point`` names the fault point (:mod:`features.faults`) reached once the temporary file is
    written and synced, just before the rename.
    """
    path = os.fspath(path)
    tmp = temp_beside(path)
    try:
        yield tmp
        if durable and os.path.isfile(tmp):
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        if point:
            fault_point(point)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    if durable:
        fsync_dir(os.path.dirname(path) or ".")


def atomic_write_bytes(path, data: bytes, *, durable: bool = True) -> None:
    """Write ``data`` to ``path`` atomically (fault point ``atomic_write`` first, for the tests)."""
    fault_point("atomic_write")
    with atomic_path(path, durable=durable) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)


def replace_dir(new, path, *, aside=None, durable: bool = True, point: str | None = None) -> None:
    """Rename the finished directory ``new`` (beside ``path``, so the rename is atomic) to ``path``.

    Without ``aside``, ``path`` must not exist: a directory with entries that appeared there
    meanwhile makes the rename fail rather than be replaced. With ``aside`` (a name beside
    ``path``), an existing ``path`` is swapped out, since a directory cannot be atomically replaced
    by a non-empty one: ``path`` -> ``aside``, ``new`` -> ``path`` (on failure ``aside`` is renamed
    back), then ``aside`` is deleted. ``path`` is never half-written: it is the old directory, the
    new one, or, after a kill between the two renames, absent with the old one whole under
    ``aside`` (the caller's name, so the caller can find such leftovers). ``durable`` fsyncs the
    parent, best effort (:func:`fsync_dir`), before the old directory is deleted. ``point`` names
    the fault point reached between the two renames.
    """
    new, path = os.fspath(new), os.fspath(path)
    if aside is None or not os.path.lexists(path):
        os.replace(new, path)
        aside = None
    else:
        aside = os.fspath(aside)
        os.replace(path, aside)
        if point:
            fault_point(point)
        try:
            os.replace(new, path)
        except BaseException:
            os.replace(aside, path)
            raise
    if durable:
        fsync_dir(os.path.dirname(os.path.abspath(path)), best_effort=True)
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)


def walk_files(root, *, suffixes=None, hidden: bool = False) -> list[str]:
    """Every file under ``root``, recursively, hidden files and folders skipped unless ``hidden``.

    The order is Keras' (``image_dataset_from_directory``): by directory path string, then by file
    name, without following directory links. It is deterministic, so row ids, shards and resumes
    agree between runs and machines. Broken links are kept (they become ``missing`` rows, not a
    silently shorter dataset); FIFOs, sockets and devices are skipped. ``suffixes`` (lower-case,
    with the dot) keeps only files whose name ends in one of them.
    """
    walked = []
    # Prune hidden dirs while walking (top-down), so a big hidden tree such as .git is never listed.
    for dirpath, dirnames, filenames in os.walk(os.fspath(root)):
        if not hidden:
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        walked.append((dirpath, filenames))
    out = []
    for dirpath, filenames in sorted(walked, key=lambda w: w[0]):
        for name in sorted(filenames):
            full = os.path.join(dirpath, name)
            if (name.startswith(".") and not hidden) or not (os.path.isfile(full) or os.path.islink(full)):
                continue
            if suffixes and not name.lower().endswith(tuple(suffixes)):
                continue
            out.append(full)
    return out


def expand_paths(inputs, *, keep_missing: bool = False) -> list[str]:
    """Files and directories (walked with :func:`walk_files`) expanded into file paths, in the given order.

    A path that does not exist raises FileNotFoundError, or with ``keep_missing`` stays in the list
    (decoding then reports it as ``missing``, so one typo does not hide every other result).
    """
    out = []
    for item in inputs:
        item = os.fspath(item)
        if os.path.isdir(item):
            out.extend(walk_files(item))
        elif os.path.exists(item) or keep_missing:
            out.append(item)
        else:
            raise FileNotFoundError(f"{item}: no such file or directory")
    return out
