"""The classic Keras way to compute bottleneck features, as a baseline for stage one.

``keras.utils.image_dataset_from_directory`` (tf.data JPEG decoding + bilinear resize,
parallel, prefetched) feeding ``model.predict`` in float32, one full pass per view: predict
on the originals, then a second pass over the directory predicting on the mirrored images.
This is what most transfer-learning tutorials do (the Keras 2 version was
``flow_from_directory`` + ``predict_generator``). Reported: images/s over both passes,
i.e. images per second with both views computed, comparable with model_ceiling's images/s.
Weights are seeded random (``--weights none``), which time exactly like ImageNet weights.

    python bench/classic.py --backbone vgg16 --n 512
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402


def main(argv=None) -> dict:
    p = common.parser(__doc__)
    p.add_argument("--backbone", default="mobilenet", help="registry name (vgg16, resnet50, mobilenet, ...)")
    p.add_argument("--input-size", default="224", help="N or HxW (default 224)")
    p.add_argument("--batch", type=int, default=32, help="batch size (default 32)")
    p.add_argument("--n", type=int, default=512, help="number of 256x256 JPEGs (default 512)")
    p.add_argument("--classes", type=int, default=4, help="class folders of the fixture (default 4)")
    p.add_argument("--no-flip", dest="flip", action="store_false", help="only the pass on the originals")
    p.add_argument("--seed", type=int, default=0, help="seed of the random (--weights none) backbone")
    common.add_output_args(p)
    args = p.parse_args(argv)

    import logging

    import keras
    import tensorflow as tf

    from features import backbones, weights

    logging.getLogger("bneck").setLevel(logging.ERROR)
    spec = backbones.get(args.backbone)
    size = backbones.parse_input_size(args.input_size, spec)
    directory, paths = common.jpeg_folder(args.n, args.classes, size=(256, 256), root=args.fixture_root)
    common.warm_page_cache(paths)
    with common.Timer() as tb:
        model, _ = weights.build_backbone(spec, input_size=size, weights="none", seed=args.seed)
    ds = keras.utils.image_dataset_from_directory(directory, labels="inferred", image_size=size,
                                                  batch_size=args.batch, shuffle=False, verbose=False)
    prep = spec.preprocess_input
    views = {"original": ds.map(lambda x, y: prep(x), num_parallel_calls=tf.data.AUTOTUNE)}
    if args.flip:
        views["flipped"] = ds.map(lambda x, y: prep(tf.reverse(x, axis=[2])), num_parallel_calls=tf.data.AUTOTUNE)

    # Warm-up: trace predict once on a single batch so graph building is not timed.
    model.predict(views["original"].take(1), verbose=0)
    passes = {}
    total = 0.0
    for name, d in views.items():
        with common.Timer() as t:
            out = model.predict(d.prefetch(tf.data.AUTOTUNE), verbose=0)
        assert len(out) == args.n, (len(out), args.n)
        passes[name] = {"seconds": round(t.seconds, 3), "images_per_s": round(args.n / t.seconds, 2)}
        total += t.seconds
        common.log(f"  {name}: {args.n / t.seconds:.1f} img/s")
    result = {"bench": "classic", "backbone": spec.name, "input_size": list(size), "batch": args.batch,
              "precision": "fp32", "runtime": "keras.predict", "flip": args.flip, "n": args.n,
              "weights": f"none(seed={args.seed})", "build_seconds": round(tb.seconds, 2),
              "feature_shape": list(model.output_shape[1:]), "passes": passes, "seconds": round(total, 3),
              "images_per_s": round(args.n / total, 2), "features_per_s": round(args.n * len(views) / total, 2)}
    common.log(f"classic: {result['images_per_s']} img/s with {len(views)} view(s)")
    return common.emit(result)


if __name__ == "__main__":
    main()
