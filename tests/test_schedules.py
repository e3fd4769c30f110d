"""Learning-rate schedules (LR_SCHEDULE, WARMUP_EPOCHS) and the wall-clock
budget (MAX_TRAINING_MINUTES)."""

import keras
import numpy as np
import pytest

from clotseg.errors import ConfigError
from clotseg import schedules as schedules_module
from clotseg.schedules import BudgetedSchedule, TimeBudget, learning_rate, schedule_value
from tests.conftest import tiny_settings

LR = 2e-3


def _lr_at(schedule, step) -> float:
    return float(keras.ops.convert_to_numpy(schedule(step)))


def _curve(schedule, total):
    return np.array([_lr_at(schedule, s) for s in range(total + 1)])


def test_cosine_warms_up_linearly_then_decays_to_one_percent(tmp_path):
    s = tiny_settings(tmp_path, lr_schedule="cosine", learning_rate=LR, warmup_epochs=2, epochs=10)
    steps = 5
    sched = learning_rate(s, steps)
    total, warm = 10 * steps, 2 * steps
    lr = _curve(sched, total)
    assert lr[0] == pytest.approx(0.01 * LR, rel=1e-3)          # warm-up starts at 1% of LEARNING_RATE
    assert lr[warm] == pytest.approx(LR, rel=1e-4)               # and reaches it after WARMUP_EPOCHS
    # linear warm-up: equal increments
    np.testing.assert_allclose(np.diff(lr[:warm + 1]), (LR - 0.01 * LR) / warm, rtol=1e-3)
    assert lr[:warm + 1].max() == pytest.approx(LR, rel=1e-4)
    # then a monotone cosine decay to 1% at the end of the step budget
    assert np.all(np.diff(lr[warm:]) <= 1e-12)
    assert lr[total] == pytest.approx(0.01 * LR, rel=1e-3)
    mid = warm + (total - warm) // 2
    # cosine: half-way through the decay the rate is half-way between the peak and the floor
    assert lr[mid] == pytest.approx(0.01 * LR + 0.99 * LR * 0.5, rel=1e-2)
    assert lr.max() <= LR * (1 + 1e-6)


def test_cosine_without_warmup_starts_at_the_full_rate(tmp_path):
    s = tiny_settings(tmp_path, lr_schedule="cosine", learning_rate=LR, warmup_epochs=0, epochs=4)
    sched = learning_rate(s, 3)
    lr = _curve(sched, 12)
    assert lr[0] == pytest.approx(LR, rel=1e-5)
    assert np.all(np.diff(lr) <= 1e-12)
    assert lr[-1] == pytest.approx(0.01 * LR, rel=1e-3)


def test_cosine_with_warmup_longer_than_training_still_peaks_and_stays_positive(tmp_path):
    s = tiny_settings(tmp_path, lr_schedule="cosine", learning_rate=LR, warmup_epochs=5, epochs=2)
    sched = learning_rate(s, 4)    # 8 steps in all, warm-up clipped to 7
    lr = _curve(sched, 8)
    assert np.all(lr > 0) and np.all(np.isfinite(lr))
    assert lr.max() == pytest.approx(LR, rel=1e-3)
    assert lr[0] < 0.05 * LR


def test_poly_decays_from_the_full_rate_to_zero(tmp_path):
    s = tiny_settings(tmp_path, lr_schedule="poly", learning_rate=LR, epochs=8)
    steps = 10
    sched = learning_rate(s, steps)
    total = 8 * steps
    lr = _curve(sched, total)
    assert lr[0] == pytest.approx(LR, rel=1e-6)
    assert lr[total] == pytest.approx(0.0, abs=1e-9)
    assert np.all(np.diff(lr) < 0)
    # nnU-Net's poly schedule: lr * (1 - t / T) ** 0.9
    assert lr[total // 2] == pytest.approx(LR * 0.5 ** 0.9, rel=1e-4)
    assert lr[total // 4] == pytest.approx(LR * 0.75 ** 0.9, rel=1e-4)


def test_plateau_is_a_plain_float(tmp_path):
    s = tiny_settings(tmp_path, lr_schedule="plateau", learning_rate=LR)
    value = learning_rate(s, 7)
    assert isinstance(value, float) and value == LR


def test_schedule_spans_the_whole_step_budget(tmp_path):
    """Twice the steps per epoch stretches the schedule over twice the steps."""
    s = tiny_settings(tmp_path, lr_schedule="cosine", learning_rate=LR, warmup_epochs=1, epochs=6)
    a, b = learning_rate(s, 5), learning_rate(s, 10)
    for step in (0, 3, 5, 17, 30):
        assert _lr_at(a, step) == pytest.approx(_lr_at(b, 2 * step), rel=1e-4)


@pytest.mark.parametrize("name,value,message", [
    ("lr_schedule", "step", "LR_SCHEDULE must be one of"),
    ("warmup_epochs", -1, "WARMUP_EPOCHS must be a non-negative integer"),
    ("warmup_epochs", 1.5, "WARMUP_EPOCHS must be a non-negative integer"),
    ("max_training_minutes", 0, "MAX_TRAINING_MINUTES must be None or a positive number"),
    ("max_training_minutes", "ten", "MAX_TRAINING_MINUTES must be None or a positive number"),
])
def test_schedule_settings_are_validated(tmp_path, name, value, message):
    with pytest.raises(ConfigError, match=message):
        tiny_settings(tmp_path, **{name: value})


# -------------------------------------------------------------- time budget
class FakeClock:
    """time.monotonic stand-in: advances `step` seconds per call."""

    def __init__(self, step, start=1000.0):
        self.now, self.step = start - step, step

    def monotonic(self):
        self.now += self.step
        return self.now


class _Model:
    stop_training = False


def test_time_budget_stops_before_the_epoch_that_would_cross_it(monkeypatch):
    # 10 s epochs, 1 minute: after epoch 6 (60 s) one more would end at 70 s
    monkeypatch.setattr(schedules_module, "time", FakeClock(step=10.0))
    budget = TimeBudget(1.0)
    model = _Model()
    budget.set_model(model)
    budget.on_train_begin()
    stopped_after = None
    for epoch in range(20):
        budget.on_epoch_end(epoch)
        if model.stop_training:
            stopped_after = epoch + 1
            break
    assert stopped_after == 6
    assert budget.stopped_epoch == 6


def test_time_budget_uses_the_mean_epoch_time(monkeypatch):
    # epochs of 5, 5, 35 s: after the third (45 s) the mean (15 s) predicts 60 s, still within 61 s ...
    times = iter([0.0, 5.0, 10.0, 45.0, 70.0])

    class Clock:
        @staticmethod
        def monotonic():
            return next(times)

    monkeypatch.setattr(schedules_module, "time", Clock)
    budget = TimeBudget(61 / 60)
    model = _Model()
    budget.set_model(model)
    budget.on_train_begin()
    for epoch in range(3):
        budget.on_epoch_end(epoch)
        assert not model.stop_training, epoch
    budget.on_epoch_end(3)   # ... after the fourth (70 s) the budget is already spent
    assert model.stop_training and budget.stopped_epoch == 4


def test_generous_time_budget_never_stops(monkeypatch):
    monkeypatch.setattr(schedules_module, "time", FakeClock(step=1.0))
    budget = TimeBudget(10.0)
    model = _Model()
    budget.set_model(model)
    budget.on_train_begin()
    for epoch in range(50):
        budget.on_epoch_end(epoch)
    assert not model.stop_training and budget.stopped_epoch == 0


def _tiny_model():
    inputs = keras.Input((8, 8, 2))
    out = keras.layers.Conv2D(1, 3, padding="same", activation="sigmoid")(inputs)
    return keras.Model(inputs, out)


def _data():
    rng = np.random.default_rng(0)
    x = rng.random((16, 8, 8, 2)).astype(np.float32)
    return x, (x[..., :1] > 0.5).astype(np.float32)


@pytest.mark.slow
def test_time_budget_ends_fit_early(monkeypatch):
    """25 s per epoch on a fake clock, a 1-minute budget: fit stops after 2
    of 10 epochs (a third would end at 75 s)."""
    monkeypatch.setattr(schedules_module, "time", FakeClock(step=25.0))
    keras.utils.set_random_seed(0)
    model = _tiny_model()
    model.compile(optimizer="adam", loss="binary_crossentropy")
    budget = TimeBudget(1.0)
    x, y = _data()
    history = model.fit(x, y, batch_size=8, epochs=10, callbacks=[budget], verbose=0)
    assert len(history.history["loss"]) == 2
    assert budget.stopped_epoch == 2


@pytest.mark.slow
def test_schedule_follows_the_optimizer_steps_and_survives_save_load(tmp_path):
    """The optimizer's rate is the schedule at its step counter, and a saved
    checkpoint carries both, so a resumed run continues the schedule."""
    s = tiny_settings(tmp_path, lr_schedule="cosine", learning_rate=LR, warmup_epochs=1, epochs=4)
    steps = 2
    sched = learning_rate(s, steps)
    keras.utils.set_random_seed(0)
    model = _tiny_model()
    model.compile(optimizer=keras.optimizers.Adam(sched), loss="binary_crossentropy")
    x, y = _data()
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)     # 2 steps: the warm-up is over
    iterations = int(keras.ops.convert_to_numpy(model.optimizer.iterations))
    assert iterations == steps
    current = float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))
    assert current == pytest.approx(LR, rel=1e-4)
    model.save(tmp_path / "last.keras")
    loaded = keras.saving.load_model(tmp_path / "last.keras")
    assert int(keras.ops.convert_to_numpy(loaded.optimizer.iterations)) == steps
    loaded.fit(x, y, batch_size=8, epochs=2, initial_epoch=1, verbose=0)
    assert int(keras.ops.convert_to_numpy(loaded.optimizer.iterations)) == 2 * steps
    assert float(keras.ops.convert_to_numpy(loaded.optimizer.learning_rate)) == pytest.approx(
        _lr_at(sched, 2 * steps), rel=1e-4)
    assert _lr_at(sched, 2 * steps) < LR


# ---------------------------------------------- schedule over the time budget
@pytest.mark.parametrize("kind,warmup_epochs", [("cosine", 2), ("cosine", 0), ("poly", 0)])
def test_schedule_value_is_the_keras_schedule(tmp_path, kind, warmup_epochs):
    """The host-side formula BudgetedSchedule uses is Keras' own schedule."""
    s = tiny_settings(tmp_path, lr_schedule=kind, learning_rate=LR, warmup_epochs=warmup_epochs, epochs=6)
    steps = 5
    sched = learning_rate(s, steps)
    for step in range(0, 6 * steps + 1, 3):
        assert schedule_value(kind, LR, step, 6 * steps, warmup_epochs * steps) == pytest.approx(
            _lr_at(sched, step), rel=1e-4, abs=1e-9)


def test_with_a_budget_the_optimizer_gets_a_plain_rate(tmp_path):
    s = tiny_settings(tmp_path, lr_schedule="cosine", learning_rate=LR, warmup_epochs=1, epochs=10,
                      max_training_minutes=5)
    assert learning_rate(s, 4) == pytest.approx(0.01 * LR)        # the warm-up's first rate
    s = tiny_settings(tmp_path, lr_schedule="plateau", learning_rate=LR, max_training_minutes=5)
    assert learning_rate(s, 4) == LR


class _Optimizer:
    def __init__(self, iterations=0):
        self.iterations, self.learning_rate = iterations, None


class _FitModel:
    def __init__(self, iterations=0):
        self.stop_training, self.optimizer = False, _Optimizer(iterations)


def _simulate(monkeypatch, epochs, steps, epoch_seconds, minutes, warmup_epochs=1, kind="cosine",
              initial_epoch=0):
    """Drive TimeBudget + BudgetedSchedule as model.fit would; return the
    rate of every batch and the schedule."""
    clock = {"now": 0.0}
    monkeypatch.setattr(schedules_module, "time", type("Clock", (), {"monotonic": staticmethod(lambda: clock["now"])}))
    budget = TimeBudget(minutes)
    schedule = BudgetedSchedule(kind, LR, epochs, steps, warmup_epochs, budget, initial_epoch)
    model = _FitModel(initial_epoch * steps)
    callbacks = [schedule, budget]        # the schedule first: the order must not matter
    for cb in callbacks:
        cb.set_model(model)
        cb.on_train_begin()
    rates = []
    for epoch in range(initial_epoch, epochs):
        for cb in callbacks:
            cb.on_epoch_begin(epoch)
        for batch in range(steps):
            schedule.on_train_batch_begin(batch)
            rates.append(model.optimizer.learning_rate)
            schedule.on_train_batch_end(batch)
            clock["now"] += epoch_seconds / steps
        for cb in callbacks:
            cb.on_epoch_end(epoch)
        if model.stop_training:
            break
    return np.array(rates), schedule, budget


def test_budgeted_cosine_ends_its_decay_where_the_budget_ends(monkeypatch):
    # 10 s epochs, a 1-minute budget, EPOCHS 20: 6 epochs fit, and the rate
    # reaches its floor there instead of stopping near the top of a 20-epoch curve
    rates, schedule, budget = _simulate(monkeypatch, epochs=20, steps=4, epoch_seconds=10.0, minutes=1.0)
    assert budget.stopped_epoch == 6 and len(rates) == 24
    assert schedule.horizon_epochs == 6
    assert rates[0] == pytest.approx(0.01 * LR)                       # warm-up
    assert rates[4] == pytest.approx(LR, rel=1e-6)                    # peak after WARMUP_EPOCHS
    assert np.all(np.diff(rates[4:]) < 0)                             # then a monotone decay ...
    assert rates[-1] == pytest.approx(schedule_value("cosine", LR, 23, 24, 4))
    assert rates[-1] < 0.02 * LR                                      # ... to the floor at the end
    unbudgeted_last = schedule_value("cosine", LR, 23, 20 * 4, 4)     # what EPOCHS alone would give
    assert unbudgeted_last > 0.8 * LR


def test_budgeted_schedule_never_runs_past_epochs(monkeypatch):
    # a generous budget: the horizon stays EPOCHS, the curve is the plain one
    rates, schedule, budget = _simulate(monkeypatch, epochs=5, steps=3, epoch_seconds=1.0, minutes=10.0,
                                        kind="poly", warmup_epochs=0)
    assert budget.stopped_epoch == 0 and schedule.horizon_epochs == 5
    np.testing.assert_allclose(rates, [schedule_value("poly", LR, k, 15) for k in range(15)], rtol=1e-9)


def test_budgeted_schedule_continues_a_resumed_run(monkeypatch):
    # resumed at epoch 3 with 30 s left at 10 s per epoch: the curve picks up at step 3 * 4
    # and ends after epoch 6
    rates, schedule, budget = _simulate(monkeypatch, epochs=20, steps=4, epoch_seconds=10.0, minutes=0.5,
                                        initial_epoch=3)
    assert budget.stopped_epoch == 6 and schedule.horizon_epochs == 6
    assert rates[0] == pytest.approx(schedule_value("cosine", LR, 12, 20 * 4, 4))   # horizon unknown yet
    assert rates[-1] == pytest.approx(schedule_value("cosine", LR, 23, 24, 4))


@pytest.mark.slow
def test_budgeted_schedule_sets_the_rate_in_fit(tmp_path):
    """Through a real model.fit on this backend: the optimizer ends at the
    schedule's rate of its last step."""
    keras.utils.set_random_seed(0)
    model = _tiny_model()
    model.compile(optimizer=keras.optimizers.Adam(0.01 * LR), loss="binary_crossentropy")
    budget = TimeBudget(10.0)
    schedule = BudgetedSchedule("cosine", LR, 3, 2, 1, budget)
    x, y = _data()
    model.fit(x, y, batch_size=8, epochs=3, callbacks=[budget, schedule], verbose=0)
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == 6
    assert float(keras.ops.convert_to_numpy(model.optimizer.learning_rate)) == pytest.approx(
        schedule_value("cosine", LR, 5, 6, 2), rel=1e-5)
