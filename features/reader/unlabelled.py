"""Readers of images that have no labels yet: a folder of images and a text file of paths (task ``none``).

The first thing many users do is extract features of a test set, a folder to cluster or
deduplicate, or photos to predict on. These readers give such rows the usual manifest with neither
labels nor targets; stage one writes them like any other source (both views, valid/reason, resume,
shards, merge) and stage two can predict on them but refuses to train on them.
"""

from __future__ import annotations

import os

from features.fsutil import walk_files

from . import fs
from .base import file_rows, root_of
from .errors import SourceError
from .manifest import Manifest


def read_images(path, *, recursive=False):
    """Read a folder of images without class subfolders (every file beneath it with ``recursive``).

    Hidden files and folders are skipped; the order is the one directory walker's (Keras'), so the
    row ids are the same on every run and machine.
    """
    if fs.is_url(path):
        root = fs.absolute(path)
        rels = fs.list_files(path, recursive=recursive)
        if not rels:
            raise SourceError(f"{path}: no files found{'' if recursive else ' (--recursive looks in subfolders)'}")
        return Manifest("images", root, rels, blobs=fs.FsFiles(root, rels))
    root = os.path.abspath(path)
    if recursive:
        rels = [os.path.relpath(full, root) for full in walk_files(root)]
    else:
        rels = [os.path.basename(full) for full in walk_files(root) if os.path.dirname(full) == root]
    if not rels:
        subdirs = [e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith(".")]
        hint = " (its subfolders hold files: pass --recursive)" if subdirs and not recursive else ""
        raise SourceError(f"{path}: no image files found{hint}")
    return Manifest("images", root, rels, **file_rows(root, rels))


def read_list(path, *, image_root=None):
    """Read a plain text file of image paths, one per line, relative to ``image_root`` or the list's folder.

    Blank lines and ``#`` comments are skipped. A Places365 test list (names without a label) is such a
    file; a leading ``/`` means "under the image root", as in Places365's own lists.
    """
    root = root_of(path, image_root)
    paths = []
    with fs.open_text(path) as f:
        for text in f:
            name = text.strip()
            if name and not name.startswith("#"):
                paths.append(name.lstrip("/"))
    if not paths:
        raise SourceError(f"{path}: the list file has no entries")
    return Manifest("list", root, paths, **file_rows(root, paths))
