"""Where a source's bytes live: the local disk, or any fsspec filesystem (``s3://``, ``gs://``, ``hf://``,
``file://``, ``memory://``...).

Readers ask this module three things: is a location a URL (:func:`is_url`), what files are under a
directory (:func:`list_files`) and, per row, a :class:`Blob` the decode pool reads. A local path
keeps the plain ``os`` route (an absolute path string goes to the decoder as before, so nothing
changes for local datasets); a URL goes through fsspec. The HDF5 output always stays local.

Reading happens in :class:`Blob.read_image_bytes`, called by :mod:`features.images` inside the
decode thread that decodes it: bytes are streamed into the decode pool with the runner's bounded
read-ahead (a few batches), never gathered up front.
"""

from __future__ import annotations

import os
import posixpath
import re

from .errors import SourceError


def is_url(path) -> bool:
    """True for ``proto://...`` locations, which fsspec opens."""
    return isinstance(path, str) and re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", path) is not None


def filesystem(url: str):
    """``(fs, path)`` for an fsspec URL; a SourceError if fsspec or the protocol's driver is missing."""
    try:
        import fsspec
    except ImportError:
        raise SourceError(f"{url}: reading URLs needs fsspec: pip install 'bneck[fsspec]'") from None
    try:
        fs, path = fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as exc:
        raise SourceError(f"{url}: cannot open this filesystem ({exc})") from None
    return fs, path


def join(root: str, rel: str) -> str:
    """``rel`` under ``root``: ``os.path.join`` locally, ``/``-joined for URLs."""
    if is_url(root):
        return root.rstrip("/") + "/" + rel.lstrip("/")
    return os.path.join(root, rel)


def exists(location: str) -> bool:
    """Whether ``location`` (a path or URL) exists."""
    if is_url(location):
        fs, path = filesystem(location)
        return fs.exists(path)
    return os.path.exists(location)


def isdir(location: str) -> bool:
    """Whether ``location`` (a path or URL) is a directory (or an object-store prefix)."""
    if is_url(location):
        fs, path = filesystem(location)
        return fs.isdir(path)
    return os.path.isdir(location)


def open_binary(location: str):
    """A binary file object for ``location`` (a path or URL)."""
    if is_url(location):
        fs, path = filesystem(location)
        return fs.open(path, "rb")
    return open(location, "rb")  # noqa: SIM115  (the caller closes it)


def open_text(location: str):
    """A text file object for a CSV or list file, local or on an fsspec filesystem (a UTF-8 BOM dropped)."""
    if is_url(location):
        fsys, path = filesystem(location)
        return fsys.open(path, "rt", newline="", encoding="utf-8-sig")
    return open(location, newline="", encoding="utf-8-sig")  # noqa: SIM115  (the caller's with-block closes it)


def parent(location: str) -> str:
    """The folder holding ``location``: an absolute local path, or the URL up to its last ``/``."""
    if is_url(location):
        return location.rstrip("/").rsplit("/", 1)[0]
    return os.path.dirname(os.path.abspath(location))


def absolute(location: str) -> str:
    """``location`` made absolute (local paths); URLs as given, without a trailing ``/``."""
    return location.rstrip("/") if is_url(location) else os.path.abspath(location)


def expand_braces(pattern: str) -> list[str]:
    """Expand ``{0..9}`` ranges (zero padding kept) and ``{a,b}`` lists, as webdataset and bash do."""
    m = re.search(r"\{([^{}]*)\}", pattern)
    if not m:
        return [pattern]
    body, head, tail = m.group(1), pattern[:m.start()], pattern[m.end():]
    rng = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if rng:
        lo, hi = rng.group(1), rng.group(2)
        width = len(lo) if len(lo) > 1 and lo.startswith("0") else 0
        options = [str(k).zfill(width) for k in range(int(lo), int(hi) + 1)]
    else:
        options = body.split(",")
    return [x for opt in options for x in expand_braces(head + opt + tail)]


def is_pattern(location: str) -> bool:
    """Whether ``location`` is a brace pattern (``shards/{00000..00099}.tar``) or a glob (``data/train-*.parquet``)."""
    if not isinstance(location, str):
        return False
    if re.search(r"\{[^{}]*(\.\.|,)[^{}]*\}", location) is None and not any(c in location for c in "*?["):
        return False
    # A local name that exists as typed ("photos [2024]/") is that file or folder, not a pattern.
    return is_url(location) or not os.path.exists(location)


def shard_files(data: str, suffix: str) -> list[str]:
    """The shard files ``data`` names: itself, the ``suffix`` files under a directory (sorted), or a brace pattern."""
    if is_pattern(data):
        files = []
        for one in expand_braces(data):
            files += _glob(one) if any(c in one for c in "*?[") else [one]
        if not files:
            raise SourceError(f"{data}: the pattern matches no file")
        absent = [f for f in files if not exists(f)]
        if absent:
            raise SourceError(f"{data}: {len(absent)} of {len(files)} shards do not exist, e.g. {absent[0]}")
        return [absolute(f) for f in files]
    if isdir(data):
        if is_url(data):
            rels = [r for r in list_files(data, recursive=True) if r.endswith(suffix)]
        else:
            from features.fsutil import walk_files

            root = os.path.abspath(data)
            rels = [os.path.relpath(p, root) for p in walk_files(root, suffixes=(suffix,))]
        if not rels:
            raise SourceError(f"{data}: no {suffix} files in this directory")
        return [join(absolute(data), r) for r in sorted(rels)]
    return [absolute(data)]


def _glob(pattern: str) -> list[str]:
    """Sorted matches of a glob, local or on an fsspec filesystem (URLs keep their protocol)."""
    if is_url(pattern):
        fsys, path = filesystem(pattern)
        protocol = pattern.split("://", 1)[0]
        found = sorted(fsys.glob(path))
        return [f"file://{m}" if protocol == "file" else f"{protocol}://{m.lstrip('/')}" for m in found]
    import glob

    return sorted(glob.glob(pattern))


def common_parent(files) -> str:
    """The deepest folder holding every one of ``files`` (local paths or URLs of one filesystem)."""
    if is_url(files[0]):
        parts = [f.split("/")[:-1] for f in files]
        common = []
        for level in zip(*parts):
            if len(set(level)) > 1:
                break
            common.append(level[0])
        return "/".join(common)
    return os.path.commonpath([os.path.dirname(f) for f in files])


def relative(location: str, root: str) -> str:
    """``location`` relative to ``root`` (a :func:`common_parent`)."""
    if is_url(location):
        return location[len(root):].lstrip("/")
    return os.path.relpath(location, root)


def list_files(url: str, *, recursive: bool) -> list[str]:
    """Files under an fsspec directory as paths relative to it, sorted, hidden names skipped.

    The local twin is :func:`features.fsutil.walk_files`; object stores have no directories to walk,
    so one ``find`` (a single listing call on S3/GCS) gives every key.
    """
    fs, root = filesystem(url)
    root = root.rstrip("/")
    found = fs.find(root, maxdepth=None if recursive else 1, withdirs=False)
    out = []
    for full in found:
        rel = posixpath.relpath(full, root) if root else full
        if any(part.startswith(".") for part in rel.split("/")):
            continue
        out.append(rel)
    return sorted(out)


def stats(url_root: str, rels) -> list[tuple[int, str]]:
    """Per file under an fsspec root: ``(size, version)``, ``(-1, "")`` when missing.

    ``version`` is what the filesystem offers to tell one write from the next: an ETag (S3, GCS),
    a modification time (local, SFTP), else nothing; the size always counts. One directory
    listing gives every file's info where the backend can, instead of one request per file.
    """
    fs, root = filesystem(url_root)
    root = root.rstrip("/")
    rels = list(rels)
    try:
        listing = {posixpath.relpath(k, root): v for k, v in fs.find(root, withdirs=False, detail=True).items()}
    except (OSError, NotImplementedError):
        listing = {}
    out = []
    for rel in rels:
        info = listing.get(rel)
        if info is None:
            try:
                info = fs.info(f"{root}/{rel}")
            except (OSError, FileNotFoundError):
                out.append((-1, ""))
                continue
        out.append((int(info.get("size") or 0), version_of(info)))
    return out


def version_of(info: dict) -> str:
    """The change marker an fsspec ``info`` dict offers: ETag, else mtime, else ``""``."""
    for key in ("ETag", "etag", "md5Hash", "sha", "mtime", "LastModified", "last_modified", "created"):
        if info.get(key) is not None:
            return f"{key}={info[key]}"
    return ""


class Blob:
    """One row's encoded image bytes, read when (and where) the decode pool asks for them.

    ``size`` (when known) lets a short read be reported as ``truncated`` instead of as a
    decoder error; ``offset`` reads a member inside a larger file (a tar shard).
    """

    __slots__ = ("location", "offset", "size", "name")

    def __init__(self, location: str, offset: int = 0, size: int | None = None, name: str | None = None):
        self.location, self.offset, self.size = location, offset, size
        self.name = name or location

    def read_image_bytes(self) -> bytes:
        """The bytes; ``OSError`` when the file cannot be opened, ``EOFError`` when it ends early."""
        if is_url(self.location):
            # One ranged request of exactly these bytes: a buffered remote file would fetch
            # a whole read-ahead block (5 MB on S3) for every member of a tar.
            fsys, path = filesystem(self.location)
            end = None if self.size is None else self.offset + self.size
            data = fsys.cat_file(path, start=self.offset or None, end=end)
        else:
            with open(self.location, "rb") as f:
                if self.offset:
                    f.seek(self.offset)
                data = f.read() if self.size is None else f.read(self.size)
        if self.size is not None and len(data) < self.size:
            raise EOFError(f"{len(data)} of {self.size} bytes: the file ends early")
        return data

    def __repr__(self) -> str:
        return f"Blob({self.name!r})"


class FsFiles:
    """Rows that are files under an fsspec root: a :class:`Blob` each, fingerprinted by size and etag/mtime."""

    def __init__(self, root: str, rels):
        self.root, self.rels = root.rstrip("/"), list(rels)
        self._stats = None

    def stats(self):
        """``(size, version)`` per row, listed once."""
        if self._stats is None:
            self._stats = stats(self.root, self.rels)
        return self._stats

    def missing(self) -> dict:
        """``{row: "missing"}`` for rows whose object does not exist."""
        return {i: "missing" for i, (size, _) in enumerate(self.stats()) if size < 0}

    def source(self, i):
        """The blob of row ``i``."""
        return Blob(join(self.root, self.rels[i]))

    def fingerprint_bytes(self) -> bytes:
        """Each object's size and etag/mtime, in row order."""
        return b"\0".join(f"{size}:{version}".encode() for size, version in self.stats())


class InlineBytes:
    """Encoded image bytes already in hand (e.g. one cell of a parquet row group being decoded)."""

    __slots__ = ("data", "name")

    def __init__(self, data: bytes, name: str):
        self.data, self.name = data, name

    def read_image_bytes(self) -> bytes:
        """The bytes as given."""
        return self.data
