"""Stage 4: train the 2D U-Net on the augmented samples with `model.fit`.

Each run lives in Trainings/<timestamp>/:
    Best_Model/model.keras         best validation Dice so far
    Checkpoint_Files/last.keras    model + optimizer state after the last epoch
    Checkpoint_Files/state.json    epoch counter and callback state, for RESUME
    Relevant_Files/config.json     the settings of the run; split.json; config.py
    Predictions/epoch_NNN.png      validation slices: CTA, NCCT, truth, prediction
    history.csv, training_curves.png, run.json, logs/ (TensorBoard, TF only)
A run killed at any point resumes from its last completed epoch with the
optimizer, epoch counter, learning rate and early-stopping state intact.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

import keras
import numpy as np

from clotseg import runtime
from clotseg.errors import StageError
from clotseg.evaluation.figures import plot_training_curves, prediction_panel
from clotseg.io import atomic_write_json, atomic_write_text, read_json
from clotseg.settings import Settings
from clotseg.stages.augment import augmented_dir
from clotseg.stages.common import IMAGES, MASKS, SAMPLES, open_store, read_samples_csv
from clotseg.stages.inference import predict_samples, to_mask
from clotseg.stages.slicing import sliced_dir
from clotseg.stages.split import SPLIT_FILE
from myModels import build_unet2d, get_loss, get_metrics
from myModels.DataGeneratorUNet2D import DataGeneratorUNet2D

MONITOR = "val_dice"
N_PANEL = 4


# ---------------------------------------------------------------- run folders
def new_run_dir(settings: Settings) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run = settings.trainings_path / stamp
    n = 1
    while run.exists():  # two runs in one second
        run = settings.trainings_path / f"{stamp}-{n}"
        n += 1
    for sub in ("Best_Model", "Checkpoint_Files", "Relevant_Files", "Predictions"):
        (run / sub).mkdir(parents=True, exist_ok=True)
    return run


def list_runs(settings: Settings) -> list[Path]:
    """Run folders (with a run.json), oldest first."""
    root = settings.trainings_path
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if (p / "run.json").is_file()), key=lambda p: p.name)


def find_resumable(settings: Settings) -> Path | None:
    """Latest run that did not finish and has a last checkpoint."""
    for run in reversed(list_runs(settings)):
        record = read_json(run / "run.json")
        if record.get("status") != "finished" and (run / "Checkpoint_Files" / "state.json").is_file():
            return run
    return None


# ------------------------------------------------------------------ callbacks
class RunCheckpointer(keras.callbacks.Callback):
    """Saves the best model (by val Dice) and a resumable last checkpoint.

    Both are written to a temp file and renamed, so a kill mid-save never
    leaves a corrupt model. The state file is written after the model.
    """

    def __init__(self, run_dir: Path, best: float = -np.inf, best_epoch: int = -1, extra_state=None):
        super().__init__()
        self.run_dir = Path(run_dir)
        self.best = best
        self.best_epoch = best_epoch
        self.extra_state = extra_state or (lambda: {})

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        score = logs.get(MONITOR)
        if score is not None and score > self.best:
            self.best, self.best_epoch = float(score), epoch + 1
            _atomic_save_model(self.model, self.run_dir / "Best_Model" / "model.keras")
        _atomic_save_model(self.model, self.run_dir / "Checkpoint_Files" / "last.keras")
        state = {"epochs_done": epoch + 1, "best_val_dice": self.best, "best_epoch": self.best_epoch,
                 "learning_rate": float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)),
                 **self.extra_state()}
        atomic_write_json(self.run_dir / "Checkpoint_Files" / "state.json", state)


class _ResumableCounters:
    """Mixin: restore a plateau callback's counters after Keras resets them.

    EarlyStopping and ReduceLROnPlateau zero their `wait`/`best` (and
    cooldown) in on_train_begin, which would forget a killed run's progress.
    """

    _COUNTERS = {"wait": ("wait", int), "best": ("best", float)}

    def __init__(self, initial_state=None, **kwargs):
        super().__init__(**kwargs)
        self._initial = initial_state or {}

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        for key, (attr, cast) in self._COUNTERS.items():
            if key in self._initial:
                setattr(self, attr, cast(self._initial[key]))

    def counters(self) -> dict:
        return {key: cast(getattr(self, attr)) for key, (attr, cast) in self._COUNTERS.items()}


class ResumableEarlyStopping(_ResumableCounters, keras.callbacks.EarlyStopping):
    """EarlyStopping whose wait/best survive a resume."""


class ResumableReduceLROnPlateau(_ResumableCounters, keras.callbacks.ReduceLROnPlateau):
    """ReduceLROnPlateau whose wait/cooldown/best survive a resume."""

    _COUNTERS = {**_ResumableCounters._COUNTERS, "cooldown": ("cooldown_counter", int)}


class PredictionPanel(keras.callbacks.Callback):
    """Each epoch: a PNG of fixed validation slices (CTA, NCCT, truth, prediction)."""

    def __init__(self, images: np.ndarray, masks: np.ndarray, out_dir: Path, batch_size: int):
        super().__init__()
        self.images, self.masks, self.out_dir = images, masks, Path(out_dir)
        self.batch_size = batch_size

    def on_epoch_end(self, epoch, logs=None):
        # fixed, padded batch: a data-parallel model needs batches that split evenly
        prob = predict_samples(self.model, self.images, self.batch_size)
        pred = to_mask(prob)
        dice = (logs or {}).get(MONITOR)
        title = f"epoch {epoch + 1}" + (f"  val Dice {dice:.3f}" if dice is not None else "")
        path = self.out_dir / f"epoch_{epoch + 1:03d}.png"
        prediction_panel(self.images, self.masks, pred, path, title)
        shutil.copyfile(path, self.out_dir / "latest.png")


class CurvesPlotter(keras.callbacks.Callback):
    """Redraws training_curves.png from history.csv after every epoch."""

    def __init__(self, run_dir: Path):
        super().__init__()
        self.run_dir = Path(run_dir)

    def on_epoch_end(self, epoch, logs=None):
        history = self.run_dir / "history.csv"
        if history.is_file():
            plot_training_curves(history, self.run_dir / "training_curves.png")


def _atomic_save_model(model, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.keras")
    model.save(tmp)
    os.replace(tmp, path)


# --------------------------------------------------------------------- stage
def panel_samples(settings: Settings, n: int = N_PANEL) -> tuple[np.ndarray, np.ndarray]:
    """Fixed validation slices for the per-epoch panel: the largest clots first.

    Taken from the un-augmented validation slices, so the panel shows what
    the model will meet at test time. Returns (images (n,H,W,C) uint8,
    masks (n,H,W) uint8).
    """
    store = sliced_dir(settings, "Validation")
    images, masks = open_store(store)
    rows = read_samples_csv(store / SAMPLES)
    clot = np.array([int(r["clot_pixels"]) for r in rows])
    order = np.argsort(-clot, kind="stable")
    # one slice per case where possible, so the panel is not four neighbours
    seen, chosen = set(), []
    for i in order:
        if rows[i]["case_id"] not in seen:
            seen.add(rows[i]["case_id"])
            chosen.append(int(i))
        if len(chosen) == n:
            break
    chosen = sorted(chosen)
    return np.asarray(images[chosen]), np.asarray(masks[chosen])


def run_training(settings: Settings, resume: bool | None = None, log=print) -> Path | None:
    """Train (or resume) a model; return the run folder, or None if skipped.

    MODEL_TRAINING=False skips training. RESUME (or `resume=True`) continues
    the latest unfinished run; its own saved settings are used so the model
    and data match.
    """
    if not settings.model_training:
        log("[train] MODEL_TRAINING is False: skipping training")
        return None
    resume = settings.resume if resume is None else resume
    state, run = {}, None
    if resume:
        run = find_resumable(settings)
        if run is None:
            log("[train] RESUME requested but no unfinished run with a checkpoint was found: starting a new run")
        else:
            state = read_json(run / "Checkpoint_Files" / "state.json")
            if state["epochs_done"] >= settings.epochs:
                log(f"[train] run {run.name} already completed {state['epochs_done']} epochs")
    for cohort in ("Training", "Validation"):
        if not (augmented_dir(settings, cohort) / "manifest.json").is_file():
            raise StageError(f"no augmented {cohort} samples at {augmented_dir(settings, cohort)}; "
                             "set DATA_AUG = True (and SLICE_EXTRACT = True) and rerun")
    keras.utils.set_random_seed(settings.random_seed)
    gpus = runtime.gpu_names()
    policy = runtime.configure_precision(settings.mixed_precision, bool(gpus))
    jit = runtime.resolve_jit(settings.jit_compile)

    scope, replicas = runtime.distribution_scope(settings.distribution)
    if replicas > 1 and runtime.backend() == "tensorflow":
        # XLA over a MirroredStrategy step fails: each replica's variables
        # live on another device (TF's "tf.Variable on a different device").
        jit = False
    if settings.batch_size % replicas:
        raise StageError(f"BATCH_SIZE {settings.batch_size} must be a multiple of the {replicas} devices "
                         "that DISTRIBUTION = 'data_parallel' splits each batch over")
    if run is None:
        run = new_run_dir(settings)
        _write_relevant_files(settings, run)
        record = {"status": "running", "started": _now(), "resumed": [], **runtime.describe(),
                  "precision": policy, "jit_compile": jit, "replicas": replicas}
        with scope:  # variables must be created where the distribution places them
            model = build_unet2d(settings.input_shape, settings.base_filters, settings.depth,
                                 settings.dropout, settings.num_classes)
            model.compile(optimizer=keras.optimizers.Adam(settings.learning_rate),
                          loss=get_loss(settings.loss), metrics=get_metrics(settings.num_classes),
                          jit_compile=jit)
        initial_epoch = 0
        log(f"[train] new run {run}")
    else:
        record = read_json(run / "run.json")
        record["status"] = "running"
        record.setdefault("resumed", []).append({"at": _now(), "from_epoch": state["epochs_done"]})
        with scope:
            # safe_mode stays on: a checkpoint holding a Lambda layer is refused
            model = keras.models.load_model(run / "Checkpoint_Files" / "last.keras")
        initial_epoch = int(state["epochs_done"])
        _truncate_history(run / "history.csv", initial_epoch)
        log(f"[train] resuming run {run} from epoch {initial_epoch}")
    atomic_write_json(run / "run.json", record)

    train_gen, val_gen = (
        DataGeneratorUNet2D(augmented_dir(settings, cohort) / IMAGES, augmented_dir(settings, cohort) / MASKS,
                            batch_size=settings.batch_size, shuffle=cohort == "Training", seed=settings.random_seed,
                            num_classes=settings.num_classes, indices=_divisible(settings, cohort, replicas))
        for cohort in ("Training", "Validation"))
    # Keras' shuffling sequence must continue where the killed run stopped.
    train_gen.set_epoch(initial_epoch)

    early = ResumableEarlyStopping(initial_state=state.get("early_stopping"), monitor=MONITOR, mode="max",
                                   patience=settings.early_stopping_patience, verbose=1)
    reduce = ResumableReduceLROnPlateau(initial_state=state.get("reduce_lr"), monitor=MONITOR, mode="max",
                                        factor=0.5, patience=settings.reduce_lr_patience, min_lr=1e-6, verbose=1)
    checkpointer = RunCheckpointer(
        run, best=state.get("best_val_dice", -np.inf), best_epoch=state.get("best_epoch", -1),
        extra_state=lambda: {"early_stopping": early.counters(), "reduce_lr": reduce.counters()})
    panel_images, panel_masks = panel_samples(settings)
    callbacks = [
        keras.callbacks.CSVLogger(str(run / "history.csv"), append=initial_epoch > 0),
        early, reduce, checkpointer,
        PredictionPanel(panel_images, panel_masks, run / "Predictions", settings.batch_size),
        CurvesPlotter(run),
    ]
    if runtime.tensorboard_available():
        callbacks.append(keras.callbacks.TensorBoard(log_dir=str(run / "logs")))
    log(f"[train] backend {runtime.backend()}, device {record['device']}, precision {policy}, "
        f"XLA {'on' if jit else 'off'}, {replicas} replica(s), {len(train_gen)} batches of {settings.batch_size} "
        "per epoch")
    if initial_epoch < settings.epochs and not state.get("stopped_early"):
        history = model.fit(train_gen, validation_data=val_gen, epochs=settings.epochs,
                            initial_epoch=initial_epoch, callbacks=callbacks, verbose=1)
        stopped_early = early.stopped_epoch > 0
        if stopped_early:
            st = read_json(run / "Checkpoint_Files" / "state.json")
            st["stopped_early"] = True
            atomic_write_json(run / "Checkpoint_Files" / "state.json", st)
        del history
    final = read_json(run / "Checkpoint_Files" / "state.json")
    record.update(status="finished", finished=_now(), epochs_done=final["epochs_done"],
                  best_val_dice=final["best_val_dice"], best_epoch=final["best_epoch"])
    atomic_write_json(run / "run.json", record)
    log(f"[train] finished: best validation Dice {final['best_val_dice']:.4f} at epoch {final['best_epoch']}; "
        f"model {run / 'Best_Model' / 'model.keras'}")
    return run


def _write_relevant_files(settings: Settings, run: Path) -> None:
    rel = run / "Relevant_Files"
    atomic_write_text(rel / "config.json", settings.to_json() + "\n")
    split = settings.processed_path / SPLIT_FILE
    if split.is_file():
        shutil.copyfile(split, rel / SPLIT_FILE)
    user_config = settings.root / "config.py"
    if user_config.is_file():
        shutil.copyfile(user_config, rel / "config.py")
    manifests = {}
    for stage in ("Sliced", "Augmented"):
        for cohort in ("Training", "Validation"):
            m = settings.processed_path / stage / cohort / "manifest.json"
            if m.is_file():
                manifests[f"{stage}/{cohort}"] = read_json(m)
    atomic_write_json(rel / "data_manifests.json", manifests)


def _divisible(settings: Settings, cohort: str, replicas: int) -> np.ndarray | None:
    """Sample indices whose count splits evenly over `replicas` devices.

    The last partial batch is kept, but data-parallel JAX must split every
    batch evenly, so with several devices up to replicas - 1 samples of the
    store are left out. None (all samples) on one device.
    """
    if replicas == 1:
        return None
    n = read_json(augmented_dir(settings, cohort) / "manifest.json")["n_samples"]
    return np.arange(n - n % replicas)


def _truncate_history(path: Path, epochs_done: int) -> None:
    """Keep the header and the first `epochs_done` rows of history.csv.

    A run killed between the CSV row and the checkpoint of an epoch would
    otherwise list that epoch twice after the resume.
    """
    if path.is_file():
        lines = path.read_text().splitlines(keepends=True)
        atomic_write_text(path, "".join(lines[:1 + epochs_done]))


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def load_run_settings(run: Path, root: Path) -> Settings:
    """The settings a run was trained with (paths resolved against `root`)."""
    values = json.loads((run / "Relevant_Files" / "config.json").read_text())
    values.pop("PRESET", None)  # already applied when the run was saved
    return Settings.from_dict(values, root=root)


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use `python training.py`")
