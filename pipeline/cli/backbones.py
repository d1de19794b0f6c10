"""``bneck backbones``: the backbone registry, or one backbone's layer table or graph."""

from __future__ import annotations

from pipeline.cli.errors import UsageError
from pipeline.cli.jsonout import json_text

HELP = "list the backbone registry, or show one backbone's layers"
DESCRIPTION = ("List the registry; --summary NAME prints every layer of one backbone and --plot NAME draws its "
               "graph (both with random weights: nothing is downloaded).")


def add_arguments(p) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--summary", metavar="NAME", help="layer table of NAME: name, type, output shape, params; totals")
    g.add_argument("--plot", metavar="NAME", help="draw NAME's graph to -o (needs pydot and Graphviz's dot)")
    p.add_argument("-o", "--output", help="image file for --plot (default NAME.png)")
    p.add_argument("--input-size", help="N or HxW for --summary/--plot (default: the backbone's)")
    p.add_argument("--json", action="store_true", help="print the registry (or the --summary table) as JSON")


def check(args) -> None:
    if args.output and not args.plot:
        raise UsageError("-o/--output is the image file of --plot NAME")
    if args.input_size and not (args.summary or args.plot):
        raise UsageError("--input-size applies to --summary NAME or --plot NAME")


def run(args) -> int:
    from features.backbones import describe

    if args.summary or args.plot:
        from pipeline.tools import filters

        if args.plot:
            print(filters.plot_backbone(args.plot, args.output or f"{args.plot}.png", input_size=args.input_size))
            return 0
        table = filters.layer_table(args.summary, input_size=args.input_size)
        print(json_text(table, indent=1) if args.json else filters.format_layer_table(table))
        return 0
    rows = describe()
    if args.json:
        print(json_text(rows, indent=1))
        return 0
    print(format_catalogue(rows))
    return 0


def format_catalogue(rows: list[dict]) -> str:
    """The registry as an aligned table: one line per entry, its other named layers last."""
    lines = [f"{'name':31s} {'source':6s} {'family':14s} {'params':>7s} {'GFLOPs':>7s} {'input':>9s} "
             f"{'preprocess':15s} {'runtimes':12s} {'default layer':32s} other layers"]
    for r in rows:
        others = ", ".join(x for x in r["layers"] if x != r["default_layer"])
        size = "x".join(map(str, r["input_size"])) + ("" if r.get("fixed_size") else "+")
        source = "hub" if r["source"] == "keras-hub" else "keras"
        runtimes = ",".join("ov" if x == "openvino" else "tf" for x in r["runtimes"])
        params = f"{r['params'] / 1e6:.1f}M" if r["params"] else "?"
        gflops = f"{r['gflops']:.1f}" if r.get("gflops") else "?"
        lines.append(f"{r['name']:31s} {source:6s} {r['family']:14s} {params:>7s} {gflops:>7s} {size:>9s} "
                     f"{r['preprocessing']:15s} {runtimes:12s} {r['default_layer']:32s} {others}")
    lines.append("source: keras = keras.applications, hub = KerasHub (pip install 'bneck[hub]'); input: default "
                 "size, + = other sizes work; runtimes: tf = TensorFlow, ov = OpenVINO")
    return "\n".join(lines)


def needs_tensorflow(args) -> bool:
    # Listing the registry is a table of names; only building a backbone needs TensorFlow.
    return bool(args.summary or args.plot)
