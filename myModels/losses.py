"""Segmentation losses and overlap metrics for the ClotSeg U-Net (any backend).

Shapes: y_pred is (B, H, W, K) probabilities (K = 1 sigmoid clot channel, or
K > 1 softmax channels); y_true is the same shape ({0, 1} mask for K = 1,
one-hot for K > 1). A (B, H, W) mask is accepted when K = 1.

Design choices:
- Everything is computed in float32, whatever the dtype of y_pred (bfloat16 /
  float16 under mixed precision), so sums over millions of pixels do not
  round away the few clot pixels.
- Soft Dice and Tversky are "batch" (global) scores: true positives, false
  positives and false negatives are summed over the whole batch (all pixels
  of all slices) per channel before the ratio, then averaged over channels.
  Most slices hold no clot; a per-slice Dice would be undefined (0/0) or, with
  a smoothing term, dominated by those empty slices.
- `bce_slice_dice` adds a per-slice term: each slice that holds clot gets its
  own soft Dice, and those are averaged, so a 10-pixel M2 clot weighs as much
  as a 400-pixel M1 clot. The batch Dice alone is dominated by the large
  clots, while the report's figure (mean Dice per case) and case sensitivity
  weigh every clot the same; the misses are the small clots (README
  "Segmentation quality"). The idea of blob loss (Kofler et al. 2022), at the
  cost of a sum over two axes: a training patch rarely holds two clots.
- `topk_bce_dice` is nnU-Net's DC_and_topk_loss: the crossentropy is
  averaged over the k% (10) of pixels with the largest crossentropy only,
  so the many easy background pixels stop diluting the few hard ones (a
  faint clot in a thin M2 branch, a calcification next to an artery). The
  top k is taken per slice (nnU-Net takes it over the whole batch) so the
  number of pixels kept is fixed by the slice size, whatever the batch.
- The metrics `dice` and `iou` are `keras.metrics.Metric` classes that
  accumulate intersection and sums over the whole epoch, so the reported
  value is the global Dice/IoU of the epoch (every clot pixel weighs the
  same), not the mean of per-batch Dices, which would depend on batch size
  and on how clot pixels happen to fall into batches.
- Every loss and metric is registered under the "clotseg" package, so a saved
  `.keras` model reloads with `keras.models.load_model(path)` (safe_mode on)
  without `custom_objects`.
"""

from __future__ import annotations

import math

import keras
from keras import ops

LOSS_SMOOTH = 1.0     # in pixels: keeps batch ratios defined and gradients finite
METRIC_SMOOTH = 1e-6  # tiny: 0/0 (no clot, none predicted) -> 1, else no bias


def _prepare(y_true, y_pred):
    """Cast both to float32 and give a (B, H, W) mask a channel axis."""
    y_pred = ops.cast(y_pred, "float32")
    y_true = ops.cast(y_true, "float32")
    if len(y_true.shape) == len(y_pred.shape) - 1:
        y_true = ops.expand_dims(y_true, -1)
    if y_true.shape[-1] != y_pred.shape[-1]:
        # Broadcasting a label map against K channels would silently give nonsense.
        raise ValueError(
            f"y_true {tuple(y_true.shape)} must match y_pred {tuple(y_pred.shape)}: "
            "a {0,1} mask for one channel, one-hot classes for K > 1"
        )
    return y_true, y_pred


def _confusion_sums(y_true, y_pred, axes=None):
    """Soft (TP, FP, FN) per channel, each shape (K,), summed over B, H, W
    (or over `axes`: (1, 2) gives (B, K) per sample)."""
    axes = tuple(range(len(y_pred.shape) - 1)) if axes is None else axes
    tp = ops.sum(y_true * y_pred, axis=axes)
    fp = ops.sum((1.0 - y_true) * y_pred, axis=axes)
    fn = ops.sum(y_true * (1.0 - y_pred), axis=axes)
    return tp, fp, fn


def tversky_index(y_true, y_pred, alpha=0.5, beta=0.5, smooth=LOSS_SMOOTH):
    """Soft Tversky index (TP + s) / (TP + alpha FP + beta FN + s), float32 scalar.

    Summed over the batch per channel, then averaged over channels.
    alpha = beta = 0.5 is the soft Dice coefficient.
    """
    y_true, y_pred = _prepare(y_true, y_pred)
    tp, fp, fn = _confusion_sums(y_true, y_pred)
    index = (tp + smooth) / (tp + alpha * fp + beta * fn + smooth)
    return ops.mean(index)


def soft_dice_loss(y_true, y_pred, smooth=LOSS_SMOOTH):
    """1 - soft batch Dice (2TP + s) / (2TP + FP + FN + s); float32 scalar in [0, 1]."""
    # Dice = Tversky with alpha = beta = 0.5 (numerator and denominator halved).
    return 1.0 - tversky_index(y_true, y_pred, 0.5, 0.5, smooth / 2.0)


def clot_slice_dice_loss(y_true, y_pred, smooth=LOSS_SMOOTH):
    """1 - mean soft Dice of the slices that hold clot; float32 scalar in [0, 1].

    Each sample b of the batch gets its own soft Dice over (H, W), averaged
    over channels; only samples whose mask holds clot count (a clot-free
    slice's Dice is 0/0, left to the crossentropy and the batch Dice). A batch
    without any clot gives 0.
    """
    y_true, y_pred = _prepare(y_true, y_pred)
    tp, fp, fn = _confusion_sums(y_true, y_pred, axes=tuple(range(1, len(y_pred.shape) - 1)))  # (B, K)
    # the floor keeps a clot-free slice's 0/0 (smooth = 0) finite: it is weighted out below,
    # and 0 * NaN would still be NaN
    dice = ops.mean((2.0 * tp + smooth) / ops.maximum(2.0 * tp + fp + fn + smooth, 1e-7), axis=-1)  # (B,)
    foreground = y_true if y_pred.shape[-1] == 1 else y_true[..., 1:]  # softmax: classes 1..K-1
    # > 0, not > 0.5: a deep-supervision target is area-pooled, a small clot only a fraction there
    holds_clot = ops.sum(ops.reshape(foreground, (ops.shape(foreground)[0], -1)), axis=1) > 0.0
    weight = ops.cast(holds_clot, "float32")
    return ops.sum(weight * (1.0 - dice)) / ops.maximum(ops.sum(weight), 1.0)


def _pixel_crossentropy(y_true, y_pred):
    """(B, H, W) float32 crossentropy of each pixel (binary for K = 1, categorical for K > 1)."""
    y_true, y_pred = _prepare(y_true, y_pred)
    if y_pred.shape[-1] == 1:
        return keras.losses.binary_crossentropy(y_true, y_pred)
    return keras.losses.categorical_crossentropy(y_true, y_pred)


def crossentropy(y_true, y_pred):
    """Mean pixel crossentropy (binary for K = 1, categorical for K > 1); float32 scalar."""
    return ops.mean(_pixel_crossentropy(y_true, y_pred))


def topk_crossentropy(y_true, y_pred, k_percent=10.0):
    """Mean pixel crossentropy over the k_percent of pixels of each slice with
    the largest crossentropy; float32 scalar.

    Per sample b the (H, W) crossentropy map (binary for K = 1, categorical
    for K > 1) is flattened and its ceil(H W k / 100) largest values kept;
    the mean of all kept values is returned. k_percent = 100 is
    `crossentropy`. H and W must be known when the loss is traced (they are:
    the models take a fixed INPUT_SHAPE or PATCH_SIZE).
    """
    pixels = _pixel_crossentropy(y_true, y_pred)                            # (B, H, W)
    spatial = pixels.shape[1:]
    if any(size is None for size in spatial):
        raise ValueError(f"topk crossentropy needs a known slice size, got {tuple(pixels.shape)}")
    count = math.prod(spatial)
    keep = max(1, math.ceil(count * float(k_percent) / 100.0))
    hardest, _ = ops.top_k(ops.reshape(pixels, (-1, count)), keep, sorted=False)  # (B, keep)
    return ops.mean(hardest)


@keras.saving.register_keras_serializable(package="clotseg")
class DiceLoss(keras.losses.Loss):
    """Soft batch Dice loss 1 - Dice (see module docstring)."""

    def __init__(self, smooth=LOSS_SMOOTH, name="dice", **kwargs):
        super().__init__(name=name, **kwargs)
        self.smooth = float(smooth)

    def call(self, y_true, y_pred):
        return soft_dice_loss(y_true, y_pred, self.smooth)

    def get_config(self):
        return {**super().get_config(), "smooth": self.smooth}


@keras.saving.register_keras_serializable(package="clotseg")
class BceDiceLoss(keras.losses.Loss):
    """Crossentropy + soft Dice loss (the default).

    Crossentropy gives dense per-pixel gradients early in training; Dice
    counters the extreme background/clot imbalance.
    """

    def __init__(self, smooth=LOSS_SMOOTH, name="bce_dice", **kwargs):
        super().__init__(name=name, **kwargs)
        self.smooth = float(smooth)

    def call(self, y_true, y_pred):
        return crossentropy(y_true, y_pred) + soft_dice_loss(y_true, y_pred, self.smooth)

    def get_config(self):
        return {**super().get_config(), "smooth": self.smooth}


@keras.saving.register_keras_serializable(package="clotseg")
class BceSliceDiceLoss(keras.losses.Loss):
    """Crossentropy + half the batch Dice loss + half the clot-slice Dice loss.

    The Dice part keeps the scale of `bce_dice` (each term lies in [0, 1]);
    half of it weighs every clot slice the same (`clot_slice_dice_loss`), the
    other half keeps the batch Dice's penalty on false positives in slices
    without clot.
    """

    def __init__(self, smooth=LOSS_SMOOTH, name="bce_slice_dice", **kwargs):
        super().__init__(name=name, **kwargs)
        self.smooth = float(smooth)

    def call(self, y_true, y_pred):
        return (crossentropy(y_true, y_pred) + 0.5 * soft_dice_loss(y_true, y_pred, self.smooth)
                + 0.5 * clot_slice_dice_loss(y_true, y_pred, self.smooth))

    def get_config(self):
        return {**super().get_config(), "smooth": self.smooth}


@keras.saving.register_keras_serializable(package="clotseg")
class TopKBceDiceLoss(keras.losses.Loss):
    """Crossentropy of the k% hardest pixels of each slice + soft batch Dice
    (nnU-Net's DC_and_topk_loss, k = 10; see `topk_crossentropy`)."""

    def __init__(self, k_percent=10.0, smooth=LOSS_SMOOTH, name="topk_bce_dice", **kwargs):
        super().__init__(name=name, **kwargs)
        if not 0.0 < float(k_percent) <= 100.0:
            raise ValueError(f"k_percent must be in (0, 100], got {k_percent}")
        self.k_percent, self.smooth = float(k_percent), float(smooth)

    def call(self, y_true, y_pred):
        return topk_crossentropy(y_true, y_pred, self.k_percent) + soft_dice_loss(y_true, y_pred, self.smooth)

    def get_config(self):
        return {**super().get_config(), "k_percent": self.k_percent, "smooth": self.smooth}


@keras.saving.register_keras_serializable(package="clotseg")
class TverskyLoss(keras.losses.Loss):
    """1 - Tversky index; alpha weighs false positives, beta false negatives.

    beta > alpha (0.7 vs 0.3) penalises missed clot pixels more than false
    alarms, which favours recall on clots of a few pixels.
    """

    def __init__(self, alpha=0.3, beta=0.7, smooth=LOSS_SMOOTH, name="tversky", **kwargs):
        super().__init__(name=name, **kwargs)
        self.alpha, self.beta, self.smooth = float(alpha), float(beta), float(smooth)

    def call(self, y_true, y_pred):
        return 1.0 - tversky_index(y_true, y_pred, self.alpha, self.beta, self.smooth)

    def get_config(self):
        return {**super().get_config(), "alpha": self.alpha, "beta": self.beta, "smooth": self.smooth}


@keras.saving.register_keras_serializable(package="clotseg")
class FocalTverskyLoss(TverskyLoss):
    """(1 - Tversky index) ** gamma (Abraham & Khan 2019, gamma = 1/(4/3) = 0.75).

    gamma < 1 enlarges the loss of batches that are already nearly right,
    keeping the gradient alive for the small, hard clots late in training.
    """

    def __init__(self, alpha=0.3, beta=0.7, gamma=0.75, smooth=LOSS_SMOOTH, name="focal_tversky", **kwargs):
        super().__init__(alpha=alpha, beta=beta, smooth=smooth, name=name, **kwargs)
        self.gamma = float(gamma)

    def call(self, y_true, y_pred):
        base = 1.0 - tversky_index(y_true, y_pred, self.alpha, self.beta, self.smooth)
        # The clip keeps the power's gradient finite at a perfect batch (0 ** -0.25).
        return ops.power(ops.maximum(base, 1e-7), self.gamma)

    def get_config(self):
        return {**super().get_config(), "gamma": self.gamma}


LOSSES = {
    "dice": DiceLoss,
    "bce_dice": BceDiceLoss,
    "bce_slice_dice": BceSliceDiceLoss,
    "topk_bce_dice": TopKBceDiceLoss,
    "tversky": TverskyLoss,
    "focal_tversky": FocalTverskyLoss,
}


@keras.saving.register_keras_serializable(package="clotseg")
class DownsampledLoss(keras.losses.Loss):
    """`loss` of a coarser output: the target is average-pooled by `factor` first.

    For deep supervision: an auxiliary output at 1/factor of the input size
    (B, H/f, W/f, K) is scored against the full-size target (B, H, W, K)
    average-pooled over f x f blocks ("area" downsampling), i.e. the clot
    fraction of each coarse pixel. Pooling the target inside the loss lets
    the generator hand every output the same full-size mask, and a clot of
    a few pixels never vanishes from the coarse target as it could with
    nearest-neighbour downsampling.
    """

    def __init__(self, loss, factor: int, name=None, **kwargs):
        if isinstance(loss, dict):  # from_config
            loss = keras.saving.deserialize_keras_object(loss)
        super().__init__(name=name or f"{loss.name}_x{int(factor)}", **kwargs)
        self.loss, self.factor = loss, int(factor)

    def call(self, y_true, y_pred):
        y_true, y_pred = _prepare(y_true, y_pred)
        if self.factor > 1:
            y_true = ops.average_pool(y_true, self.factor, strides=self.factor, padding="valid")
        return self.loss(y_true, y_pred)

    def get_config(self):
        return {**super().get_config(), "loss": keras.saving.serialize_keras_object(self.loss),
                "factor": self.factor}


def deep_supervision_losses(name: str, num_outputs: int) -> tuple[list, list]:
    """(losses, loss_weights) for a model with `num_outputs` deep-supervision outputs.

    Output k (k = 0 the full-size one) is 1/2**k of the input size and weighs
    1/2**k, the weights normalised to sum 1 (nnU-Net's weighting; 3 outputs:
    0.571, 0.286, 0.143).
    """
    weights = [0.5**k for k in range(num_outputs)]
    total = sum(weights)
    losses = [get_loss(name)] + [DownsampledLoss(get_loss(name), 2**k) for k in range(1, num_outputs)]
    return losses, [w / total for w in weights]


def get_loss(name: str, **kwargs) -> keras.losses.Loss:
    """Loss instance for a config.py LOSS name; kwargs go to its constructor.

    Raises:
        ValueError: unknown name (the message lists the valid names).
    """
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; valid names: {', '.join(LOSSES)}")
    return LOSSES[name](**kwargs)


# ---------------------------------------------------------------- metrics
def _hard_masks(y_true, y_pred, threshold):
    """Binary float32 (true, predicted) masks of shape (B, H, W, K).

    K = 1: prediction = probability > threshold. K > 1: prediction = one-hot
    of the arg-max class (the soft-max decision; for K = 2 it equals the 0.5
    threshold).
    """
    y_true, y_pred = _prepare(y_true, y_pred)
    num_classes = y_pred.shape[-1]
    if num_classes == 1:
        pred = ops.cast(y_pred > threshold, "float32")
    else:
        pred = ops.one_hot(ops.argmax(y_pred, axis=-1), num_classes, dtype="float32")
    return ops.cast(y_true > 0.5, "float32"), pred


def _overlap_sums(y_true, y_pred, threshold, sample_weight=None):
    """(intersection, predicted, true) pixel counts per channel, shape (K,), float32."""
    truth, pred = _hard_masks(y_true, y_pred, threshold)
    if sample_weight is not None:
        weight = ops.cast(sample_weight, "float32")
        while len(weight.shape) < len(pred.shape):
            weight = ops.expand_dims(weight, -1)
        truth, pred = truth * weight, pred * weight
    axes = tuple(range(len(pred.shape) - 1))
    return ops.sum(truth * pred, axis=axes), ops.sum(pred, axis=axes), ops.sum(truth, axis=axes)


def _foreground(scores):
    """Mean over clot classes: the one sigmoid channel, or softmax channels 1..K-1."""
    return scores[0] if scores.shape[0] == 1 else ops.mean(scores[1:])


def dice_coefficient(y_true, y_pred, threshold=0.5, smooth=METRIC_SMOOTH):
    """Hard Dice of one batch (global over all its pixels), float32 scalar in [0, 1].

    A batch without clot and without predicted clot scores 1, never NaN.
    """
    inter, pred, true = _overlap_sums(y_true, y_pred, threshold)
    return _foreground((2.0 * inter + smooth) / (pred + true + smooth))


def iou_score(y_true, y_pred, threshold=0.5, smooth=METRIC_SMOOTH):
    """Hard IoU (Jaccard) of one batch (global over all its pixels), float32 scalar in [0, 1]."""
    inter, pred, true = _overlap_sums(y_true, y_pred, threshold)
    return _foreground((inter + smooth) / (pred + true - inter + smooth))


class _OverlapMetric(keras.metrics.Metric):
    """Accumulates per-class intersection / predicted / true pixel counts over the epoch."""

    def __init__(self, num_classes=1, threshold=0.5, smooth=METRIC_SMOOTH, name=None, dtype=None):
        # Always float32: counts reach millions of pixels and the value must not
        # follow a mixed precision policy (dtype is accepted only for from_config).
        del dtype
        super().__init__(name=name, dtype="float32")
        self.num_classes = int(num_classes)
        self.threshold = float(threshold)
        self.smooth = float(smooth)
        shape = (self.num_classes,)
        self.intersection = self.add_variable(shape=shape, initializer="zeros", name="intersection")
        self.predicted = self.add_variable(shape=shape, initializer="zeros", name="predicted")
        self.actual = self.add_variable(shape=shape, initializer="zeros", name="actual")

    def update_state(self, y_true, y_pred, sample_weight=None):
        inter, pred, true = _overlap_sums(y_true, y_pred, self.threshold, sample_weight)
        self.intersection.assign_add(inter)
        self.predicted.assign_add(pred)
        self.actual.assign_add(true)

    def get_config(self):
        return {
            **super().get_config(),
            "num_classes": self.num_classes,
            "threshold": self.threshold,
            "smooth": self.smooth,
        }


@keras.saving.register_keras_serializable(package="clotseg")
class DiceCoefficient(_OverlapMetric):
    """Global hard Dice over the epoch: (2 sum I + s) / (sum P + sum T + s); float32."""

    def __init__(self, num_classes=1, threshold=0.5, smooth=METRIC_SMOOTH, name="dice", dtype=None):
        super().__init__(num_classes, threshold, smooth, name=name, dtype=dtype)

    def result(self):
        scores = (2.0 * self.intersection + self.smooth) / (self.predicted + self.actual + self.smooth)
        return _foreground(scores)


@keras.saving.register_keras_serializable(package="clotseg")
class IoUScore(_OverlapMetric):
    """Global hard IoU over the epoch: (sum I + s) / (sum P + sum T - sum I + s); float32."""

    def __init__(self, num_classes=1, threshold=0.5, smooth=METRIC_SMOOTH, name="iou", dtype=None):
        super().__init__(num_classes, threshold, smooth, name=name, dtype=dtype)

    def result(self):
        union = self.predicted + self.actual - self.intersection
        return _foreground((self.intersection + self.smooth) / (union + self.smooth))


def get_metrics(num_classes: int = 1, threshold: float = 0.5) -> list:
    """[DiceCoefficient, IoUScore] for `model.compile(metrics=...)`.

    History columns read dice, val_dice, iou, val_iou.
    """
    return [
        DiceCoefficient(num_classes=num_classes, threshold=threshold),
        IoUScore(num_classes=num_classes, threshold=threshold),
    ]
