"""INITIAL_MODEL: training starts from a saved model's weights (transfer
learning), checked first, with one-line errors for a file that does not fit."""

import keras
import numpy as np
import pytest

from clotseg.errors import ConfigError, StageError
from clotseg.io import read_json
from clotseg.layout import BEST_MODEL, RUN_RECORD
from clotseg.pipeline import prepare_data
from clotseg.stages.train import load_initial_weights, run_training
from myModels import build_model
from tests.conftest import quiet, tiny_settings, write_cohort


def _net(s, rows=64, filters=None, channels=None):
    shape = (rows, rows, channels or s.model_input_shape[-1])
    return build_model(s.model, shape, filters or s.base_filters, s.depth, s.dropout, s.num_classes)


def _save(model, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(path)
    return path


def _weights(model):
    return [np.asarray(w) for w in model.get_weights()]


def test_initial_model_is_checked(tmp_path):
    tiny_settings(tmp_path, initial_model="Trainings/run1").validate()
    for bad in ("", "  ", 3, True):
        with pytest.raises(ConfigError, match="INITIAL_MODEL"):
            tiny_settings(tmp_path, initial_model=bad).validate()


def test_weights_are_copied_from_a_file_or_a_run_folder_whatever_its_slice_size(tmp_path):
    s = tiny_settings(tmp_path)
    source = _net(s, rows=32)   # trained on smaller slices: the weights do not depend on rows and cols
    rng = np.random.default_rng(0)
    source.set_weights([rng.normal(size=w.shape).astype("float32") for w in source.get_weights()])
    run = tmp_path / "Trainings" / "pretrained"
    _save(source, run / BEST_MODEL)
    for given in ("Trainings/pretrained", f"Trainings/pretrained/{BEST_MODEL.as_posix()}"):
        target = _net(s)
        before = _weights(target)
        info = load_initial_weights(target, s.replace(initial_model=given), log=quiet)
        for got, want in zip(_weights(target), _weights(source)):
            np.testing.assert_array_equal(got, want)
        assert any(not np.array_equal(a, b) for a, b in zip(before, _weights(target)))
        assert info["path"] == str(run / BEST_MODEL) and len(info["sha256"]) == 64
        assert info["layers"] == sum(1 for layer in source.layers if layer.weights)


@pytest.mark.parametrize("change, message", [
    ({"filters": 4}, "does not fit this run's network: its layer"),
    ({"channels": 3}, "takes 3 input channels, this run 2"),
])
def test_a_model_of_another_shape_is_one_line_naming_the_file(tmp_path, change, message):
    s = tiny_settings(tmp_path)
    path = _save(_net(s, **change), tmp_path / "other.keras")
    target = _net(s)
    before = _weights(target)
    with pytest.raises(StageError, match=message) as err:
        load_initial_weights(target, s.replace(initial_model="other.keras"), log=quiet)
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    if "channels" in change:  # refused before anything was copied
        for got, old in zip(_weights(target), before):
            np.testing.assert_array_equal(got, old)


def test_a_missing_or_broken_file_is_one_line(tmp_path):
    s = tiny_settings(tmp_path)
    with pytest.raises(StageError, match="missing.keras"):
        load_initial_weights(_net(s), s.replace(initial_model="missing.keras"), log=quiet)
    (tmp_path / "broken.keras").write_bytes(b"not a zip")
    with pytest.raises(StageError, match="broken.keras"):
        load_initial_weights(_net(s), s.replace(initial_model="broken.keras"), log=quiet)


@pytest.mark.slow
def test_training_starts_from_the_initial_model_and_records_it(tmp_path):
    s = tiny_settings(tmp_path, epochs=1, target_sample_size_aug_train=16, target_sample_size_aug_val=8,
                      tune_postprocessing=False, learning_rate=1e-9, warmup_epochs=0, dropout=0.0)
    write_cohort(s, n=6, clot_free=(6,))
    prepare_data(s, log=quiet, demo_if_empty=False)
    source = _net(s)
    rng = np.random.default_rng(1)
    source.set_weights([rng.normal(scale=0.05, size=w.shape).astype("float32") for w in source.get_weights()])
    path = _save(source, tmp_path / "start.keras")
    run = run_training(s.replace(initial_model="start.keras"), log=quiet)
    record = read_json(run / RUN_RECORD)
    assert record["initial_model"]["path"] == str(path)
    best = keras.models.load_model(run / BEST_MODEL, safe_mode=True, compile=False)
    # a learning rate of 1e-9: the convolutions are the source's (batch statistics move; kernels barely)
    conv = next(layer.name for layer in source.layers if isinstance(layer, keras.layers.Conv2D))
    np.testing.assert_allclose(best.get_layer(conv).get_weights()[0], source.get_layer(conv).get_weights()[0],
                               atol=1e-5)


def test_a_model_that_does_not_fit_leaves_no_run_folder(tmp_path):
    s = tiny_settings(tmp_path, epochs=1, target_sample_size_aug_train=16, target_sample_size_aug_val=8,
                      tune_postprocessing=False)
    write_cohort(s, n=6, clot_free=(6,))
    prepare_data(s, log=quiet, demo_if_empty=False)
    _save(_net(s, filters=4), tmp_path / "other.keras")
    with pytest.raises(StageError, match="other.keras"):
        run_training(s.replace(initial_model="other.keras"), log=quiet)
    assert not s.trainings_path.exists() or not any(s.trainings_path.iterdir())
