"""Floating-point operations of one forward pass, counted on the TensorFlow graph (multiply and add: 2 each)."""

from __future__ import annotations


def count_flops(model, input_size: tuple[int, int]) -> int:
    """FLOPs of ``model`` on one (1, H, W, 3) image, as TensorFlow's profiler counts them.

    The profiler counts the ops it has statistics for (convolutions, matrix products, element-wise
    arithmetic), so attention's softmax and the like are left out: the figure is the usual
    "GFLOPs" of model tables (about twice their "GMACs").
    """
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    h, w = input_size
    fn = tf.function(lambda x: model(x, training=False))
    frozen = convert_variables_to_constants_v2(fn.get_concrete_function(tf.TensorSpec((1, h, w, 3), tf.float32)))
    opts = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    opts["output"] = "none"
    info = tf.compat.v1.profiler.profile(graph=frozen.graph, run_meta=tf.compat.v1.RunMetadata(), cmd="op",
                                         options=opts)
    return int(info.total_float_ops)
