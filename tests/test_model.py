"""The ClotSeg 2D U-Net: architecture, dtypes, saving, mixed precision, learning.

Backend-agnostic: run under KERAS_BACKEND=tensorflow, jax (and torch).
"""

import keras
import numpy as np
import pytest

from myModels.DataGeneratorUNet2D import DataGeneratorUNet2D
from myModels.losses import BceDiceLoss, get_loss, get_metrics
from myModels.unet2D import build_unet2d

SMALL = dict(base_filters=8, depth=2, dropout=0.1)


def expected_params(channels, base, depth, num_classes):
    """(trainable, non-trainable) weights of the U-Net from the layer formulas.

    conv k x k: k*k*cin*cout + cout; BatchNormalization: gamma, beta trainable
    and moving mean, variance not; Rescaling, Dropout, pooling: none.
    """
    def conv(k, cin, cout):
        return k * k * cin * cout + cout

    trainable = non_trainable = 0

    def block(cin, cout):
        nonlocal trainable, non_trainable
        trainable += conv(3, cin, cout) + conv(3, cout, cout) + 2 * 2 * cout
        non_trainable += 2 * 2 * cout

    cin = channels
    for level in range(depth):
        block(cin, base * 2**level)
        cin = base * 2**level
    block(cin, base * 2**depth)
    cin = base * 2**depth
    for level in reversed(range(depth)):
        f = base * 2**level
        trainable += conv(2, cin, f)     # Conv2DTranspose 2x2
        block(2 * f, f)                  # after concatenation with the skip
        cin = f
    trainable += conv(1, base, num_classes)
    return trainable, non_trainable


def weight_count(weights):
    return sum(int(np.prod(w.shape)) for w in weights)


@pytest.fixture(scope="module")
def small_model():
    return build_unet2d((32, 32, 2), **SMALL)


@pytest.fixture()
def restore_policy():
    policy = keras.mixed_precision.global_policy()
    yield
    keras.mixed_precision.set_global_policy(policy)


def codes(shape, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


@pytest.mark.parametrize("shape, num_classes", [((64, 64, 2), 1), ((64, 64, 1), 1), ((64, 64, 2), 3)])
def test_output_shape_and_activation(shape, num_classes):
    model = build_unet2d(shape, num_classes=num_classes, **SMALL)
    probs = model.predict(codes((2, *shape)), verbose=0)
    assert probs.shape == (2, 64, 64, num_classes) and probs.dtype == np.float32
    assert probs.min() >= 0.0 and probs.max() <= 1.0
    if num_classes > 1:
        np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)


@pytest.mark.parametrize(
    "shape, base, depth, num_classes",
    # Configurations chosen to reuse kernel shapes of the other tests: under JAX
    # every new weight shape costs seconds of compilation of the initializer.
    [((32, 32, 2), 8, 2, 1), ((32, 32, 1), 8, 3, 3), ((32, 32, 2), 16, 1, 1)],
)
def test_parameter_count_matches_layer_formula(shape, base, depth, num_classes):
    model = build_unet2d(shape, base_filters=base, depth=depth, num_classes=num_classes)
    trainable, non_trainable = expected_params(shape[-1], base, depth, num_classes)
    assert weight_count(model.trainable_weights) == trainable
    assert weight_count(model.non_trainable_weights) == non_trainable
    assert model.count_params() == trainable + non_trainable


def test_documented_default_parameter_count():
    # The formula is checked against built models above; the default model is
    # not built here to keep the test fast.
    trainable, non_trainable = expected_params(2, 32, 3, 1)
    doc = build_unet2d.__doc__
    assert f"{trainable + non_trainable:,} parameters" in doc
    assert f"{trainable:,} are\n    trainable" in doc and f"{non_trainable:,} are BatchNormalization" in doc


def test_encoder_filters_double_per_level(small_model):
    filters = [small_model.get_layer(f"enc{i}_conv2").filters for i in range(2)]
    assert filters == [8, 16] and small_model.get_layer("bottleneck_conv2").filters == 32
    pools = [layer for layer in small_model.layers if isinstance(layer, keras.layers.MaxPooling2D)]
    assert len(pools) == 2
    drops = [layer for layer in small_model.layers if isinstance(layer, keras.layers.Dropout)]
    assert len(drops) == 2 * 2 + 1 and all(d.rate == 0.1 for d in drops)


def test_rescaling_is_first_layer_and_output_is_float32(small_model):
    first = small_model.layers[1]
    assert isinstance(small_model.layers[0], keras.layers.InputLayer)
    assert isinstance(first, keras.layers.Rescaling)
    assert first.scale == pytest.approx(1 / 255)
    assert small_model.inputs[0].dtype == "float32"
    assert small_model.layers[-1].dtype_policy.compute_dtype == "float32"


def test_uint8_input_matches_float_input_in_predict(small_model):
    x = codes((4, 32, 32, 2), seed=1)
    np.testing.assert_allclose(
        small_model.predict(x, verbose=0), small_model.predict(x.astype("float32"), verbose=0), atol=1e-6
    )


def test_rejects_sizes_not_divisible_by_poolings():
    with pytest.raises(ValueError, match="divisible"):
        build_unet2d((60, 60, 2), depth=3)
    with pytest.raises(ValueError, match="dropout"):
        build_unet2d((32, 32, 2), dropout=1.0)


def test_mixed_bfloat16_keeps_probabilities_and_metrics_float32(restore_policy):
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    model = build_unet2d((32, 32, 2), **SMALL)
    assert model.get_layer("enc0_conv1").compute_dtype == "bfloat16"
    assert keras.backend.standardize_dtype(model.outputs[0].dtype) == "float32"
    x = codes((2, 32, 32, 2), seed=3)
    probs = model.predict(x, verbose=0)
    assert probs.dtype == np.float32
    metric = get_metrics(1)[0]
    metric.update_state((x[..., :1] > 127).astype("float32"), probs)
    result = metric.result()
    assert keras.backend.standardize_dtype(result.dtype) == "float32"
    assert np.isfinite(keras.ops.convert_to_numpy(result))


def planted_squares(n, seed, size=32, side=6):
    """Noise codes 0..119; a 6x6 square of codes 200..255 in channel 0 is the mask."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 120, size=(n, size, size, 2), dtype=np.uint8)
    masks = np.zeros((n, size, size), np.uint8)
    for i, (r, c) in enumerate(rng.integers(0, size - side, size=(n, 2))):
        masks[i, r : r + side, c : c + side] = 1
    images[..., 0][masks == 1] = rng.integers(200, 256, size=int(masks.sum()), dtype=np.uint8)
    return images, masks


@pytest.fixture(scope="module")
def trained():
    """Small U-Net fitted 6 epochs on 64 planted-square samples fed as uint8 batches.

    Returns (model, history, start_dice, images, masks).
    """
    keras.utils.set_random_seed(0)
    images, masks = planted_squares(64, seed=0)
    model = build_unet2d((32, 32, 2), **SMALL)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=get_loss("bce_dice"), metrics=get_metrics(1))
    train = DataGeneratorUNet2D(images, masks, batch_size=16, seed=0, image_dtype="uint8")
    assert train[0][0].dtype == np.uint8
    start = model.evaluate(DataGeneratorUNet2D(images, masks, batch_size=64, shuffle=False),
                           verbose=0, return_dict=True)["dice"]
    history = model.fit(train, epochs=6, verbose=0)
    return model, history, start, images, masks


@pytest.mark.slow
def test_tiny_training_learns_planted_squares(trained):
    _, history, start, _, _ = trained
    # Training-mode Dice of the last epoch: after 24 steps the BatchNorm moving
    # statistics used by evaluate() still lag, so evaluate() would under-report.
    final = history.history["dice"][-1]
    assert np.all(np.isfinite(history.history["loss"]))
    assert final > max(start + 0.4, 0.6), (start, history.history["dice"])


@pytest.mark.slow
def test_saved_model_reloads_without_custom_objects(trained, tmp_path):
    model, _, _, images, masks = trained
    x, y = images[:8], masks[:8, ..., None].astype("float32")
    path = tmp_path / "model.keras"
    model.save(path)

    loaded = keras.models.load_model(path, safe_mode=True)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)
    assert isinstance(loaded.loss, BceDiceLoss)
    scores = loaded.evaluate(x, y, verbose=0, return_dict=True)
    assert {"dice", "iou"} <= set(scores)
