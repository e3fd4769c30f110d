"""EMA_MOMENTUM: the exponential moving average of the weights is what is
validated, drawn and saved as the best model; the resumable checkpoint keeps
the raw weights and the averages."""

import keras
import numpy as np
import pytest

from clotseg.errors import ConfigError
from clotseg.io import atomic_write_json, read_json
from clotseg.layout import BEST_MODEL, LAST_CHECKPOINT, RUN_STATE
from clotseg.pipeline import prepare_data
from clotseg.stages.train import averaged_weights, run_training
from tests.conftest import quiet, tiny_settings, write_cohort


def test_ema_momentum_is_checked(tmp_path):
    tiny_settings(tmp_path, ema_momentum=0.99).validate()
    tiny_settings(tmp_path, ema_momentum=None).validate()
    for bad in (0, 1, 1.5, "0.99", True):
        with pytest.raises(ConfigError, match="EMA_MOMENTUM"):
            tiny_settings(tmp_path, ema_momentum=bad).validate()


def _weights(model):
    return [keras.ops.convert_to_numpy(v).copy() for v in model.trainable_variables]


def test_averaged_weights_are_the_moving_average_and_the_own_weights_come_back():
    m = 0.75
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer=keras.optimizers.SGD(0.1, use_ema=True, ema_momentum=m), loss="mse")
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(8, 3)).astype("float32"), rng.normal(size=(8, 2)).astype("float32")
    seen = []
    for batch in (slice(0, 4), slice(4, 8)):
        model.train_on_batch(x[batch], y[batch])
        seen.append(_weights(model))
    w1, w2 = seen
    with averaged_weights(model):
        inside = _weights(model)
    # the first step's average is its weights; then m * average + (1 - m) * weights
    for got, a, b in zip(inside, w1, w2):
        np.testing.assert_allclose(got, m * a + (1 - m) * b, rtol=1e-5, atol=1e-6)
    for got, own in zip(_weights(model), w2):
        np.testing.assert_array_equal(got, own)
    assert not np.allclose(inside[0], w2[0])


def test_without_averaging_the_model_is_left_as_is():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer="adam", loss="mse")
    before = _weights(model)
    with averaged_weights(model) as same:
        assert same is model
        for got, own in zip(_weights(model), before):
            np.testing.assert_array_equal(got, own)


@pytest.mark.slow
def test_training_with_ema_saves_the_averaged_model_and_a_resumable_checkpoint(tmp_path):
    s = tiny_settings(tmp_path, ema_momentum=0.5, epochs=1, target_sample_size_aug_train=32,
                      target_sample_size_aug_val=8, tune_postprocessing=False)
    write_cohort(s, n=6, clot_free=(6,))
    prepare_data(s, log=quiet, demo_if_empty=False)
    run = run_training(s, log=quiet)
    best = keras.models.load_model(run / BEST_MODEL, safe_mode=True, compile=False)
    last = keras.models.load_model(run / LAST_CHECKPOINT, safe_mode=True)
    assert last.optimizer.use_ema and last.optimizer.ema_momentum == pytest.approx(0.5)
    raw = {v.path: keras.ops.convert_to_numpy(v) for v in last.trainable_variables}
    with averaged_weights(last):
        averaged = {v.path: keras.ops.convert_to_numpy(v) for v in last.trainable_variables}
    saved = {v.path: keras.ops.convert_to_numpy(v) for v in best.trainable_variables}
    assert saved.keys() == averaged.keys()
    for path, value in saved.items():  # one epoch: the best model is the last epoch's average
        np.testing.assert_allclose(value, averaged[path], rtol=1e-6, atol=1e-7)
    assert any(not np.allclose(saved[p], raw[p]) for p in saved)


@pytest.mark.slow
def test_a_killed_ema_run_resumes_averaging_and_saves_the_average(tmp_path, monkeypatch):
    from clotseg.stages import train

    s = tiny_settings(tmp_path, ema_momentum=0.5, epochs=2, target_sample_size_aug_train=32,
                      target_sample_size_aug_val=8, tune_postprocessing=False)
    write_cohort(s, n=6, clot_free=(6,))
    prepare_data(s, log=quiet, demo_if_empty=False)

    def killed(self, epoch, logs=None):  # after the first epoch's checkpoint, as a kill would
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(train.CurvesPlotter, "on_epoch_end", killed)
        with pytest.raises(KeyboardInterrupt):
            run_training(s, log=quiet)
    (run,) = list(s.trainings_path.iterdir())
    state = read_json(run / RUN_STATE)
    assert state["epochs_done"] == 1
    # a tiny run's validation Dice is ~0 every epoch: let the second epoch's count as better
    atomic_write_json(run / RUN_STATE, {**state, "best_val_dice": -1.0})
    # config.py now says no averaging: the checkpoint's optimizer decides, as the run began
    assert run_training(s.replace(ema_momentum=None), resume=True, log=quiet) == run
    state = read_json(run / RUN_STATE)
    assert state["epochs_done"] == 2
    last = keras.models.load_model(run / LAST_CHECKPOINT, safe_mode=True)
    # 32 training samples in batches of 8: 4 steps per epoch, the first epoch's counted on
    assert last.optimizer.use_ema and int(keras.ops.convert_to_numpy(last.optimizer.iterations)) == 8
    assert state["best_epoch"] == 2
    best = keras.models.load_model(run / BEST_MODEL, safe_mode=True, compile=False)
    with averaged_weights(last):  # the second epoch's average, not its raw weights
        expected = {v.path: keras.ops.convert_to_numpy(v) for v in last.trainable_variables}
    raw = {v.path: keras.ops.convert_to_numpy(v) for v in last.trainable_variables}
    for v in best.trainable_variables:
        np.testing.assert_allclose(keras.ops.convert_to_numpy(v), expected[v.path], rtol=1e-6, atol=1e-7)
    assert any(not np.allclose(expected[p], raw[p]) for p in raw)
