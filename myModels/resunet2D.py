"""A 2D U-Net with a residual encoder (nnU-Net "ResEnc" style), Keras 3.

The encoder stacks residual basic blocks (conv3x3-BN-ReLU-conv3x3-BN plus
an identity or 1x1-projection shortcut, then ReLU), more of them in deeper
stages, and down-samples with a strided first convolution instead of max
pooling, as nnU-Net's ResidualEncoderUNet does (Isensee et al., 2024). The
decoder is the plain U-Net decoder of `unet2D` (transpose-conv up-sampling,
skip concatenation, two conv-BN-ReLU). Residual encoders train deeper
stages without the vanishing-gradient cost, which is where most of
nnU-Net's ResEnc gain comes from at equal compute.

Same inputs, outputs and clot-prior output bias as `build_unet2d`.
"""

from __future__ import annotations

import keras
from keras import layers

from myModels.unet2D import (check_arguments, conv_block, decoder_outputs, dropout_layer, input_stem, norm_layer,
                             set_extra_windows)

# Residual blocks per encoder stage (stage 0 = full resolution); nnU-Net's
# ResEnc-M 2D uses (1, 3, 4, 6, 6, ...). Shorter here so a CPU can train it.
DEFAULT_BLOCKS = (1, 2, 2, 3, 3, 3, 3)


def residual_block(x, filters: int, stride: int, dropout: float, name: str, normalization: str = "batch",
                   dropout_kind: str = "standard"):
    """conv3x3(stride)-norm-ReLU-[dropout]-conv3x3-norm + shortcut, ReLU.

    The shortcut is the identity when shape and filters are unchanged, else
    average pooling (when strided) and a 1x1 convolution with its norm.
    """
    shortcut = x
    y = layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False,
                      kernel_initializer="he_normal", name=f"{name}_conv1")(x)
    y = norm_layer(normalization, f"{name}_bn1")(y)
    y = layers.Activation("relu", name=f"{name}_relu1")(y)
    if dropout > 0:
        y = dropout_layer(dropout, dropout_kind, f"{name}_drop")(y)
    y = layers.Conv2D(filters, 3, padding="same", use_bias=False, kernel_initializer="he_normal",
                      name=f"{name}_conv2")(y)
    y = norm_layer(normalization, f"{name}_bn2")(y)
    if stride != 1 or x.shape[-1] != filters:
        # nnU-Net's projection: average-pool, then a 1x1 conv (a strided 1x1 conv
        # would drop 3 of 4 pixels, and crashes TensorFlow's oneDNN CPU kernels)
        if stride != 1:
            shortcut = layers.AveragePooling2D(stride, name=f"{name}_pool")(shortcut)
        shortcut = layers.Conv2D(filters, 1, use_bias=False, kernel_initializer="he_normal",
                                 name=f"{name}_proj")(shortcut)
        shortcut = norm_layer(normalization, f"{name}_proj_bn")(shortcut)
    y = layers.Add(name=f"{name}_add")([y, shortcut])
    return layers.Activation("relu", name=f"{name}_relu2")(y)


def build_resunet2d(
    input_shape=(256, 256, 2),
    base_filters: int = 32,
    depth: int = 3,
    dropout: float = 0.1,
    num_classes: int = 1,
    name: str = "clotseg_resunet2d",
    foreground_prior: float = 0.01,
    blocks=DEFAULT_BLOCKS,
    deep_supervision: bool = False,
    normalization: str = "batch",
    dropout_kind: str = "standard",
    extra_windows=(),
) -> keras.Model:
    """Build the (uncompiled) residual-encoder U-Net.

    Args: as `myModels.unet2D.build_unet2d`, plus
        blocks: residual blocks per encoder stage, stage 0 first; stage i
            (i = 0..depth) has base_filters * 2**i filters, and stages
            1..depth start with a stride-2 block.
        normalization: "batch" or "instance" (`myModels.unet2D.norm_layer`).
        dropout_kind: "standard" or "spatial" (`myModels.unet2D.dropout_layer`).
        extra_windows: narrower windows of input channels (`myModels.unet2D.input_stem`).

    Input: (B, rows, cols, channels) uint8 intensity codes (or float32
    0..255); output (B, rows, cols, num_classes) float32 probabilities
    (with deep_supervision, a list whose first item is that; see
    `myModels.unet2D.decoder_outputs`).
    """
    check_arguments(input_shape, base_filters, depth, dropout, num_classes)
    if len(blocks) < depth + 1 or min(blocks[:depth + 1]) < 1:
        raise ValueError(f"blocks needs at least depth + 1 = {depth + 1} positive counts, got {blocks}")
    norm_layer(normalization, "check")
    dropout_layer(0.1, dropout_kind, "check")

    inputs = keras.Input(shape=tuple(input_shape), dtype="float32", name="codes")
    x = input_stem(inputs, extra_windows)
    x = layers.Conv2D(base_filters, 3, padding="same", use_bias=False, kernel_initializer="he_normal",
                      name="stem_conv")(x)
    x = norm_layer(normalization, "stem_bn")(x)
    x = layers.Activation("relu", name="stem_relu")(x)

    skips = []
    for stage in range(depth + 1):
        filters = base_filters * 2**stage
        for b in range(blocks[stage]):
            stride = 2 if (stage > 0 and b == 0) else 1
            # dropout only in the deeper stages, where the features are abstract
            rate = dropout if stage > 0 else 0.0
            x = residual_block(x, filters, stride, rate, name=f"enc{stage}_block{b}", normalization=normalization,
                               dropout_kind=dropout_kind)
        skips.append(x)

    x = skips.pop()  # the bottleneck (stage `depth`)
    decoded = {}
    for level in reversed(range(depth)):
        filters = base_filters * 2**level
        x = layers.Conv2DTranspose(filters, 2, strides=2, padding="same", name=f"dec{level}_up")(x)
        x = layers.Concatenate(name=f"dec{level}_concat")([x, skips[level]])
        x = conv_block(x, filters, 0.0, name=f"dec{level}", normalization=normalization)
        decoded[level] = x

    model = keras.Model(inputs, decoder_outputs(decoded, num_classes, foreground_prior, deep_supervision), name=name)
    return set_extra_windows(model, extra_windows)
