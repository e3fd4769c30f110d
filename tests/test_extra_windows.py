"""EXTRA_WINDOWS_HU: a narrower HU window of a modality that the network derives
from its own input channels (myModels.unet2D.input_stem)."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from clotseg.errors import ConfigError
from clotseg.layout import BEST_MODEL
from clotseg.pipeline import prepare_data
from clotseg.stages.train import run_training
from myModels.registry import MODELS, build_model
from tests.conftest import quiet, tiny_settings, write_cohort

NARROW = {"NCCT": (10.0, 90.0)}


def _codes(n, h, w, c, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, c)).astype(np.float32)


def _window_stem(model):
    """The input stem's output: the rescaled channels, then the derived windows."""
    return keras.Model(model.input, model.get_layer("extra_windows_concat").output)


def test_channels_follow_modalities_context_planes_and_mirrored_planes(tmp_path):
    s = tiny_settings(tmp_path, extra_windows_hu=NARROW, context_slices=1)
    # modality-major (CTA planes 0-2, NCCT planes 3-5); NCCT 0-200 HU, the window 10-90 HU
    assert s.extra_window_channels == [(c, 2.5, -0.125) for c in (3, 4, 5)]
    both = tiny_settings(tmp_path, extra_windows_hu={"CTA": (0.0, 350.0), **NARROW}, context_slices=0,
                         symmetry_channels=True)
    # planes [CTA, NCCT], then the same mirrored [CTA, NCCT]
    assert [c for c, _, _ in both.extra_window_channels] == [0, 1, 2, 3]
    assert both.extra_window_channels[0] == (0, pytest.approx(2.0), pytest.approx(-100.0 / 350.0))
    assert tiny_settings(tmp_path).extra_window_channels == []


@pytest.mark.parametrize("value,message", [
    ({"NCCT": (-10.0, 90.0)}, r"EXTRA_WINDOWS_HU\['NCCT'\] \(-10.0, 90.0\) must lie inside the modality's "
                              r"WINDOWS_HU \(0.0, 200.0\)"),
    ({"NCCT": (10.0, 250.0)}, r"must lie inside the modality's WINDOWS_HU"),
    ({"PET": (10.0, 90.0)}, r"EXTRA_WINDOWS_HU\['PET'\] names no modality of MODALITY_PATTERNS"),
    ({"NCCT": (90.0, 10.0)}, r"EXTRA_WINDOWS_HU\['NCCT'\] must be \(low, high\) with low < high"),
    ({"NCCT": "stroke"}, r"EXTRA_WINDOWS_HU\['NCCT'\] must be \(low, high\)"),
    ([("NCCT", 10.0, 90.0)], r"EXTRA_WINDOWS_HU must be a dict"),
])
def test_bad_values_are_refused_in_one_line_each(tmp_path, value, message):
    with pytest.raises(ConfigError, match=message) as info:
        tiny_settings(tmp_path, extra_windows_hu=value)
    assert str(info.value).count("EXTRA_WINDOWS_HU") == 1


def test_a_modality_without_an_hu_window_has_none_to_narrow(tmp_path):
    with pytest.raises(ConfigError, match=r"modality 'NCCT' has no HU window in WINDOWS_HU"):
        tiny_settings(tmp_path, windows_hu={"CTA": (-100.0, 600.0), "NCCT": None}, extra_windows_hu=NARROW)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_sees_the_narrow_window_of_the_same_codes_and_reloads_in_safe_mode(tmp_path, name):
    s = tiny_settings(tmp_path, extra_windows_hu=NARROW, context_slices=1)
    extra = s.extra_window_channels
    model = build_model(name, (32, 32, 6), base_filters=4, depth=2, dropout=0.0, num_classes=1,
                        extra_windows=extra)
    x = _codes(2, 32, 32, 6)
    stem = np.asarray(_window_stem(model)(x))
    assert stem.shape == (2, 32, 32, 9)
    np.testing.assert_allclose(stem[..., :6], x / 255.0, atol=1e-6)        # the inputs pass unchanged
    ncct_hu = x[..., 3:6] / 255.0 * 200.0                                    # NCCT codes of 0-200 HU
    np.testing.assert_allclose(stem[..., 6:], np.clip((ncct_hu - 10.0) / 80.0, 0.0, 1.0), atol=1e-5)
    assert stem[..., 6:].min() == 0.0 and stem[..., 6:].max() == 1.0          # clipped at both ends
    # fixed: not among the weights training changes, but kept in the saved model
    assert not model.get_layer("extra_windows").trainable
    assert all("extra_windows" not in v.path for v in model.trainable_variables)
    model.save(tmp_path / "m.keras")
    again = keras.saving.load_model(tmp_path / "m.keras", safe_mode=True, compile=False)
    np.testing.assert_allclose(np.asarray(again.predict_on_batch(x)), np.asarray(model.predict_on_batch(x)),
                               rtol=1e-5, atol=1e-6)
    plain = build_model(name, (32, 32, 6), base_filters=4, depth=2, dropout=0.0, num_classes=1)
    assert not any(layer.name.startswith("extra_windows") for layer in plain.layers)


@pytest.mark.slow
def test_training_keeps_the_windows_fixed_into_the_saved_whole_slice_model(tmp_path):
    """Trained on patches, saved for whole slices (the inference copy is built afresh): the fixed
    window weights reach the saved model unchanged, and it reloads in safe mode."""
    s = tiny_settings(tmp_path, extra_windows_hu=NARROW, epochs=1, patch_size=(32, 32),
                      target_sample_size_aug_train=32, target_sample_size_aug_val=8, tune_postprocessing=False)
    write_cohort(s, n=6, clot_free=(6,))
    prepare_data(s, log=quiet, demo_if_empty=False)
    lines = []
    run = run_training(s, log=lines.append)
    assert any("(32, 32) patches of (64, 64, 2) + 1 channel of NCCT 10-90 HU derived in the model inputs" in line
               for line in lines)
    best = keras.models.load_model(run / BEST_MODEL, safe_mode=True, compile=False)
    assert tuple(best.input_shape[1:]) == s.model_input_shape == (64, 64, 2)
    kernel, bias = best.get_layer("extra_windows").get_weights()
    expected = np.zeros((1, 1, 2, 1), np.float32)
    expected[0, 0, 1, 0] = 2.5
    np.testing.assert_allclose(kernel, expected)
    np.testing.assert_allclose(bias, [-0.125])


@pytest.mark.parametrize("source_windows,target_windows,message", [
    (NARROW, NARROW, None),
    (NARROW, {"NCCT": (20.0, 60.0)}, "was trained with other EXTRA_WINDOWS_HU windows than config.py gives"),
    ({}, NARROW, r"does not fit this run's network: its layer 'enc0_conv1'"),
    (NARROW, {}, r"its layer 'extra_windows' .* meets no layer of that name"),
])
def test_an_initial_model_must_have_been_trained_with_the_same_windows(tmp_path, source_windows, target_windows,
                                                                         message):
    """The window weights are fixed, not learnt: starting from a model of other windows would
    silently feed the first convolution other images than the ones it learnt on."""
    from clotseg.errors import StageError
    from clotseg.stages.train import load_initial_weights

    def net(windows):
        s = tiny_settings(tmp_path, extra_windows_hu=windows)
        return s, build_model(s.model, s.model_input_shape, s.base_filters, s.depth, s.dropout, s.num_classes,
                              extra_windows=s.extra_window_channels)

    _, source = net(source_windows)
    source.save(tmp_path / "source.keras")
    s, target = net(target_windows)
    if message is None:
        load_initial_weights(target, s.replace(initial_model="source.keras"), log=quiet)
        for got, want in zip(target.get_weights(), source.get_weights()):
            np.testing.assert_array_equal(got, want)
        return
    with pytest.raises(StageError, match=message) as info:
        load_initial_weights(target, s.replace(initial_model="source.keras"), log=quiet)
    assert "source.keras" in str(info.value) and "\n" not in str(info.value)


def test_the_shipped_value_leaves_alone_a_cohort_it_does_not_apply_to(tmp_path):
    """{"CTA": (0, 200)} ships in config.py's cpu preset; the presets also serve one-channel cohorts
    and other windows: where it does not apply it gives no channel instead of an error; the same
    window written for a modality that lacks it is refused (test above)."""
    from clotseg.settings import _shipped_extra_windows_hu

    shipped = _shipped_extra_windows_hu()
    assert tiny_settings(tmp_path, extra_windows_hu=shipped, context_slices=1).extra_window_channels == [
        (c, 3.5, -0.5) for c in (0, 1, 2)]                      # CTA -100..600 HU: planes 0-2
    one_channel = tiny_settings(tmp_path, extra_windows_hu=shipped, input_shape=(64, 64, 1),
                                modality_patterns={"CT": "CS<ID>_CT.npy"}, windows_hu={"CT": (0.0, 80.0)})
    assert one_channel.extra_window_channels == [] and one_channel.applied_extra_windows == {}
    for cta_window in (None, (0.0, 150.0)):
        s = tiny_settings(tmp_path, extra_windows_hu=shipped,
                          windows_hu={"CTA": cta_window, "NCCT": (0.0, 200.0)})
        assert s.extra_window_channels == []
    # a value of the user's own is held to it
    with pytest.raises(ConfigError, match=r"EXTRA_WINDOWS_HU\['CTA'\] \(0.0, 199.0\) must lie inside"):
        tiny_settings(tmp_path, extra_windows_hu={"CTA": (0.0, 199.0)},
                      windows_hu={"CTA": (0.0, 150.0), "NCCT": (0.0, 200.0)})
