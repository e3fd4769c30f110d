"""The ClotSeg 2D U-Net (Keras 3 functional model, any backend).

Mirrors the CT-ClotSeg network: a U-Net whose encoder doubles the filters at
each of `depth` max-poolings (32-64-128 with a 256-filter bottleneck for the
defaults), two conv3x3-BN-ReLU blocks per level, dropout in every level,
Conv2DTranspose up-sampling with skip concatenation, and a 1x1 output conv.
`normalization="instance"` puts instance normalisation (nnU-Net's choice)
where the batch normalisation sits.
"""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import layers


NORMALIZATIONS = ("batch", "instance")
DROPOUT_KINDS = ("standard", "spatial")


def dropout_layer(rate: float, kind: str, name: str):
    """The dropout layer of a block: "standard" drops single activations (CT-ClotSeg's Dropout),
    "spatial" whole feature maps (SpatialDropout2D, Tompson et al. 2015: neighbouring pixels of a
    map are strongly correlated, so dropping single ones regularises little). Built-in layers."""
    if kind == "standard":
        return layers.Dropout(rate, name=name)
    if kind == "spatial":
        return layers.SpatialDropout2D(rate, name=name)
    raise ValueError(f"dropout kind must be one of {DROPOUT_KINDS}, got {kind!r}")


def norm_layer(normalization: str, name: str):
    """The normalisation layer after a convolution.

    "batch": BatchNormalization (moving statistics of the training batches,
    used as they are at inference). "instance": GroupNormalization with one
    group per channel, i.e. instance normalisation with a learnt scale and
    offset as in nnU-Net: every feature map is normalised over its own image,
    at training and at inference alike, so a scan's overall contrast or
    brightness (another scanner, another bolus) does not shift the features
    the way fixed batch statistics would. Both are built-in Keras layers
    (safe-mode loading).
    """
    if normalization == "batch":
        return layers.BatchNormalization(name=name)
    if normalization == "instance":
        return layers.GroupNormalization(groups=-1, epsilon=1e-5, name=name)
    raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")


def input_stem(inputs, extra_windows=()):
    """The network's first layers: codes 0..255 -> [0, 1] (`Rescaling(1/255)`), and
    with `extra_windows` one more channel per (channel, scale, offset), clip(x[channel]
    * scale + offset, 0, 1), appended after the input's channels.

    That is a narrower HU window of the same channel (EXTRA_WINDOWS_HU,
    `Settings.extra_window_channels`): a fixed 1x1 convolution (not trainable;
    `set_extra_windows` writes its weights once the model exists) and a ReLU
    capped at 1, both built-in layers, so the model still reloads in safe mode.
    Taking it inside the model leaves slicing, augmentation and inference on
    the one window they already handle, and every augmentation of a channel
    reaches its narrow copy alike. Returns the (B, rows, cols, C + n) float tensor.
    """
    x = layers.Rescaling(1.0 / 255.0, name="rescale")(inputs)
    if not extra_windows:
        return x
    extra = layers.Conv2D(len(extra_windows), 1, kernel_initializer="zeros", bias_initializer="zeros",
                          trainable=False, name="extra_windows")(x)
    extra = layers.ReLU(max_value=1.0, name="extra_windows_clip")(extra)
    return layers.Concatenate(name="extra_windows_concat")([x, extra])


def set_extra_windows(model: keras.Model, extra_windows) -> keras.Model:
    """Write `input_stem`'s fixed window weights into a freshly built `model`
    (kernel (1, 1, C, n): `scale` where channel c feeds output j; bias (n,): the
    offsets). A model without extra windows is returned unchanged."""
    if not extra_windows:
        return model
    layer = model.get_layer("extra_windows")
    kernel, bias = (np.zeros(w.shape, dtype="float32") for w in layer.get_weights())
    for j, (channel, scale, offset) in enumerate(extra_windows):
        kernel[0, 0, int(channel), j] = scale
        bias[j] = offset
    layer.set_weights([kernel, bias])
    return model


def conv_block(x, filters: int, dropout: float, name: str, normalization: str = "batch",
               dropout_kind: str = "standard"):
    """Two conv3x3-norm-ReLU blocks with dropout between them.

    Dropout sits between the two convolutions (as in the original network) so
    the second convolution learns from a thinned feature map while the skip
    connection and the pooled output stay un-dropped at inference. The
    norm layers keep the names `<name>_bn1/2` whichever `normalization`;
    `dropout_kind` picks the layer (`dropout_layer`).
    """
    x = layers.Conv2D(filters, 3, padding="same", kernel_initializer="he_normal", name=f"{name}_conv1")(x)
    x = norm_layer(normalization, f"{name}_bn1")(x)
    x = layers.Activation("relu", name=f"{name}_relu1")(x)
    if dropout > 0:
        x = dropout_layer(dropout, dropout_kind, f"{name}_drop")(x)
    x = layers.Conv2D(filters, 3, padding="same", kernel_initializer="he_normal", name=f"{name}_conv2")(x)
    x = norm_layer(normalization, f"{name}_bn2")(x)
    return layers.Activation("relu", name=f"{name}_relu2")(x)


def build_unet2d(
    input_shape=(256, 256, 2),
    base_filters: int = 32,
    depth: int = 3,
    dropout: float = 0.1,
    num_classes: int = 1,
    name: str = "clotseg_unet2d",
    foreground_prior: float = 0.01,
    deep_supervision: bool = False,
    normalization: str = "batch",
    dropout_kind: str = "standard",
    extra_windows=(),
) -> keras.Model:
    """Build the (uncompiled) ClotSeg 2D U-Net.

    Args:
        input_shape: (rows, cols, channels); channels are the modalities in
            the order CTA, NCCT. rows and cols must be divisible by
            2**depth (None allows any size divisible by 2**depth at call time).
        base_filters: filters of the first level; level i has
            base_filters * 2**i, the bottleneck base_filters * 2**depth.
        depth: number of max-poolings (3 -> filters 32-64-128-256 by default).
        dropout: dropout rate used in every level (0 disables it).
        num_classes: 1 -> one sigmoid channel (clot probability);
            K > 1 -> K softmax channels (one-hot classes, 0 = background).
        name: model name.
        foreground_prior: initial clot probability of the sigmoid output
            (its bias starts at log(p / (1 - p))). Clots cover well under 1%
            of the pixels; starting at 0.5 lets the first BCE steps push every
            output to zero, after which small clots are learned very slowly
            (the prior-probability initialisation of Lin et al., 2017).
        deep_supervision: also output the decoder's coarser levels (see
            `decoder_outputs`), for training only; the saved
            inference model keeps the full-resolution output alone.
        normalization: "batch" (CT-ClotSeg's) or "instance" (see `norm_layer`).
        dropout_kind: "standard" (CT-ClotSeg's) or "spatial" (see `dropout_layer`).
        extra_windows: (channel, scale, offset) per narrower window derived
            from an input channel (EXTRA_WINDOWS_HU; see `input_stem`).

    Input: (B, rows, cols, channels) intensity codes 0..255 (uint8 "codes" of
    the HU windows, not HU). The Input is float32 but uint8 arrays are
    accepted: Keras casts them to float32, and the first layer
    `Rescaling(1/255)` maps codes to [0, 1], so the host ships uint8 batches
    (4x less host-to-device traffic) and the scaling happens on the device.

    Output: (B, rows, cols, num_classes) float32 probabilities (with
    deep_supervision, a list whose first item is that). The output
    layer is pinned to float32 so mixed precision (mixed_bfloat16 /
    mixed_float16 global policies) never rounds the probabilities, which the
    losses and the 0.5 threshold need at full precision.

    Parameter count of the default model (input (256, 256, 2), base 32,
    depth 3, num_classes 1): 1,930,945 parameters, of which 1,928,129 are
    trainable and 2,816 are BatchNormalization moving statistics
    (computed with `model.count_params()`; the tests re-derive it from the
    layer formulas).

    Raises:
        ValueError: on non-positive sizes, a rate outside [0, 1) or spatial
        dimensions not divisible by 2**depth.
    """
    check_arguments(input_shape, base_filters, depth, dropout, num_classes)
    norm_layer(normalization, "check")  # a ValueError now, not halfway through the graph
    dropout_layer(0.1, dropout_kind, "check")
    inputs = keras.Input(shape=tuple(input_shape), dtype="float32", name="codes")
    x = input_stem(inputs, extra_windows)

    skips = []
    for level in range(depth):
        x = conv_block(x, base_filters * 2**level, dropout, name=f"enc{level}", normalization=normalization,
                       dropout_kind=dropout_kind)
        skips.append(x)
        x = layers.MaxPooling2D(2, name=f"enc{level}_pool")(x)

    x = conv_block(x, base_filters * 2**depth, dropout, name="bottleneck", normalization=normalization,
                   dropout_kind=dropout_kind)

    decoded = {}
    for level in reversed(range(depth)):
        filters = base_filters * 2**level
        x = layers.Conv2DTranspose(filters, 2, strides=2, padding="same", name=f"dec{level}_up")(x)
        x = layers.Concatenate(name=f"dec{level}_concat")([x, skips[level]])
        x = conv_block(x, filters, dropout, name=f"dec{level}", normalization=normalization,
                       dropout_kind=dropout_kind)
        decoded[level] = x

    model = keras.Model(inputs, decoder_outputs(decoded, num_classes, foreground_prior, deep_supervision), name=name)
    return set_extra_windows(model, extra_windows)


def check_arguments(input_shape, base_filters: int, depth: int, dropout: float, num_classes: int) -> None:
    """Raise ValueError for sizes the encoder-decoder models cannot build."""
    if len(input_shape) != 3:
        raise ValueError(f"input_shape must be (rows, cols, channels), got {input_shape}")
    if base_filters < 1 or depth < 1 or num_classes < 1:
        raise ValueError(
            f"base_filters, depth and num_classes must be >= 1, got {base_filters}, {depth}, {num_classes}"
        )
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    factor = 2**depth
    for size in input_shape[:2]:
        if size is not None and size % factor:
            raise ValueError(
                f"input_shape {tuple(input_shape)}: rows and cols must be divisible by 2**depth = {factor}"
            )


def decoder_outputs(decoded: dict, num_classes: int, foreground_prior: float = 0.01,
                    deep_supervision: bool = False):
    """The model's output(s) from its decoder levels.

    decoded maps a decoder level k to its features at 1/2**k of the input
    size. The main output is `output_head` on level 0. With deep_supervision
    (nnU-Net's), every level k >= 1 also gets its own 1x1 head "aux{k}" (same
    activation, prior and float32 pin), so the loss also reaches the middle
    of the decoder directly; the result is then the list [main, aux1, aux2,
    ...], aux k (B, rows / 2**k, cols / 2**k, num_classes) float32
    probabilities, scored against the mask average-pooled by 2**k
    (`myModels.losses.deep_supervision_losses`).
    """
    main = output_head(decoded[0], num_classes, foreground_prior)
    if not deep_supervision:
        return main
    return [main, *(output_head(decoded[k], num_classes, foreground_prior, name=f"aux{k}")
                    for k in sorted(decoded) if k >= 1)]


def output_head(x, num_classes: int, foreground_prior: float = 0.01, name: str = "probabilities"):
    """1x1 conv to `num_classes` float32 probabilities (sigmoid for 1, softmax otherwise).

    The sigmoid bias starts at log(p / (1 - p)) for the clot prior p (see
    `build_unet2d`); the layer is pinned to float32 under mixed precision.
    """
    if num_classes == 1:
        activation = "sigmoid"
        bias = keras.initializers.Constant(math.log(foreground_prior / (1.0 - foreground_prior)))
    else:
        activation, bias = "softmax", "zeros"
    return layers.Conv2D(num_classes, 1, activation=activation, bias_initializer=bias, dtype="float32",
                         name=name)(x)
