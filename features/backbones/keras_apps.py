"""Every ``keras.applications`` constructor of Keras 3.15 as a registry entry.

Names are the constructor's in lower case ("efficientnetv2s", "convnexttiny"); the names files
and model directories already record ("vgg16", "inceptionv3", ...) are unchanged. Layer names
are Keras' own; ``params`` counts the notop model (the contract tests check both).
"""

from __future__ import annotations

import dataclasses
import math

from features.backbones.spec import BackboneSpec

_IN_MODEL = "none (in model)"  # the model rescales its 0..255 input itself (include_preprocessing)


def _vgg(n, last):
    return BackboneSpec(f"vgg{n}", f"vgg{n}", f"VGG{n}", "caffe", (224, 224), 32, "block5_pool",
                        ("block3_pool", f"block4_conv{last}", "block4_pool", f"block5_conv{last}"),
                        f"vgg{n}_weights_tf_dim_ordering_tf_kernels_notop.h5", "VGG",
                        params={16: 14_714_688, 19: 20_024_384}[n], batchnorm=False)


def _resnet(depth, blocks, params, v2=False):
    """ResNet{depth} / ResNet{depth}V2: stage outputs conv3/conv4 (and conv5 for V2, whose top is post_relu)."""
    suffix = "v2" if v2 else ""
    module = "resnet_v2" if v2 else ("resnet50" if depth == 50 else "resnet")
    named = (f"conv3_block{blocks[1]}_out", f"conv4_block{blocks[2]}_out") + (("conv5_block3_out",) if v2 else ())
    return BackboneSpec(f"resnet{depth}{suffix}", module, f"ResNet{depth}{suffix.upper()}", "tf" if v2 else "caffe",
                        (224, 224), 32, "post_relu" if v2 else "conv5_block3_out", named,
                        f"resnet{depth}{suffix}_weights_tf_dim_ordering_tf_kernels_notop.h5",
                        "ResNetV2" if v2 else "ResNet", params=params)


def _densenet(depth, params):
    return BackboneSpec(f"densenet{depth}", "densenet", f"DenseNet{depth}", "torch", (224, 224), 32, "relu",
                        ("pool3_pool", "pool4_pool"), f"densenet{depth}_weights_tf_dim_ordering_tf_kernels_notop.h5",
                        "DenseNet", params=params)


def _block(stage: int, repeats: int) -> str:
    return f"block{stage}{chr(ord('a') + repeats - 1)}"


# EfficientNet B0..B7: (default size, depth coefficient, notop parameters). Stage 5 and 6 repeat
# 3 and 4 blocks at depth 1.0, ceil(coefficient * n) deeper; their last "add" is a named layer.
_EFFICIENTNET = [(224, 1.0, 4_049_571), (240, 1.1, 6_575_239), (260, 1.2, 7_768_569), (300, 1.4, 10_783_535),
                 (380, 1.8, 17_673_823), (456, 2.2, 28_513_527), (528, 2.6, 40_960_143), (600, 3.1, 64_097_687)]


def _efficientnet(b):
    size, depth, params = _EFFICIENTNET[b]
    named = ((_block(6, 4) + "_add", "block7a_project_bn") if b == 0 else
             (_block(5, math.ceil(3 * depth)) + "_add", _block(6, math.ceil(4 * depth)) + "_add"))
    return BackboneSpec(f"efficientnetb{b}", "efficientnet", f"EfficientNetB{b}", _IN_MODEL, (size, size), 32,
                        "top_activation", named, f"efficientnetb{b}_notop.h5", "EfficientNet", params=params)


# EfficientNetV2: (variant, default size, named layers, notop parameters).
_EFFICIENTNET_V2 = [
    ("b0", 224, ("block5e_add", "block6h_add"), 5_919_312),
    ("b1", 240, ("block5f_add", "block6i_add"), 6_931_124),
    ("b2", 260, ("block5f_add", "block6j_add"), 8_769_374),
    ("b3", 300, ("block5g_add", "block6l_add"), 12_930_622),
    ("s", 384, ("block5i_add", "block6o_add"), 20_331_360),
    ("m", 480, ("block6r_add", "block7e_add"), 53_150_388),
    ("l", 480, ("block6y_add", "block7g_add"), 117_746_848),
]


def _efficientnet_v2(variant, size, named, params):
    return BackboneSpec(f"efficientnetv2{variant}", "efficientnet_v2", f"EfficientNetV2{variant.upper()}", _IN_MODEL,
                        (size, size), 32, "top_activation", named, f"efficientnetv2-{variant}_notop.h5",
                        "EfficientNetV2", params=params)


# ConvNeXt: (size, stage depths, notop parameters). The notop model ends in an auto-named
# LayerNormalization, renamed "<name>_final_layernorm"; stage ends are "..._identity" layers.
_CONVNEXT = {"tiny": ((3, 3, 9, 3), 27_820_128), "small": ((3, 3, 27, 3), 49_454_688),
             "base": ((3, 3, 27, 3), 87_566_464), "large": ((3, 3, 27, 3), 196_230_336),
             "xlarge": ((3, 3, 27, 3), 348_147_968)}


def _convnext(size):
    depths, params = _CONVNEXT[size]
    prefix = f"convnext_{size}"
    named = tuple(f"{prefix}_stage_{i}_block_{depths[i] - 1}_identity" for i in (1, 2, 3))
    return BackboneSpec(f"convnext{size}", "convnext", f"ConvNeXt{size.capitalize() if size != 'xlarge' else 'XLarge'}",
                        _IN_MODEL, (224, 224), 32, f"{prefix}_final_layernorm", named,
                        f"{prefix}_notop.h5", "ConvNeXt", params=params, output_name=f"{prefix}_final_layernorm",
                        batchnorm=False)  # LayerNorm


#: GFLOPs of one image at the default size to the default layer (bench/catalogue.py, TF's profiler, 2 per MAC).
GFLOPS = {
    "vgg16": 30.71, "vgg19": 39.04, "resnet50": 7.75, "resnet101": 15.19, "resnet152": 22.64, "resnet50v2": 6.99,
    "resnet101v2": 14.43, "resnet152v2": 21.88, "inceptionv3": 11.46, "inceptionresnetv2": 26.38, "xception":
    16.77, "mobilenet": 1.15, "mobilenetv2": 0.61, "mobilenetv3small": 0.12, "mobilenetv3large": 0.44,
    "nasnetmobile": 1.15, "nasnetlarge": 47.79, "efficientnetb0": 0.8, "efficientnetb1": 1.42, "efficientnetb2":
    2.05, "efficientnetb3": 3.76, "efficientnetb4": 9.02, "efficientnetb5": 21.0, "efficientnetb6": 38.92,
    "efficientnetb7": 76.86, "efficientnetv2b0": 1.46, "efficientnetv2b1": 2.42, "efficientnetv2b2": 3.44,
    "efficientnetv2b3": 6.09, "efficientnetv2s": 16.89, "efficientnetv2m": 49.57, "efficientnetv2l": 112.87,
    "densenet121": 5.7, "densenet169": 6.76, "densenet201": 8.63, "convnexttiny": 8.76, "convnextsmall": 17.11,
    "convnextbase": 30.37, "convnextlarge": 68.21, "convnextxlarge": 121.16
}

ENTRIES: list[BackboneSpec] = [dataclasses.replace(s, gflops=GFLOPS.get(s.name, 0.0)) for s in [
    _vgg(16, 3),
    _vgg(19, 4),
    _resnet(50, (3, 4, 6, 3), 23_587_712),
    _resnet(101, (3, 4, 23, 3), 42_658_176),
    _resnet(152, (3, 8, 36, 3), 58_370_944),
    _resnet(50, (3, 4, 6, 3), 23_564_800, v2=True),
    _resnet(101, (3, 4, 23, 3), 42_626_560, v2=True),
    _resnet(152, (3, 8, 36, 3), 58_331_648, v2=True),
    BackboneSpec("inceptionv3", "inception_v3", "InceptionV3", "tf", (299, 299), 75, "mixed10",
                 ("mixed5", "mixed7", "mixed9"), "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5",
                 "Inception", params=21_802_784),
    BackboneSpec("inceptionresnetv2", "inception_resnet_v2", "InceptionResNetV2", "tf", (299, 299), 75, "conv_7b_ac",
                 ("mixed_6a", "mixed_7a"), "inception_resnet_v2_weights_tf_dim_ordering_tf_kernels_notop.h5",
                 "Inception", params=54_336_736),
    BackboneSpec("xception", "xception", "Xception", "tf", (299, 299), 71, "block14_sepconv2_act",
                 ("block13_sepconv2_bn", "block14_sepconv1_act"),
                 "xception_weights_tf_dim_ordering_tf_kernels_notop.h5", "Xception", params=20_861_480),
    BackboneSpec("mobilenet", "mobilenet", "MobileNet", "tf", (224, 224), 32, "conv_pw_13_relu",
                 ("conv_pw_11_relu", "conv_pw_12_relu"), "mobilenet_1_0_224_tf_no_top.h5", "MobileNet",
                 params=3_228_864),
    BackboneSpec("mobilenetv2", "mobilenet_v2", "MobileNetV2", "tf", (224, 224), 32, "out_relu",
                 ("block_13_expand_relu", "block_16_project_BN"),
                 "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5", "MobileNet",
                 params=2_257_984),
    # MobileNetV3 rescales inside the model and ends in an auto-named hard-swish activation.
    BackboneSpec("mobilenetv3small", "mobilenet_v3", "MobileNetV3Small", _IN_MODEL, (224, 224), 32,
                 "conv_1_activation", ("expanded_conv_5_add", "expanded_conv_10_add"),
                 "weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5", "MobileNetV3", params=939_120,
                 output_name="conv_1_activation"),
    BackboneSpec("mobilenetv3large", "mobilenet_v3", "MobileNetV3Large", _IN_MODEL, (224, 224), 32,
                 "conv_1_activation", ("expanded_conv_11_add", "expanded_conv_14_add"),
                 "weights_mobilenet_v3_large_224_1.0_float_no_top_v2.h5", "MobileNetV3", params=2_996_352,
                 output_name="conv_1_activation"),
    # NASNet's notop output is an auto-named ReLU after the last normal cell.
    BackboneSpec("nasnetmobile", "nasnet", "NASNetMobile", "tf", (224, 224), 32, "final_relu",
                 ("normal_concat_8", "normal_concat_12"), "nasnet_mobile_no_top.h5", "NASNet", params=4_269_716,
                 output_name="final_relu"),
    BackboneSpec("nasnetlarge", "nasnet", "NASNetLarge", "tf", (331, 331), 32, "final_relu",
                 ("normal_concat_12", "normal_concat_18"), "nasnet_large_no_top.h5", "NASNet", params=84_916_818,
                 output_name="final_relu"),
    *(_efficientnet(b) for b in range(8)),
    *(_efficientnet_v2(*row) for row in _EFFICIENTNET_V2),
    _densenet(121, 7_037_504),
    _densenet(169, 12_642_880),
    _densenet(201, 18_321_984),
    *(_convnext(size) for size in _CONVNEXT),
]]

#: Other spellings people type; every recorded name is an entry's own name.
ALIASES = {"vgg-16": "vgg16", "resnet": "resnet50", "inception": "inceptionv3", "mobilenet_v2": "mobilenetv2",
           "efficientnet": "efficientnetb0", "convnext": "convnexttiny", "mobilenetv3": "mobilenetv3large",
           "mobilenet_v3_small": "mobilenetv3small", "mobilenet_v3_large": "mobilenetv3large",
           "inception_resnet_v2": "inceptionresnetv2", "inception_v3": "inceptionv3"}
