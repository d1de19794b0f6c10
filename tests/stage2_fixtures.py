"""Real small feature files for stage-two tests, made by running stage one on generated images."""

from __future__ import annotations

import os

from features.config import ExtractConfig
from features.runner import extract

FAST = dict(backbone="mobilenet", weights="none", seed=1, batch_size=16, progress=False,
            precision="fp32", store_dtype="float32", max_bad_fraction=0.5)


def extract_fast(data, out, **kw) -> str:
    """Stage one with a small seeded random backbone at fp32 (exact, quick)."""
    cfg = dict(FAST)
    cfg.update(kw)
    extract(ExtractConfig(data=str(data), output=str(out), **cfg))
    return str(out)


def faces(tmp_path, n_faces=240) -> dict:
    """The demo's synthetic Kaggle-format faces, extracted with VGG16 block4_pool at 96x96."""
    from pipeline.tools.demo import make_demo

    paths = make_demo(os.path.join(tmp_path, "demo"), n_faces=n_faces)
    kw = dict(backbone="vgg16", layer="block4_pool", input_size="96", precision="bf16", store_dtype="float16")
    return {"train": extract_fast(paths["keypoints_training"], os.path.join(tmp_path, "ftrain.h5"), **kw),
            "val": extract_fast(paths["keypoints_validation"], os.path.join(tmp_path, "fval.h5"), **kw),
            "paths": paths}
