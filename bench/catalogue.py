"""The catalogue's static figures: parameters and GFLOPs of every registry entry at its default size.

Each entry is built with random weights (nothing is downloaded) and its default-layer graph is
counted by TensorFlow's profiler (features.backbones.flops). `bneck backbones` shows the numbers
the registry records; this script is how they were made, and how to check them after an upgrade.

    python bench/catalogue.py --out catalogue.json            # every entry (minutes; ~2 GB RAM at peak)
    python bench/catalogue.py --only vgg16,dinov2_small
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", default="", help="comma-separated entry names (default: all)")
    p.add_argument("--out", help="write the table as JSON here too")
    args = p.parse_args(argv)

    from features.quiet import import_tensorflow_quietly

    import_tensorflow_quietly()
    import keras

    from features import backbones
    from features.backbones.flops import count_flops

    names = [n for n in args.only.split(",") if n] or list(backbones.REGISTRY)
    table = {}
    for name in names:
        spec = backbones.get(name)
        try:
            full = spec.build(weights=None)
        except ImportError as exc:  # a KerasHub entry without the [hub] extra
            print(f"{name}: skipped ({exc})", file=sys.stderr)
            continue
        model = spec.truncate(full, spec.default_layer)
        row = {"params": int(full.count_params()), "gflops": round(count_flops(model, spec.input_size) / 1e9, 2),
               "input_size": list(spec.input_size)}
        table[name] = row
        print(json.dumps({name: row}), flush=True)
        del full, model
        keras.backend.clear_session()
        gc.collect()
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(table, f, indent=1)
    return table


if __name__ == "__main__":
    main()
