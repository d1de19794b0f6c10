"""A head model directory stitched to its rebuilt backbone: uint8 batches or image files in, predictions out.

``tta_flip`` averages the original and mirrored predictions; keypoints predicted on the
mirror are un-mirrored first (same convention as :mod:`features.keypoints`).
"""

from __future__ import annotations

import itertools

import numpy as np

from features import images, keypoints
from pipeline.data.keypoint_frame import to_image_pixels, unmirror_widths
from pipeline.evaluate import check_top_k, head_scores
from pipeline.modeldir import load_model_dir
from pipeline.serve.backbone import as_stored, make_extractor, pool_on_load


class Predictor:
    """A trained model directory stitched to its backbone, ready for images.

    >>> p = Predictor("models/svm")
    >>> p.predict_files(["cat.jpg"], top_k=3)   # list of result dicts
    """

    def __init__(self, model_dir, *, tta_flip: bool = False, batch_size: int = 32, weights_dirs=(),
                 trust_pickle: bool = False):
        self.head, self.meta = load_model_dir(model_dir, trust_pickle=trust_pickle)
        self.prov = self.meta["features"]
        self.tta_flip, self.batch_size = tta_flip, batch_size
        self.spec, self.extractor = make_extractor(self.prov, flip=tta_flip, batch_size=batch_size, model_dir=model_dir,
                                                   weights_dirs=weights_dirs)
        self.input_size = tuple(self.prov["input_size"])

    def _features(self, x):
        orig, flipped = self.extractor(x)
        pool = self.meta["pooling"]
        orig = pool_on_load(as_stored(orig, self.prov), pool)
        flipped = pool_on_load(as_stored(flipped, self.prov), pool) if flipped is not None else None
        return orig, flipped

    def predict_arrays(self, x: np.ndarray, widths=None) -> np.ndarray:
        """Scores (classification) or targets (regression, in the head's frame) for a uint8 batch at the input size.

        Keypoints come out in the training frame (``meta["target_frame"]``); :meth:`predict_files` moves
        them into each file's pixels with :func:`pipeline.data.keypoint_frame.to_image_pixels`.
        """
        task = self.meta["task"]
        orig, flipped = self._features(x)
        out = head_scores(self.head, orig, task)
        if flipped is None:
            return out
        other = head_scores(self.head, flipped, task)
        if task == "regression":
            w = unmirror_widths(self.meta, widths, len(x), self.input_size)
            other = keypoints.flip_targets(other, self.meta["target_names"], w)
        return (out + other) / 2

    def predict_files(self, paths, *, top_k: int = 5):
        """Yield one result dict per path, in order; undecodable files give ``{"path", "error"}``."""
        paths = list(paths)
        yield from self.predict_sources(paths, paths, top_k=top_k)

    def predict_sources(self, names, sources, *, top_k: int = 5, bad=None):
        """Yield one result dict per source, in order, named ``names[i]`` (its ``path``).

        ``sources`` is anything :func:`features.images.decode` takes: paths, inline arrays, the blobs of a
        manifest (``manifest.source(i)``), read in batches as they are decoded. ``bad``: ``{i: reason}`` of
        rows already known to have no usable image (a manifest's ``row_errors``), reported without decoding.
        """
        check_top_k(top_k)
        bad = bad or {}
        pairs = iter(zip(names, sources))
        with images.decode_pool() as pool:
            for start in itertools.count(0, self.batch_size):
                chunk = list(itertools.islice(pairs, self.batch_size))
                if not chunk:
                    return
                todo = [i for i in range(len(chunk)) if start + i not in bad]
                decoded = dict(zip(todo, images.decode_all([chunk[i][1] for i in todo], self.input_size, pool=pool)))
                ok = [i for i in todo if decoded[i][0] is not None]
                results = {}
                if ok:
                    x = np.stack([decoded[i][0] for i in ok])
                    sizes = np.array([decoded[i][1] for i in ok])
                    preds = to_image_pixels(self.meta, self.predict_arrays(x, widths=sizes[:, 1]), sizes)
                    results = {i: self._result(chunk[i][0], preds[j], sizes[j], top_k) for j, i in enumerate(ok)}
                for i, (name, _) in enumerate(chunk):
                    reason = bad.get(start + i) or decoded[i][2]
                    yield results.get(i) or {"path": name, "error": reason, "detail": images.REASONS.get(reason, "")}

    def _result(self, path, pred, size, top_k):
        return result_for(self.meta, path, pred, size, top_k)


def result_for(meta: dict, path: str, pred, size, top_k: int) -> dict:
    """One ``bneck predict --json`` line: the top classes and scores, or the keypoints in the image's pixels."""
    if meta["task"] == "classification":
        names = meta["class_names"]
        order = np.argsort(-pred)[:top_k]
        return {"path": path, "label": str(names[order[0]]),
                "scores": {str(names[i]): round(float(pred[i]), 6) for i in order}}
    # Keypoints are in this image's own pixels (to_image_pixels), whatever size the head was trained on.
    return {"path": path, "image_size": [int(v) for v in size],
            "targets": {str(n): round(float(v), 4) for n, v in zip(meta["target_names"], pred)}}
