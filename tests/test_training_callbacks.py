"""Resume support of the plateau callbacks: Keras resets their counters at
on_train_begin; ClotSeg's versions must restore a killed run's state."""

from clotseg.stages.train import ResumableEarlyStopping, ResumableReduceLROnPlateau


def test_early_stopping_counters_survive_train_begin():
    cb = ResumableEarlyStopping(initial_state={"wait": 3, "best": 0.7}, monitor="val_dice", mode="max", patience=5)
    cb.on_train_begin()
    assert cb.wait == 3 and cb.best == 0.7
    assert cb.counters() == {"wait": 3, "best": 0.7}
    fresh = ResumableEarlyStopping(monitor="val_dice", mode="max", patience=5)
    fresh.on_train_begin()
    assert fresh.wait == 0


def test_reduce_lr_counters_survive_train_begin():
    cb = ResumableReduceLROnPlateau(initial_state={"wait": 2, "best": 0.5, "cooldown": 1},
                                    monitor="val_dice", mode="max", patience=4)
    cb.on_train_begin()
    assert (cb.wait, cb.best, cb.cooldown_counter) == (2, 0.5, 1)
    assert cb.counters() == {"wait": 2, "best": 0.5, "cooldown": 1}
