"""Learning-rate schedules (LR_SCHEDULE) and the wall-clock budget
(MAX_TRAINING_MINUTES) of the training stage.

Without a budget, "cosine" and "poly" are Keras schedule objects over the
step budget EPOCHS * steps_per_epoch, owned by the optimizer (its step
counter, saved in every checkpoint, drives them).

With a budget, training usually ends before EPOCHS: on the 2-core benchmark
machine 19 of 24 epochs fit in 20 minutes, and on a slower machine the demo
may stop half-way. A schedule over EPOCHS would then stop at a learning rate
far above its floor, and the last epochs, which should fine-tune at a small
rate, never happen. So with a budget the optimizer holds a plain rate and
`BudgetedSchedule` sets it before every batch from the same formula, over
the epochs that `TimeBudget` expects to fit (re-estimated after every
epoch, never more than EPOCHS): the decay ends where the budget ends.
"""

from __future__ import annotations

import math
import time

from clotseg.quiet import load_backend

keras = load_backend()

FLOOR = 0.01           # cosine ends at 1% of LEARNING_RATE (and warm-up starts there)
POLY_POWER = 0.9       # nnU-Net's polynomial decay


def schedule_value(kind: str, lr: float, step: int, total_steps: int, warmup_steps: int = 0) -> float:
    """The learning rate at optimizer step `step` of `total_steps`.

    "cosine": linear warm-up from FLOOR * lr to lr over `warmup_steps`, then
    cosine decay to FLOOR * lr at `total_steps` (Keras' CosineDecay with
    alpha = FLOOR); "poly": lr * (1 - step / total) ** 0.9 (Keras'
    PolynomialDecay to 0). Steps past the end stay at the final value.
    """
    total = max(1, int(total_steps))
    step = min(max(int(step), 0), total)
    if kind == "poly":
        return lr * (1.0 - step / total) ** POLY_POWER
    if kind != "cosine":
        raise ValueError(f"no budgeted form of LR_SCHEDULE {kind!r}")
    warmup = min(max(int(warmup_steps), 0), total - 1)
    if warmup and step < warmup:
        return lr * FLOOR + (lr - lr * FLOOR) * step / warmup
    t = (step - warmup) / max(1, total - warmup)
    return lr * ((1.0 - FLOOR) * 0.5 * (1.0 + math.cos(math.pi * t)) + FLOOR)


def learning_rate(settings, steps_per_epoch: int):
    """The optimizer's learning rate for LR_SCHEDULE.

    A float for "plateau" (ReduceLROnPlateau changes it) and, with
    MAX_TRAINING_MINUTES, for "cosine" / "poly" too (`BudgetedSchedule`
    sets it every batch); otherwise a Keras schedule over the step budget
    EPOCHS * steps_per_epoch, a function of the optimizer's step counter,
    which the checkpoint keeps, so a resumed run continues it.
    """
    lr = float(settings.learning_rate)
    if budgeted(settings):
        return schedule_value(settings.lr_schedule, lr, 0, settings.epochs * steps_per_epoch,
                              settings.warmup_epochs * steps_per_epoch)
    total = max(1, settings.epochs * steps_per_epoch)
    if settings.lr_schedule == "cosine":
        warmup = min(settings.warmup_epochs * steps_per_epoch, total - 1)
        return keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=lr * FLOOR if warmup else lr, decay_steps=total - warmup, alpha=FLOOR,
            warmup_target=lr if warmup else None, warmup_steps=warmup)
    if settings.lr_schedule == "poly":
        return keras.optimizers.schedules.PolynomialDecay(lr, decay_steps=total, end_learning_rate=0.0,
                                                          power=POLY_POWER)
    return lr


def budgeted(settings) -> bool:
    """Whether the schedule follows the wall-clock budget (see the module docstring)."""
    return bool(settings.max_training_minutes) and settings.lr_schedule in ("cosine", "poly")


class TimeBudget(keras.callbacks.Callback):
    """Stops training after the epoch at which one more epoch would cross
    `minutes` of wall-clock time (MAX_TRAINING_MINUTES), judged by the mean
    epoch time of this session (first epoch, with its compilation, included)."""

    def __init__(self, minutes: float):
        super().__init__()
        self.seconds = 60.0 * float(minutes)
        self.stopped_epoch = 0
        self.epochs_run = 0

    def on_train_begin(self, logs=None):
        self.start, self.epochs_run = time.monotonic(), 0

    def _elapsed_and_mean(self) -> tuple[float, float]:
        elapsed = time.monotonic() - self.start
        return elapsed, elapsed / self.epochs_run

    def expected_epochs(self) -> int | None:
        """Epochs this session will run at the mean epoch time so far (None
        before the first epoch ends): the stopping rule below, solved."""
        if not self.epochs_run:
            return None
        _, mean = self._elapsed_and_mean()
        return max(self.epochs_run, int(self.seconds // max(mean, 1e-9)))

    def on_epoch_end(self, epoch, logs=None):
        self.epochs_run += 1
        elapsed, mean = self._elapsed_and_mean()
        if elapsed + mean > self.seconds:
            self.model.stop_training = True
            self.stopped_epoch = epoch + 1


class BudgetedSchedule(keras.callbacks.Callback):
    """Sets the optimizer's rate before every batch: `schedule_value` at the
    optimizer's step, over `horizon_epochs` = min(EPOCHS, initial_epoch +
    the epochs `budget` expects to fit), re-estimated after every epoch.

    Until the first epoch ends the horizon is EPOCHS; the warm-up (one
    epoch by default) covers that time. `horizon_epochs` is final when fit
    returns. The optimizer's step counter is in every checkpoint, so a
    resumed run continues the curve.
    """

    def __init__(self, kind: str, learning_rate: float, epochs: int, steps_per_epoch: int,
                 warmup_epochs: int, budget: TimeBudget, initial_epoch: int = 0):
        super().__init__()
        self.kind, self.lr = kind, float(learning_rate)
        self.epochs, self.steps_per_epoch = int(epochs), int(steps_per_epoch)
        self.warmup_steps = int(warmup_epochs) * self.steps_per_epoch
        self.budget, self.initial_epoch = budget, int(initial_epoch)
        self.horizon_epochs = self.epochs

    def on_epoch_begin(self, epoch, logs=None):
        # at the start of the next epoch, so the budget has counted the last one whatever
        # the order of the callbacks
        fit = self.budget.expected_epochs()
        if fit is not None:
            self.horizon_epochs = max(1, min(self.epochs, self.initial_epoch + fit))

    def on_train_begin(self, logs=None):
        # read the step counter once (a device sync); count batches on the host after that
        self.step = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))

    def on_train_batch_begin(self, batch, logs=None):
        self.model.optimizer.learning_rate = schedule_value(
            self.kind, self.lr, self.step, self.horizon_epochs * self.steps_per_epoch, self.warmup_steps)

    def on_train_batch_end(self, batch, logs=None):
        self.step += 1
