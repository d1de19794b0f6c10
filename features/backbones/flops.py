"""Floating-point operations of one forward pass, counted on the TensorFlow graph (multiply and add: 2 each)."""

from __future__ import annotations


_REGISTERED = []


def _register_einsum_flops():
    """TensorFlow's profiler has no statistics for Einsum (KerasHub's CLIP attention): 2 x every index's size."""
    if _REGISTERED:
        return
    from tensorflow.python.framework import ops

    def einsum_flops(graph, node):
        equation = node.attr["equation"].s.decode()
        inputs, _ = equation.replace(" ", "").split("->")
        sizes = {}
        for spec, name in zip(inputs.split(","), node.input):
            shape = ops.get_shape_from_graph_def(graph, name) if hasattr(ops, "get_shape_from_graph_def") else \
                graph.get_tensor_by_name(name if ":" in name else name + ":0").shape
            dims = shape.as_list()
            letters = spec.replace("...", "")
            for letter, d in zip(letters, dims[len(dims) - len(letters):]):
                sizes[letter] = d or 1
        total = 2
        for d in sizes.values():
            total *= d
        return ops.OpStats("flops", total)

    try:
        ops.RegisterStatistics("Einsum", "flops")(einsum_flops)
    except KeyError:  # registered already (by an earlier import in this process)
        pass
    _REGISTERED.append(True)


def count_flops(model, input_size: tuple[int, int]) -> int:
    """FLOPs of ``model`` on one (1, H, W, 3) image, as TensorFlow's profiler counts them.

    The profiler counts the ops it has statistics for (convolutions, matrix products, element-wise
    arithmetic), so attention's softmax and the like are left out: the figure is the usual
    "GFLOPs" of model tables (about twice their "GMACs").
    """
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    _register_einsum_flops()
    h, w = input_size
    fn = tf.function(lambda x: model(x, training=False))
    frozen = convert_variables_to_constants_v2(fn.get_concrete_function(tf.TensorSpec((1, h, w, 3), tf.float32)))
    opts = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    opts["output"] = "none"
    info = tf.compat.v1.profiler.profile(graph=frozen.graph, run_meta=tf.compat.v1.RunMetadata(), cmd="op",
                                         options=opts)
    return int(info.total_float_ops)
