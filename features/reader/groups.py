"""The groups file of a class-folder dataset: which rows are near-duplicates of each other.

``bneck frames`` writes ``DATASET/.bneck-groups.csv`` beside the class folders it fills: a header
``path,<by>`` (``path,video``) and one line per frame, its path relative to ``DATASET`` (``/``-separated,
as the row ids are) and its group (the video it came from). The class-folder reader
(:func:`features.reader.sources.read_folder`) reads it on purpose, so every row of the feature file
carries its group (the ``groups`` dataset) and stage two keeps a group on one side of every validation
split. The name starts with a dot, so every other reader (and Keras) skips it as it skips any hidden file.

Stage one is strict about it: a dataset row the file does not list is an error, not a group of its own,
because a stale file (``bneck frames`` killed before it rewrote it) would otherwise put the new frames of
a video on both sides of a split without a word.
"""

from __future__ import annotations

import csv
import io
import os

from features.attrs import MAX_GROUP_BY
from features.fsutil import atomic_write_bytes

from . import fs
from .errors import SourceError

GROUPS_FILE = ".bneck-groups.csv"


def _norm(path: str) -> str:
    return path.replace(os.sep, "/") if os.sep != "/" else path


def write_groups_file(root, rows, *, by: str) -> str:
    """Write ``root/.bneck-groups.csv`` atomically from ``rows``, pairs ``(path relative to root, group)``."""
    check_group_by(by, where=os.path.join(root, GROUPS_FILE))
    buf = io.StringIO(newline="")
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["path", by])
    for path, group in sorted(rows):
        w.writerow([_norm(path), group])
    out = os.path.join(os.fspath(root), GROUPS_FILE)
    # File names are bytes on POSIX: surrogateescape writes a non-UTF-8 name back as its own bytes.
    atomic_write_bytes(out, buf.getvalue().encode("utf-8", "surrogateescape"), durable=False)
    return out


def check_group_by(by, *, where) -> str:
    """``by`` (what the groups are: ``video``, a CSV column name), or SourceError naming ``where``."""
    if not isinstance(by, str) or not by.strip() or len(by) > MAX_GROUP_BY or not by.isprintable():
        raise SourceError(f"{where}: the group column must have a printable name of 1 to {MAX_GROUP_BY} characters, "
                          f"got {by!r}")
    return by.strip()


def read_groups_file(root, paths) -> tuple[list[str], str] | None:
    """The group of every row of ``paths`` (relative to ``root``) and what they are, or None without a file.

    Raises SourceError naming the file and line for a malformed file, a path listed twice, and rows the
    file does not list (a stale file: rerun ``bneck frames``, or delete it to extract without groups).
    """
    where = fs.join(os.fspath(root), GROUPS_FILE)
    if fs.is_url(where):  # a frames folder uploaded to a bucket keeps its groups
        if not fs.exists(where):
            return None
    elif not os.path.isfile(where):
        return None
    # Locally, undecodable bytes in a file name round-trip as write_groups_file wrote them.
    opened = fs.open_text(where) if fs.is_url(where) else open(where, newline="", encoding="utf-8-sig",
                                                                 errors="surrogateescape")
    with opened as f:
        reader = csv.reader(f)
        try:
            header = [h.strip() for h in next(reader, [])]
            if len(header) != 2 or header[0] != "path":
                raise SourceError(f"{where}:1: expected the header 'path,<group column>' (e.g. path,video), "
                                  f"got {','.join(header)[:80]!r}")
            by = check_group_by(header[1], where=f"{where}:1")
            group_of: dict[str, str] = {}
            for row in reader:
                if not row:
                    continue
                # The path is kept as written (csv quoting keeps a name's spaces); only the group is trimmed.
                if len(row) != 2 or not row[0] or not row[1].strip():
                    raise SourceError(f"{where}:{reader.line_num}: expected 'path,{by}' with both values, "
                                      f"got {row!r}")
                if row[0] in group_of:
                    raise SourceError(f"{where}:{reader.line_num}: {row[0]!r} is listed twice")
                group_of[row[0]] = row[1].strip()
        except (csv.Error, UnicodeDecodeError) as exc:
            raise SourceError(f"{where}:{reader.line_num + 1}: not a readable CSV line ({exc})") from None
    groups, unlisted = [], []
    for p in paths:
        g = group_of.get(_norm(p))
        if g is None:
            unlisted.append(p)
        groups.append(g)
    if unlisted:
        shown = ", ".join(repr(p) for p in unlisted[:3]) + (" ..." if len(unlisted) > 3 else "")
        raise SourceError(f"{where}: {len(unlisted)} of the {len(paths)} images are not listed ({shown}), so their "
                          f"{by} is unknown and a validation split could put near-duplicates on both sides. "
                          f"`bneck frames` rewrites this file at the end of each run: rerun it to finish, or delete "
                          f"the file to extract without groups")
    return groups, by


def read_groups_rows(root) -> dict[str, str]:
    """The ``{path: group}`` lines of ``root/.bneck-groups.csv`` ({} without one), for a tool that updates it."""
    where = os.path.join(os.fspath(root), GROUPS_FILE)
    if not os.path.isfile(where):
        return {}
    with open(where, newline="", encoding="utf-8-sig", errors="surrogateescape") as f:
        reader = csv.reader(f)
        try:
            header = next(reader, [])
            if len(header) != 2 or header[0].strip() != "path":
                raise SourceError(f"{where}:1: expected the header 'path,<group column>', "
                                  f"got {','.join(header)[:80]!r}")
            return {row[0]: row[1].strip() for row in reader if len(row) == 2 and row[0] and row[1].strip()}
        except csv.Error as exc:
            raise SourceError(f"{where}:{reader.line_num + 1}: not a readable CSV line ({exc})") from None
