"""Losses and metrics of myModels.losses: values checked against hand computations.

Backend-agnostic: run under KERAS_BACKEND=tensorflow, jax (and torch).
"""

import math

import keras
import numpy as np
import pytest
from keras import ops

from myModels.losses import (
    BceDiceLoss,
    BceSliceDiceLoss,
    DiceCoefficient,
    DiceLoss,
    FocalTverskyLoss,
    IoUScore,
    TopKBceDiceLoss,
    TverskyLoss,
    clot_slice_dice_loss,
    crossentropy,
    dice_coefficient,
    get_loss,
    get_metrics,
    iou_score,
    soft_dice_loss,
    topk_crossentropy,
    tversky_index,
)

# One 2x2 slice: truth [[1, 1], [0, 0]], prediction [[0.8, 0.4], [0.6, 0.0]].
# Soft sums: TP = 0.8 + 0.4 = 1.2, FP = 0.6, FN = 0.2 + 0.6 = 0.8.
# Thresholded at 0.5: predicted [[1, 0], [1, 0]] -> I = 1, P = 2, T = 2.
Y_TRUE = np.array([[[1.0, 1.0], [0.0, 0.0]]], dtype="float32")[..., None]
Y_PRED = np.array([[[0.8, 0.4], [0.6, 0.0]]], dtype="float32")[..., None]


def value(x):
    return float(ops.convert_to_numpy(x))


def test_soft_dice_hand_example_without_smoothing():
    assert value(soft_dice_loss(Y_TRUE, Y_PRED, smooth=0.0)) == pytest.approx(1 - 2.4 / 3.8, rel=1e-5)
    assert value(DiceLoss(smooth=0.0)(Y_TRUE, Y_PRED)) == pytest.approx(1 - 2.4 / 3.8, rel=1e-5)


def test_soft_dice_hand_example_with_smoothing():
    assert value(DiceLoss(smooth=1.0)(Y_TRUE, Y_PRED)) == pytest.approx(1 - 3.4 / 4.8, rel=1e-5)


def test_tversky_and_focal_tversky_hand_example():
    index = 1.2 / (1.2 + 0.3 * 0.6 + 0.7 * 0.8)
    assert value(tversky_index(Y_TRUE, Y_PRED, 0.3, 0.7, smooth=0.0)) == pytest.approx(index, rel=1e-5)
    assert value(TverskyLoss(smooth=0.0)(Y_TRUE, Y_PRED)) == pytest.approx(1 - index, rel=1e-5)
    focal = FocalTverskyLoss(smooth=0.0)(Y_TRUE, Y_PRED)
    assert value(focal) == pytest.approx((1 - index) ** 0.75, rel=1e-5)


def test_tversky_penalises_missed_clot_more_than_false_alarm():
    truth = np.zeros((1, 4, 4, 1), "float32")
    truth[0, :2, :2] = 1
    missed = truth.copy()
    missed[0, 0, 0] = 0          # one false negative
    alarm = truth.copy()
    alarm[0, 3, 3] = 1           # one false positive
    loss = TverskyLoss()
    assert value(loss(truth, missed)) > value(loss(truth, alarm))


def test_bce_dice_is_crossentropy_plus_dice():
    p = Y_PRED[..., 0].ravel().clip(1e-7, 1 - 1e-7)
    t = Y_TRUE[..., 0].ravel()
    bce = -np.mean(t * np.log(p) + (1 - t) * np.log(1 - p))
    expected = bce + (1 - 3.4 / 4.8)
    assert value(BceDiceLoss()(Y_TRUE, Y_PRED)) == pytest.approx(expected, rel=1e-4)


def test_clot_slice_dice_weighs_every_clot_slice_the_same():
    # slice 0: a 16-pixel clot predicted perfectly; slice 1: a 1-pixel clot missed; slice 2: no clot
    truth = np.zeros((3, 8, 8, 1), "float32")
    truth[0, :4, :4] = 1
    truth[1, 6, 6] = 1
    pred = truth.copy()
    pred[1] = 0
    # per clot slice (smooth 0): Dice 1 and 0 -> mean 0.5, whatever the clots' sizes;
    # the clot-free slice (0/0) does not count
    assert value(clot_slice_dice_loss(truth, pred, smooth=0.0)) == pytest.approx(0.5, rel=1e-5)
    # the batch Dice barely notices the missed small clot: 2*16 / (16 + 17)
    assert value(soft_dice_loss(truth, pred, smooth=0.0)) == pytest.approx(1 - 32 / 33, rel=1e-4)
    # a false alarm in the clot-free slice is left to the other terms
    alarm = pred.copy()
    alarm[2, 0, 0] = 1
    assert value(clot_slice_dice_loss(truth, alarm, smooth=0.0)) == pytest.approx(0.5, rel=1e-5)
    assert value(soft_dice_loss(truth, alarm, smooth=0.0)) > value(soft_dice_loss(truth, pred, smooth=0.0))


def test_clot_slice_dice_of_a_batch_without_clot_is_zero():
    truth = np.zeros((2, 4, 4, 1), "float32")
    assert value(clot_slice_dice_loss(truth, np.full_like(truth, 0.3))) == 0.0


def test_clot_slice_dice_softmax_uses_foreground_classes():
    labels = np.zeros((2, 2, 2), int)
    labels[0, 0, 0] = 1                     # sample 0 holds class 1; sample 1 is background only
    truth = np.eye(2, dtype="float32")[labels]
    assert value(clot_slice_dice_loss(truth, truth, smooth=0.0)) == pytest.approx(0.0, abs=1e-6)
    # sample 1 predicted all wrong: it holds no clot, so it does not count
    wrong = truth.copy()
    wrong[1] = 1.0 - wrong[1]
    assert value(clot_slice_dice_loss(truth, wrong, smooth=0.0)) == pytest.approx(0.0, abs=1e-6)


def test_bce_slice_dice_is_crossentropy_plus_half_of_each_dice():
    truth = np.zeros((2, 4, 4, 1), "float32")
    truth[0, :2, :2] = 1
    pred = np.full_like(truth, 0.2)
    pred[0, :2, :2] = 0.7
    p, t = pred.ravel(), truth.ravel()
    bce = -np.mean(t * np.log(p) + (1 - t) * np.log(1 - p))
    tp, fp, fn = 4 * 0.7, 28 * 0.2, 4 * 0.3
    batch = 1 - (2 * tp + 1) / (2 * tp + fp + fn + 1)
    tp0, fp0, fn0 = 4 * 0.7, 12 * 0.2, 4 * 0.3   # sample 0 alone; sample 1 holds no clot
    per_slice = 1 - (2 * tp0 + 1) / (2 * tp0 + fp0 + fn0 + 1)
    expected = bce + 0.5 * batch + 0.5 * per_slice
    assert value(BceSliceDiceLoss()(truth, pred)) == pytest.approx(expected, rel=1e-4)


def test_topk_crossentropy_keeps_the_hardest_pixels_of_each_slice():
    truth = np.zeros((2, 4, 5, 1), "float32")                  # 20 pixels a slice: top 10% = 2
    truth[0, 0, :2] = 1
    pred = np.full_like(truth, 0.1)
    pred[0, 0, :2] = 0.2                                        # slice 0: two missed clot pixels
    pred[1, 1, 1], pred[1, 2, 2] = 0.6, 0.9                     # slice 1: two false alarms
    expected = (2 * -np.log(0.2) + -np.log(1 - 0.6) - np.log(1 - 0.9)) / 4
    assert value(topk_crossentropy(truth, pred, 10.0)) == pytest.approx(expected, rel=1e-4)
    assert value(topk_crossentropy(truth, pred, 100.0)) == pytest.approx(value(crossentropy(truth, pred)),
                                                                         rel=1e-5)
    # ceil: 15% of 20 pixels keeps 3, so the next-hardest pixel (0.1 -> -log 0.9) joins each slice
    three = (2 * -np.log(0.2) - np.log(0.9) - np.log(0.4) - np.log(0.1) - np.log(0.9)) / 6
    assert value(topk_crossentropy(truth, pred, 15.0)) == pytest.approx(three, rel=1e-4)


def test_topk_bce_dice_is_topk_crossentropy_plus_batch_dice():
    rng = np.random.default_rng(3)
    truth = (rng.random((2, 8, 8, 1)) > 0.85).astype("float32")
    pred = rng.uniform(0.05, 0.95, truth.shape).astype("float32")
    loss = TopKBceDiceLoss()
    assert loss.name == "topk_bce_dice" and get_loss("topk_bce_dice").k_percent == 10.0
    expected = value(topk_crossentropy(truth, pred, 10.0)) + value(DiceLoss()(truth, pred))
    assert value(loss(truth, pred)) == pytest.approx(expected, rel=1e-5)
    # harder than the plain crossentropy: only the worst pixels are averaged
    assert value(loss(truth, pred)) > value(BceDiceLoss()(truth, pred))
    with pytest.raises(ValueError, match="k_percent"):
        TopKBceDiceLoss(k_percent=0)
    back = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(TopKBceDiceLoss(25.0)))
    assert isinstance(back, TopKBceDiceLoss) and back.k_percent == 25.0


@pytest.mark.parametrize("name", ["dice", "bce_dice", "bce_slice_dice", "topk_bce_dice", "tversky",
                                  "focal_tversky"])
def test_perfect_prediction_gives_near_zero_loss(name):
    rng = np.random.default_rng(0)
    truth = (rng.random((2, 16, 16, 1)) > 0.8).astype("float32")
    # Crossentropy of a hard 0/1 prediction is only clipped to ~1e-7, not 0.
    assert value(get_loss(name)(truth, truth)) == pytest.approx(0.0, abs=1e-3)


@pytest.mark.parametrize("name", ["dice", "tversky", "focal_tversky"])
def test_disjoint_prediction_gives_loss_near_one(name):
    truth = np.zeros((2, 16, 16, 1), "float32")
    truth[:, :8] = 1
    assert value(get_loss(name)(truth, 1.0 - truth)) == pytest.approx(1.0, abs=0.01)


def test_loss_accepts_mask_without_channel_axis():
    assert value(DiceLoss(smooth=0.0)(Y_TRUE[..., 0], Y_PRED)) == pytest.approx(1 - 2.4 / 3.8, rel=1e-5)


def test_softmax_losses_average_over_channels():
    # 3 classes, one-hot truth; the prediction swaps classes 1 and 2 everywhere.
    labels = np.array([[[0, 1], [2, 0]]])
    truth = np.eye(3, dtype="float32")[labels]
    swapped = np.eye(3, dtype="float32")[np.array([[[0, 2], [1, 0]]])]
    # Class 0 perfect (Dice 1), classes 1 and 2 disjoint (Dice 0): mean 1/3.
    assert value(DiceLoss(smooth=0.0)(truth, swapped)) == pytest.approx(1 - 1 / 3, rel=1e-5)
    assert value(DiceLoss()(truth, truth)) == pytest.approx(0.0, abs=1e-6)
    assert math.isfinite(value(BceDiceLoss()(truth, swapped)))


def test_batch_metrics_hand_example():
    assert value(dice_coefficient(Y_TRUE, Y_PRED, smooth=0.0)) == pytest.approx(2 * 1 / (2 + 2))
    assert value(iou_score(Y_TRUE, Y_PRED, smooth=0.0)) == pytest.approx(1 / (2 + 2 - 1))


def test_metric_classes_are_global_over_the_epoch():
    dice, iou = DiceCoefficient(), IoUScore()
    second_true = np.ones((1, 2, 2, 1), "float32")
    second_pred = np.full((1, 2, 2, 1), 0.9, "float32")
    for metric in (dice, iou):
        metric.update_state(Y_TRUE, Y_PRED)          # I = 1, P = 2, T = 2
        metric.update_state(second_true, second_pred)  # I = 4, P = 4, T = 4
    # Global: I = 5, P = 6, T = 6 (the mean of batch Dices would be 0.75).
    assert value(dice.result()) == pytest.approx(10 / 12, rel=1e-5)
    assert value(iou.result()) == pytest.approx(5 / 7, rel=1e-5)
    dice.reset_state()
    dice.update_state(Y_TRUE, Y_PRED)
    assert value(dice.result()) == pytest.approx(0.5, rel=1e-5)


def test_metrics_on_empty_batch_are_finite():
    empty = np.zeros((2, 8, 8, 1), "float32")
    for metric in get_metrics(1):
        metric.update_state(empty, empty)
        assert value(metric.result()) == pytest.approx(1.0)
    assert value(dice_coefficient(empty, empty)) == pytest.approx(1.0)
    # A false alarm on an empty batch scores 0, not NaN.
    alarm = empty.copy()
    alarm[0, 0, 0] = 1.0
    assert value(dice_coefficient(empty, alarm)) == pytest.approx(0.0, abs=1e-5)
    assert value(iou_score(empty, alarm)) == pytest.approx(0.0, abs=1e-5)


def test_metrics_threshold_at_one_half():
    truth = np.ones((1, 1, 2, 1), "float32")
    pred = np.array([[[[0.49], [0.51]]]], "float32")
    assert value(dice_coefficient(truth, pred, smooth=0.0)) == pytest.approx(2 * 1 / (1 + 2))


def test_metrics_and_losses_are_float32_for_low_precision_predictions():
    for low in ("bfloat16", "float16"):
        pred = ops.cast(Y_PRED, low)
        metric = DiceCoefficient()
        metric.update_state(Y_TRUE, pred)
        assert keras.backend.standardize_dtype(metric.result().dtype) == "float32"
        assert value(metric.result()) == pytest.approx(0.5, rel=1e-5)
        loss = DiceLoss()(Y_TRUE, pred)
        assert keras.backend.standardize_dtype(loss.dtype) == "float32"


def test_softmax_metric_uses_argmax_and_foreground_classes():
    labels = np.array([[[0, 1], [2, 2]]])
    truth = np.eye(3, dtype="float32")[labels]
    # Predict class 1 for the first class-2 pixel: class 1 I=1 P=2 T=1, class 2 I=1 P=1 T=2.
    probs = np.eye(3, dtype="float32")[np.array([[[0, 1], [1, 2]]])] * 0.6 + 0.4 / 3
    metric = DiceCoefficient(num_classes=3)
    metric.update_state(truth, probs)
    assert value(metric.result()) == pytest.approx((2 / 3 + 2 / 3) / 2, rel=1e-5)


def test_get_loss_names_and_errors():
    for name, cls in [("dice", DiceLoss), ("bce_dice", BceDiceLoss), ("bce_slice_dice", BceSliceDiceLoss),
                      ("topk_bce_dice", TopKBceDiceLoss), ("tversky", TverskyLoss),
                      ("focal_tversky", FocalTverskyLoss)]:
        loss = get_loss(name)
        assert isinstance(loss, cls) and loss.name == name
    with pytest.raises(ValueError, match="focal_tversky") as info:
        get_loss("jaccard")
    assert "bce_dice" in str(info.value)


def test_get_metrics_names():
    assert [m.name for m in get_metrics(1)] == ["dice", "iou"]
    assert all(m.num_classes == 3 for m in get_metrics(3))


def test_losses_and_metrics_round_trip_through_serialization():
    loss = FocalTverskyLoss(alpha=0.2, beta=0.8, gamma=0.5)
    config = keras.saving.serialize_keras_object(loss)
    assert config["registered_name"].startswith("clotseg>")
    back = keras.saving.deserialize_keras_object(config)
    assert (back.alpha, back.beta, back.gamma) == (0.2, 0.8, 0.5)
    metric = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(IoUScore(num_classes=3, threshold=0.3)))
    assert isinstance(metric, IoUScore) and metric.num_classes == 3 and metric.threshold == 0.3
    assert metric.name == "iou"


def test_history_columns_are_dice_and_iou():
    rng = np.random.default_rng(1)
    x = rng.random((8, 8, 8, 2)).astype("float32")
    y = (x[..., :1] > 0.5).astype("float32")
    model = keras.Sequential([keras.Input((8, 8, 2)), keras.layers.Conv2D(1, 1, activation="sigmoid")])
    model.compile(optimizer="adam", loss=get_loss("bce_dice"), metrics=get_metrics(1))
    history = model.fit(x, y, validation_data=(x, y), epochs=1, batch_size=4, verbose=0)
    assert {"dice", "val_dice", "iou", "val_iou"} <= set(history.history)
    assert all(0.0 <= history.history[k][0] <= 1.0 for k in ("dice", "val_dice", "iou", "val_iou"))


def test_label_map_against_softmax_channels_is_rejected():
    labels = np.zeros((1, 2, 2), "float32")
    probs = np.full((1, 2, 2, 3), 1 / 3, "float32")
    with pytest.raises(ValueError, match="one-hot"):
        DiceLoss()(labels, probs)


def test_settings_know_every_loss():
    from clotseg import settings as settings_module
    from myModels.losses import LOSSES

    assert settings_module.LOSSES == tuple(LOSSES)
