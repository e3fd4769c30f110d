"""The model registry (MODEL): every registered model builds, predicts,
reloads in Keras safe mode and rejects shapes it cannot handle; a new
architecture registers with one call; inference copies load without ClotSeg."""

import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from clotseg import settings as settings_module
from clotseg.errors import ConfigError
from myModels import registry
from myModels.registry import MODELS, build_model, register_model
from tests.conftest import tiny_settings

SMALL = dict(base_filters=4, depth=2, dropout=0.1)


def _inputs(n, h, w, c, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, c)).astype(np.float32)


def test_settings_models_match_the_registry():
    assert set(settings_module.MODELS) == set(MODELS)
    assert {"unet", "resunet"} <= set(MODELS)


def test_settings_normalizations_match_the_models():
    from myModels.unet2D import NORMALIZATIONS

    assert settings_module.NORMALIZATIONS == NORMALIZATIONS


@pytest.mark.parametrize("name", sorted(MODELS))
def test_instance_normalization_normalises_each_image_on_its_own(name):
    """NORMALIZATION = "instance": no batch statistics anywhere, so in training
    mode an image's output does not depend on the other images of its batch
    (with batch normalisation it does), and the norm layers keep their names."""
    x = _inputs(4, 32, 32, 2, seed=3)
    x[1:] = x[1:] * 0.3 + 150     # the batch mates look different from image 0
    outs = {}
    for normalization in ("batch", "instance"):
        keras.utils.set_random_seed(0)
        model = build_model(name, (32, 32, 2), num_classes=1, normalization=normalization,
                            base_filters=4, depth=2, dropout=0.0)
        kinds = {type(layer).__name__ for layer in model.layers}
        norms = [layer for layer in model.layers if layer.name.endswith(("_bn1", "_bn2"))]
        assert norms
        if normalization == "instance":
            assert "BatchNormalization" not in kinds
            assert all(type(layer).__name__ == "GroupNormalization"
                       and layer.groups == layer.input.shape[-1] for layer in norms)
        alone = np.asarray(model(x[:1], training=True))
        batched = np.asarray(model(x, training=True))[:1]
        outs[normalization] = np.abs(alone - batched).max()
    assert outs["instance"] < 1e-5
    assert outs["batch"] > 1e-3


def test_settings_dropout_kinds_match_the_models():
    from myModels.unet2D import DROPOUT_KINDS

    assert settings_module.DROPOUT_KINDS == DROPOUT_KINDS


@pytest.mark.parametrize("name", sorted(MODELS))
def test_spatial_dropout_drops_whole_feature_maps_and_reloads_in_safe_mode(tmp_path, name):
    """DROPOUT_KIND = "spatial": every dropout layer is a SpatialDropout2D, so in training mode a
    dropped channel is zero over the whole image (standard dropout zeroes scattered pixels); at
    inference the model is the same function, and it reloads in safe mode."""
    standard = build_model(name, (32, 32, 2), num_classes=1, base_filters=4, depth=2, dropout=0.5)
    spatial = build_model(name, (32, 32, 2), num_classes=1, base_filters=4, depth=2, dropout=0.5,
                          dropout_kind="spatial")
    drops = [layer for layer in spatial.layers if layer.name.endswith("_drop")]
    assert drops and all(type(layer).__name__ == "SpatialDropout2D" for layer in drops)
    assert [layer.name for layer in drops] == [layer.name for layer in standard.layers if layer.name.endswith("_drop")]
    assert not any(type(layer).__name__ == "SpatialDropout2D" for layer in standard.layers)
    feature = keras.ops.ones((2, 8, 8, 16))
    for layer, whole_maps in ((drops[0], True), (standard.get_layer(drops[0].name), False)):
        out = np.asarray(layer(feature, training=True))
        zero_maps = (out == 0).all(axis=(1, 2))           # (2, 16): channels zeroed over the whole image
        assert ((out == 0).any() and zero_maps.any()) == whole_maps
        if whole_maps:   # nothing else is zeroed: every value is dropped with its whole map or kept
            np.testing.assert_array_equal((out == 0), np.broadcast_to(zero_maps[:, None, None, :], out.shape))
    spatial.set_weights(standard.get_weights())
    x = _inputs(2, 32, 32, 2, seed=7)
    np.testing.assert_allclose(np.asarray(spatial.predict_on_batch(x)), np.asarray(standard.predict_on_batch(x)),
                               rtol=1e-5, atol=1e-6)
    spatial.save(tmp_path / "m.keras")
    again = keras.saving.load_model(tmp_path / "m.keras", safe_mode=True, compile=False)
    assert type(again.get_layer(drops[0].name)).__name__ == "SpatialDropout2D"
    np.testing.assert_allclose(np.asarray(again.predict_on_batch(x)), np.asarray(spatial.predict_on_batch(x)),
                               rtol=1e-5, atol=1e-6)


def test_dropout_kind_setting_is_validated_and_reaches_the_trained_model(tmp_path):
    from clotseg.stages.train import inference_copy

    s = tiny_settings(tmp_path, dropout_kind="spatial", patch_size=(32, 32))
    assert s.dropout_kind == "spatial"
    with pytest.raises(ConfigError, match="DROPOUT_KIND must be one of"):
        tiny_settings(tmp_path, dropout_kind="alpha")
    with pytest.raises(ValueError, match="dropout kind must be one of"):
        build_model("unet", (32, 32, 2), num_classes=1, dropout_kind="alpha", **SMALL)
    model = build_model(s.model, s.training_input_shape, s.base_filters, s.depth, s.dropout, s.num_classes,
                        dropout_kind=s.dropout_kind)
    copy = inference_copy(model, s)
    assert any(type(layer).__name__ == "SpatialDropout2D" for layer in copy.layers)


def test_an_unknown_normalization_is_refused():
    with pytest.raises(ValueError, match="normalization must be one of"):
        build_model("unet", (32, 32, 2), num_classes=1, normalization="layer", **SMALL)


def test_normalization_setting_is_validated(tmp_path):
    assert tiny_settings(tmp_path, normalization="instance").normalization == "instance"
    with pytest.raises(ConfigError, match="NORMALIZATION must be one of"):
        tiny_settings(tmp_path, normalization="layer")


def test_inference_copy_keeps_instance_normalization(tmp_path):
    from clotseg.stages.train import inference_copy

    s = tiny_settings(tmp_path, normalization="instance", patch_size=(32, 32))
    model = build_model(s.model, s.training_input_shape, s.base_filters, s.depth, s.dropout, s.num_classes,
                        normalization=s.normalization)
    rng = np.random.default_rng(5)
    model.set_weights([w + rng.normal(0, 0.05, w.shape).astype(w.dtype) for w in model.get_weights()])
    copy = inference_copy(model, s)
    assert tuple(copy.input_shape) == (None, *s.model_input_shape)
    assert any(type(layer).__name__ == "GroupNormalization" for layer in copy.layers)
    x = _inputs(2, *s.model_input_shape, seed=6)
    np.testing.assert_allclose(np.asarray(copy.predict_on_batch(x)), np.asarray(model.predict_on_batch(x)),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("num_classes", [1, 3])
@pytest.mark.parametrize("channels", [2, 6])
def test_every_model_builds_and_gives_probabilities(name, num_classes, channels):
    model = build_model(name, (32, 32, channels), num_classes=num_classes, **SMALL)
    assert tuple(model.input_shape) == (None, 32, 32, channels)
    assert tuple(model.output_shape) == (None, 32, 32, num_classes)
    assert not model.compiled   # uncompiled: the training stage compiles it
    out = np.asarray(model.predict_on_batch(_inputs(2, 32, 32, channels)))
    assert out.shape == (2, 32, 32, num_classes) and out.dtype == np.float32
    assert np.all(np.isfinite(out)) and out.min() >= 0.0 and out.max() <= 1.0
    if num_classes > 1:   # softmax: a distribution over classes per pixel
        np.testing.assert_allclose(out.sum(axis=-1), 1.0, atol=1e-5)


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("num_classes,channels,normalization", [(1, 6, "batch"), (3, 2, "batch"),
                                                                (1, 6, "instance")])
def test_every_model_reloads_in_safe_mode_with_identical_predictions(tmp_path, name, num_classes, channels,
                                                                      normalization):
    model = build_model(name, (32, 32, channels), num_classes=num_classes, normalization=normalization, **SMALL)
    # move the weights off their initial values, so a reload that re-initialises shows up
    rng = np.random.default_rng(1)
    model.set_weights([w + rng.normal(0, 0.05, w.shape).astype(w.dtype) for w in model.get_weights()])
    x = _inputs(3, 32, 32, channels, seed=2)
    before = np.asarray(model.predict_on_batch(x))
    path = tmp_path / f"{name}.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True, compile=False)
    after = np.asarray(loaded.predict_on_batch(x))
    np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-6)
    assert [w.shape for w in loaded.get_weights()] == [w.shape for w in model.get_weights()]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_models_with_open_spatial_size_accept_any_multiple(name):
    model = build_model(name, (None, None, 2), num_classes=1, **SMALL)
    for h, w in ((16, 16), (32, 48)):
        assert np.asarray(model.predict_on_batch(_inputs(1, h, w, 2))).shape == (1, h, w, 1)


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("shape,kwargs", [
    ((30, 32, 2), {}),                    # rows not divisible by 2**depth = 4
    ((32, 36, 2), {"depth": 3}),          # cols not divisible by 8
    ((32, 32), {}),                       # no channel axis
    ((32, 32, 2), {"base_filters": 0}),
    ((32, 32, 2), {"dropout": 1.0}),
    ((32, 32, 2), {"num_classes": 0}),
])
def test_every_model_rejects_bad_arguments(name, shape, kwargs):
    args = {**SMALL, "num_classes": 1, **kwargs}
    with pytest.raises(ValueError):
        build_model(name, shape, **args)


def test_unknown_model_names_the_known_ones():
    with pytest.raises(ValueError, match="unknown model 'vnet'") as info:
        build_model("vnet", (32, 32, 2), num_classes=1, **SMALL)
    for name in MODELS:
        assert repr(name) in str(info.value)


def test_resunet_rejects_too_few_blocks():
    from myModels.resunet2D import build_resunet2d

    with pytest.raises(ValueError, match="blocks"):
        build_resunet2d((32, 32, 2), base_filters=4, depth=3, blocks=(1, 1, 1))
    with pytest.raises(ValueError, match="blocks"):
        build_resunet2d((32, 32, 2), base_filters=4, depth=2, blocks=(1, 0, 1))


def test_resunet_is_deeper_than_unet_at_equal_width():
    """The residual encoder stacks more convolutions per stage (and adds the
    residual projections), so at equal base_filters/depth it has more layers."""
    unet = build_model("unet", (32, 32, 2), num_classes=1, **SMALL)
    res = build_model("resunet", (32, 32, 2), num_classes=1, **SMALL)
    n_conv = lambda m: sum(isinstance(l, keras.layers.Conv2D) for l in m.layers)  # noqa: E731
    assert n_conv(res) > n_conv(unet)
    assert any(isinstance(l, keras.layers.Add) for l in res.layers)
    assert not any(isinstance(l, keras.layers.Add) for l in unet.layers)


# ------------------------------------------------------- registering a model
def _tiny_fcn(input_shape, base_filters, depth, dropout, num_classes):
    inputs = keras.Input(shape=input_shape, name="codes")
    x = keras.layers.Rescaling(1.0 / 255.0)(inputs)
    x = keras.layers.Conv2D(base_filters, 3, padding="same", activation="relu")(x)
    out = keras.layers.Conv2D(num_classes, 1, activation="sigmoid" if num_classes == 1 else "softmax",
                              name="probabilities")(x)
    return keras.Model(inputs, out, name="tiny_fcn")


@pytest.fixture
def tiny_fcn_registered(monkeypatch):
    monkeypatch.setattr(registry, "MODELS", dict(registry.MODELS))   # restored after the test
    register_model("tiny_fcn", _tiny_fcn)
    return "tiny_fcn"


def test_register_model_makes_a_builder_buildable(tiny_fcn_registered):
    assert "tiny_fcn" in registry.MODELS
    model = registry.build_model("tiny_fcn", [16, 16, 6], base_filters=3, depth=2, dropout=0.0, num_classes=1)
    assert model.name == "tiny_fcn"
    assert tuple(model.input_shape) == (None, 16, 16, 6)   # list shapes are passed on as a tuple
    assert np.asarray(model.predict_on_batch(_inputs(1, 16, 16, 6))).shape == (1, 16, 16, 1)
    # a builder without a deep_supervision argument says so instead of a TypeError
    with pytest.raises(ValueError, match="does not offer DEEP_SUPERVISION"):
        registry.build_model("tiny_fcn", [16, 16, 6], base_filters=3, depth=2, dropout=0.0, num_classes=1,
                             deep_supervision=True)
    with pytest.raises(ValueError, match="does not offer NORMALIZATION"):
        registry.build_model("tiny_fcn", [16, 16, 6], base_filters=3, depth=2, dropout=0.0, num_classes=1,
                             normalization="instance")
    with pytest.raises(ValueError, match="does not offer DROPOUT_KIND"):
        registry.build_model("tiny_fcn", [16, 16, 6], base_filters=3, depth=2, dropout=0.0, num_classes=1,
                             dropout_kind="spatial")
    with pytest.raises(ValueError, match="does not offer EXTRA_WINDOWS_HU"):
        registry.build_model("tiny_fcn", [16, 16, 6], base_filters=3, depth=2, dropout=0.0, num_classes=1,
                             extra_windows=[(3, 2.5, -0.125)])


def test_model_setting_rejects_an_unlisted_name_with_a_clear_message(tiny_fcn_registered, tmp_path):
    with pytest.raises(ConfigError) as info:
        tiny_settings(tmp_path, model="tiny_fcn")
    message = str(info.value)
    assert "MODEL must be one of" in message and "'tiny_fcn'" in message
    assert "'unet'" in message and "'resunet'" in message


def test_registered_model_is_used_through_model_once_settings_list_it(tiny_fcn_registered, tmp_path, monkeypatch):
    monkeypatch.setattr(settings_module, "MODELS", (*settings_module.MODELS, "tiny_fcn"))
    s = tiny_settings(tmp_path, model="tiny_fcn", context_slices=1)
    model = registry.build_model(s.model, s.model_input_shape, s.base_filters, s.depth, s.dropout, s.num_classes)
    assert model.name == "tiny_fcn"
    assert tuple(model.input_shape) == (None, 64, 64, 6)


# ------------------------------------------------------------ inference copy
@pytest.mark.slow
def test_inference_copy_loads_with_plain_keras_and_predicts_the_same(tmp_path):
    """The best model is saved without optimizer, loss or metrics: a process
    that never imports ClotSeg loads it in safe mode and predicts the same."""
    from clotseg.stages.train import inference_copy
    from myModels import get_loss, get_metrics

    model = build_model("resunet", (32, 32, 6), num_classes=1, **SMALL)
    model.compile(optimizer="adam", loss=get_loss("bce_dice"), metrics=get_metrics(1))
    x = _inputs(2, 32, 32, 6, seed=4)
    y = (x[..., :1] > 128).astype(np.float32)
    model.fit(x, y, epochs=1, verbose=0)   # BN statistics and weights move away from their init
    copy = inference_copy(model)
    assert not copy.compiled
    expected = np.asarray(model.predict_on_batch(x))
    np.testing.assert_allclose(np.asarray(copy.predict_on_batch(x)), expected, rtol=1e-5, atol=1e-6)
    path = tmp_path / "model.keras"
    copy.save(path)
    np.save(tmp_path / "x.npy", x)
    script = textwrap.dedent(f"""
        import sys, numpy as np, keras
        m = keras.saving.load_model({str(path)!r}, safe_mode=True)
        np.save({str(tmp_path / 'y.npy')!r}, np.asarray(m.predict_on_batch(np.load({str(tmp_path / 'x.npy')!r}))))
        assert not any(name.startswith(("clotseg", "myModels")) for name in sys.modules)
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": ""})
    assert proc.returncode == 0, proc.stderr[-2000:]
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), expected, rtol=1e-5, atol=1e-6)


def test_training_builds_its_model_with_the_dropout_kind(tmp_path, monkeypatch):
    """run_training passes DROPOUT_KIND to the registry (stopped right after the build)."""
    from clotseg.pipeline import prepare_data
    from clotseg.stages import train
    from tests.conftest import quiet, write_cohort

    s = tiny_settings(tmp_path, dropout_kind="spatial", epochs=1, target_sample_size_aug_train=16,
                      target_sample_size_aug_val=8, tune_postprocessing=False)
    write_cohort(s, n=5, clot_free=(5,))
    prepare_data(s, log=quiet, demo_if_empty=False)
    built = []

    class Built(Exception):
        pass

    def build(*args, **kwargs):
        built.append(registry.build_model(*args, **kwargs))
        raise Built

    monkeypatch.setattr(train, "build_model", build)
    with pytest.raises(Built):
        train.run_training(s, log=quiet)
    assert any(type(layer).__name__ == "SpatialDropout2D" for layer in built[0].layers)
