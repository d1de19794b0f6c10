"""The model directory: a trained head plus ``model.json``, written atomically, verified on load.

Layout::

    model_dir/
        model.json      # format, head_loader, caller metadata, sha256 of every other file
        head.keras ...  # Keras heads: whatever head.save(dir) writes (head.keras + head.json)
        head.skops      # scikit-learn heads: skops.io, no pickle; only the head's trusted types are loaded
        head.joblib     # format v1 (and estimators of the caller's own): a pickle, read only with trust_pickle

A model directory is built in a hidden temporary directory next to its destination and moved
into place with one rename (:func:`features.fsutil.replace_dir`), so ``path`` is either absent, the
previous model, or the complete new model: never half-written.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import uuid
from pathlib import Path, PurePosixPath

import numpy as np

from features.faults import fault_point  # testing hook (BNECK_TEST_KILL_AT), no-op when unset
from features.fsutil import replace_dir, walk_files

__all__ = ["FORMAT", "FORMAT_VERSION", "ModelDirError", "load_model_dir", "save_model_dir", "upgrade_model_dir",
           "sha256_file", "pickle_refusal"]

log = logging.getLogger(__name__)

FORMAT = "bneck-model"
#: The newest format this bneck reads (and writes for skops heads); v1 directories are read too.
FORMAT_VERSION = 2
MODEL_JSON = "model.json"
#: A model.json larger than this is refused unread (a model.json is a few kB; this bounds memory and time).
MAX_MODEL_JSON_BYTES = 16 * 2**20


class ModelDirError(ValueError):
    """A model directory is missing, malformed, tampered with, unsafe to load, or cannot be written."""


def pickle_refusal(path, name="head.joblib") -> str:
    """Why a pickled head is not loaded, and the explicit opt-ins."""
    return (f"{path}: refusing to load {name}: it is a pickle, and loading a pickle runs whatever code it "
            "contains, so a model directory from someone else could take over this machine (the sha256 in "
            f"{MODEL_JSON} show the files are intact, not who wrote them). If you made it or trust its source, "
            "pass --trust-pickle (trust_pickle=True in Python), or rewrite it once in the safe format with "
            f"`bneck upgrade-model {path} --trust-pickle`")


def sha256_file(path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(2**20), b""):
            h.update(chunk)
    return h.hexdigest()


def _json_default(obj):
    """Make numpy values and paths in caller metadata JSON-serialisable."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    raise TypeError(f"model metadata value of type {type(obj).__name__} is not JSON-serialisable")


def _safe_relpath(name: str, where) -> PurePosixPath:
    """Validate a relative file name inside a model dir (no absolute paths, no '..')."""
    rel = PurePosixPath(str(name).replace(os.sep, "/"))
    if not rel.parts or rel.is_absolute() or ".." in rel.parts or rel.parts[0] == "":
        raise ModelDirError(f"{where}: invalid file name {name!r} (must be relative, no '..')")
    return rel


def _list_files(root: Path) -> list[str]:
    """All regular files under root as sorted posix relative names, except model.json."""
    names = (Path(f).relative_to(root).as_posix() for f in walk_files(root, hidden=True))
    return sorted(n for n in names if n != MODEL_JSON)


def _is_replaceable(path: Path) -> bool:
    """True for an empty dir or a previous model dir: the only things overwrite may delete."""
    return path.is_dir() and not path.is_symlink() and (
        (path / MODEL_JSON).is_file() or not any(path.iterdir()))


def check_writable(path, *, overwrite: bool) -> None:
    """Raise :class:`ModelDirError` unless a model directory may be written at ``path``.

    Commands call it before their work starts, so a forgotten ``--overwrite`` fails in
    milliseconds instead of after the training it would have thrown away.
    """
    if os.path.lexists(path) and not overwrite:
        raise ModelDirError(f"{path}: already exists (use --overwrite, or overwrite=True in Python, to replace it)")
    if os.path.lexists(path) and not _is_replaceable(Path(path)):
        raise ModelDirError(f"{path}: refusing to overwrite: not a bneck model directory")


def save_model_dir(path, head, meta: dict, *, extra_files: dict | None = None,
                   overwrite: bool = False) -> dict:
    """Save ``head`` and ``meta`` as a model directory at ``path``, atomically.

    Args:
        path: destination directory (its parent is created if needed).
        head: the trained head. A registered head (:class:`pipeline.heads.Head`), or any object with
            ``save(dirpath)`` and a ``head_loader`` (the fine-tuned network), writes itself with
            ``head.save(dirpath)`` (the dense head: ``head.keras`` + ``head.json``; the others
            ``head.skops``, no pickle); any other estimator is pickled with joblib to ``head.joblib``,
            which :func:`load_model_dir` reads back only with ``trust_pickle=True``.
        meta: JSON-serialisable metadata (head type, params, feature provenance, class or
            target names, metrics...); numpy scalars/arrays are converted.
        extra_files: ``{relative name: bytes or path of a file to copy}`` added to the dir
            (e.g. plots, a confusion matrix CSV).
        overwrite: replace an existing model directory at ``path``. Without it an existing
            ``path`` is an error. For safety only an empty directory or one containing a
            ``model.json`` is ever replaced.

    ``model.json`` gets ``meta`` plus ``format``, ``format_version`` (the lowest that reads this head: 1 for
    keras and joblib heads, 2 for skops ones), ``head_loader`` (the head class's ``head_loader``: "keras",
    "skops" or "joblib") and ``files`` (sha256 of every other file). Everything is written to a
    temporary directory next to ``path`` and moved into place at the end; on any error the
    temporary directory is removed and ``path`` is left as it was. Returns the model.json dict.
    """
    path = Path(path)
    check_writable(path, overwrite=overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Same directory => same filesystem, so the final os.replace is an atomic rename. Not
    # mkdtemp: its 0700 mode would survive the rename and hide the model from other users.
    # Host and pid in the name let a later save remove what a killed save left behind.
    _remove_stale_tmp(path)
    tmp = path.parent / f".{path.name}.{_OWNER}-{os.getpid()}-{uuid.uuid4().hex[:12]}.partial"
    os.mkdir(tmp)
    try:
        from pipeline.heads import Head, PickledHead

        # A registered head writes itself (dense: head.keras + head.json; scikit-learn: head.skops), as
        # does an object declaring its head_loader (the fine-tuned network: model.keras); any other
        # estimator is pickled as format v1 did.
        writes_itself = isinstance(head, Head) or (callable(getattr(head, "save", None))
                                                   and isinstance(getattr(head, "head_loader", None), str))
        writer = head if writes_itself else PickledHead
        if writes_itself:
            head.save(tmp)
        else:
            PickledHead.save(head, tmp)
        for name, content in (extra_files or {}).items():
            rel = _safe_relpath(name, path)
            if rel.as_posix() == MODEL_JSON:
                raise ModelDirError(f"{path}: extra file may not be called {MODEL_JSON}")
            dest = tmp.joinpath(*rel.parts)
            dest.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, (bytes, bytearray, memoryview)):
                dest.write_bytes(bytes(content))
            else:
                shutil.copyfile(content, dest)
        doc = {"format": FORMAT, "format_version": getattr(writer, "format_version", 1)}
        doc.update({k: v for k, v in meta.items() if k not in ("files", "format",
                                                                 "format_version")})
        # How the head was written decides how it is read back (an svm head: arrays, or skops for rbf).
        doc["head_loader"] = writer.saved_loader() if hasattr(writer, "saved_loader") else writer.head_loader
        doc["files"] = {name: sha256_file(tmp / name) for name in _list_files(tmp)}
        text = json.dumps(doc, indent=2, default=_json_default, allow_nan=True)
        with open(tmp / MODEL_JSON, "w", encoding="utf-8") as fh:
            fh.write(text + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        fault_point("model_tmp_written")
        _move_into_place(tmp, path, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _remove_stale_old(path)
    log.info("saved model directory %s", path)
    return json.loads(text)


_OWNER = "".join(c if c.isalnum() else "_" for c in os.uname().nodename)[:40] or "host"


def _remove_stale_tmp(path: Path) -> None:
    """Delete temp dirs of earlier saves to ``path`` by processes of this host that are gone.

    A save killed before its final rename (SIGKILL, OOM) leaves a complete hidden copy of the
    model next to ``path``. Only dirs whose host is this one and whose pid is dead are removed,
    so a save in progress, here or on another host sharing the directory, is never touched.
    """
    prefix = f".{path.name}.{_OWNER}-"
    try:
        names = os.listdir(path.parent)
    except OSError:
        return
    for name in names:
        if not (name.startswith(prefix) and name.endswith(".partial")):
            continue
        pid = name[len(prefix):].split("-", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(path.parent / name, ignore_errors=True)
        except OSError:
            pass  # alive (another user's process): leave it


def _move_into_place(tmp: Path, path: Path, overwrite: bool) -> None:
    """Rename the finished tmp dir to path; with overwrite, swap out the old dir first.

    Either way the parent is fsynced (best effort: a model save never fails over it) before an
    old model is deleted, so after a power cut ``path`` is not back to its old state although
    save_model_dir returned.
    """
    if not os.path.lexists(path):
        try:
            replace_dir(tmp, path)
        except OSError as exc:  # created meanwhile by someone else: do not clobber it
            raise ModelDirError(f"{path}: could not move the new model into place ({exc})")
        return
    if not overwrite or not _is_replaceable(path):
        raise ModelDirError(f"{path}: appeared while saving; not overwriting it")
    # old -> aside (under a name _remove_stale_old recognises), new -> path, then old deleted.
    replace_dir(tmp, path, aside=path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.old", point="model_moved_aside")


def _remove_stale_old(path: Path) -> None:
    """Delete ``.NAME.<8 hex>.old`` dirs that an overwrite killed between its two renames left beside ``path``."""
    # Such a dir holds the model this save has just replaced, so it is obsolete. Only that exact
    # pattern for this NAME is matched: ".m.b.1234abcd.old" belongs to "m.b", not to "m".
    pattern = re.compile(rf"\.{re.escape(path.name)}\.[0-9a-f]{{8}}\.old")
    try:
        names = os.listdir(path.parent)
    except OSError:
        return
    for name in names:
        if pattern.fullmatch(name) and not os.path.islink(path.parent / name):
            log.info("removing %s, left by an interrupted overwrite of %s", path.parent / name, path)
            shutil.rmtree(path.parent / name, ignore_errors=True)


def read_model_json(path) -> dict:
    """Read and check the model.json of a model directory (no hashing, no head loading)."""
    path = Path(path)
    mj = path / MODEL_JSON
    if not mj.is_file():
        raise ModelDirError(f"{path}: not a bneck model directory (no {MODEL_JSON})")
    if mj.stat().st_size > MAX_MODEL_JSON_BYTES:
        raise ModelDirError(f"{mj}: {mj.stat().st_size} bytes, too large for a {MODEL_JSON} (refused unread)")
    try:
        meta = json.loads(mj.read_text(encoding="utf-8"))
    except RecursionError:
        raise ModelDirError(f"{mj}: unreadable (nested too deeply)") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelDirError(f"{mj}: unreadable ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ModelDirError(f"{mj}: not a bneck model (format is not {FORMAT!r})")
    version = meta.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ModelDirError(f"{mj}: format_version {version!r} is not supported by this bneck "
                            f"(max {FORMAT_VERSION}); upgrade bneck")
    if not isinstance(meta.get("files"), dict):
        raise ModelDirError(f"{mj}: no 'files' checksum table")
    return meta


def verify_model_dir(path, meta: dict | None = None) -> dict:
    """Check every file listed in model.json against its sha256; return the metadata."""
    path = Path(path)
    meta = read_model_json(path) if meta is None else meta
    root = path.resolve()
    for name, digest in meta["files"].items():
        file = path.joinpath(*_safe_relpath(name, path).parts)
        if (file.exists() or file.is_symlink()) and not file.resolve().is_relative_to(root):
            raise ModelDirError(f"{path}: file {name!r} listed in {MODEL_JSON} is a link to "
                                f"{file.resolve()}, outside the model directory")
        if not file.is_file():
            raise ModelDirError(f"{path}: file {name!r} listed in {MODEL_JSON} is missing")
        if sha256_file(file) != digest:
            raise ModelDirError(f"{path}: file {name!r} does not match its sha256 in "
                                f"{MODEL_JSON} (modified or corrupted)")
    return meta


def load_model_dir(path, *, trust_pickle: bool = False, scoring: bool = False):
    """Load a model directory: verify checksums, then load the head. Returns (head, meta).

    Every file listed in ``model.json`` is checked against its sha256 first; a missing or
    modified file raises :class:`ModelDirError` naming it. The head is read back by the ``load``
    of the registered class named by ``model.json["head"]`` (``pipeline.heads.loader_for``), so
    directories written before the registry existed load the same way.

    Security: the checksums prove integrity, not trust (anyone can rewrite model.json too), so
    what is loaded must be safe by itself. ``head.skops`` holds only the head class's trusted types
    (anything else is refused, naming the type); ``head.keras`` is checked and loaded with Keras
    ``safe_mode=True`` (:func:`pipeline.heads.load_keras_file`). ``head.joblib`` (format v1) is a
    pickle, and unpickling runs arbitrary code: it is refused unless ``trust_pickle=True``.

    ``scoring=True`` is for callers that only score features (evaluate, report): a linear head saved as
    arrays then comes back as a numpy-only :class:`pipeline.heads.arrays.LinearScorer`, computing the
    same labels and scores without importing scikit-learn.
    """
    path = Path(path)
    meta = verify_model_dir(path)
    if scoring and meta.get("head_loader") == "arrays":
        from pipeline.heads.arrays import ARRAYS_FILE, PARAMS_FILE, LinearScorer
        from pipeline.heads.base import UnsafeHeadFile

        _check_listed(path, meta, (ARRAYS_FILE, PARAMS_FILE))

        try:
            return LinearScorer.from_dir(path, str(meta.get("head"))), meta
        except (UnsafeHeadFile, KeyError) as exc:
            raise ModelDirError(f"{path}: {exc}") from None
    if meta.get("head") == "finetuned":
        raise ModelDirError(f"{path} is a fine-tuned model (one network from pixels to outputs): it works on "
                            "images, use `bneck predict`, `bneck export` or `bneck evaluate-images`")
    from pipeline.heads import UnsafeHeadFile, loader_for

    loader = meta.get("head_loader")
    cls = loader_for(meta.get("head"), loader)
    if cls is None:
        raise ModelDirError(f"{path}: unknown head_loader {loader!r} for head {meta.get('head')!r} in {MODEL_JSON}")
    if cls.runs_code and not trust_pickle:
        raise ModelDirError(pickle_refusal(path, cls.saved_files[0]))
    try:
        _check_listed(path, meta, cls.files_to_read(path))
        head = cls.load(path)
    except UnsafeHeadFile as exc:
        raise ModelDirError(str(exc)) from None
    return head, meta


def _check_listed(path, meta: dict, names) -> None:
    """Refuse to read a head file that model.json does not list: its sha256 was never checked."""
    for name in names:
        if name not in meta["files"]:
            raise ModelDirError(f"{path}: {name} is not listed in {MODEL_JSON}")


def upgrade_model_dir(path, *, trust_pickle: bool = False, output=None, overwrite: bool = False) -> dict:
    """Rewrite a model directory whose head is a pickle (``head.joblib``) in its class's safe format.

    Loading the pickle runs its code, so this needs ``trust_pickle=True`` like any other load of it.
    The head is written with its class's own ``save``, read back the safe way and checked to predict
    the same as the pickle on random rows before anything is replaced. The other files (history,
    grid results, plots) and the metadata are kept; ``model.json`` records ``upgraded_from``. With
    ``output`` the new directory goes there (``overwrite`` to replace one); else ``path`` is replaced
    atomically. A directory with nothing to upgrade is left as it is. Returns a report dict.
    """
    import tempfile

    from pipeline.heads import Head, loader_for

    path = Path(path)
    meta = verify_model_dir(path)
    cls = loader_for(meta.get("head"), meta.get("head_loader"))
    report = {"model": str(path), "head": meta.get("head"), "head_loader": meta.get("head_loader")}
    if meta.get("head") == "finetuned" or cls is None or not cls.runs_code:
        return {**report, "upgraded": False, "reason": "no pickle in it: nothing to upgrade"}
    head, meta = load_model_dir(path, trust_pickle=trust_pickle)
    if not isinstance(head, Head):
        raise ModelDirError(f"{path}: the pickled head is a {type(head).__name__}, not a bneck head; it has no "
                            "safe format (keep loading it with trust_pickle=True, or retrain with bneck)")
    with tempfile.TemporaryDirectory() as tmp:  # the safe form must give the same answers as the pickle
        type(head).save(head, tmp)
        again = type(head).load(tmp)
        _check_same_predictions(head, again, path)
    extra = {name: path.joinpath(*_safe_relpath(name, path).parts) for name in meta["files"]
             if name not in cls.saved_files}
    keep = {k: v for k, v in meta.items() if k not in ("files", "head_loader", "format", "format_version")}
    keep["upgraded_from"] = {"head_loader": meta["head_loader"], "format_version": meta["format_version"]}
    dest = Path(output) if output is not None else path
    doc = save_model_dir(dest, head, keep, extra_files=extra, overwrite=overwrite if output is not None else True)
    log.info("upgraded %s: %s -> %s", path, meta["head_loader"], doc["head_loader"])
    return {**report, "upgraded": True, "output": str(dest), "new_head_loader": doc["head_loader"],
            "format_version": doc["format_version"], "files": sorted(doc["files"])}


def _check_same_predictions(head, again, path) -> None:
    """Raise :class:`ModelDirError` unless ``again`` predicts exactly what ``head`` does on seeded random rows."""
    n = getattr(head, "n_features_in_", None)
    if not isinstance(n, (int, np.integer)):
        return
    shape = tuple(getattr(head, "input_shape_", ()) or (int(n),))
    x = np.random.default_rng(0).normal(size=(16, *shape)).astype(np.float32)
    for method in ("predict_proba", "predict"):
        if callable(getattr(head, method, None)):
            a, b = np.asarray(getattr(head, method)(x)), np.asarray(getattr(again, method)(x))
            if a.shape != b.shape or not np.array_equal(a, b, equal_nan=True):
                raise ModelDirError(f"{path}: the head rewritten safely does not predict what the pickle does; "
                                    "left unchanged")
            return


def needs_tensorflow(path) -> bool:
    """Whether loading the head of model directory ``path`` imports TensorFlow (a cheap read of model.json).

    A Keras head always does; otherwise the registered head class decides from what it was saved with
    (``Head.loads_tensorflow``). A directory that cannot be read says False: loading it then fails and
    says why.
    """
    from pipeline.heads import HEAD_NAMES, head_class

    try:
        meta = json.loads((Path(path) / MODEL_JSON).read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    if not isinstance(meta, dict):
        return False
    if meta.get("head_loader") == "keras":
        return True
    if meta.get("head_loader") == "arrays":  # linear heads as plain arrays: never Keras
        return False
    head = meta.get("head")
    return head in HEAD_NAMES and head_class(head).loads_tensorflow(meta)
