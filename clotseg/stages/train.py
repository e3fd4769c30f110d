"""Stage 4: train the 2D U-Net on the augmented samples with `model.fit`.

Each run lives in Trainings/<timestamp>/:
    Best_Model/model.keras         best validation Dice so far, saved for inference only (built-in
                                   layers, no optimizer or custom losses): plain `keras` loads it
    Checkpoint_Files/last.keras    model + optimizer state after the last epoch
    Checkpoint_Files/state.json    epoch counter and callback state, for RESUME
    Relevant_Files/config.json     the settings of the run; split.json; config.py
    Predictions/epoch_NNN.png      validation slices: CTA, NCCT, truth, prediction
    postprocessing.json            threshold, flip TTA and component filter chosen on the Validation
                                   volumes after training (clotseg.postprocessing)
    history.csv, training_curves.png, run.json, logs/ (TensorBoard, TF only)
A run killed at any point resumes from its last completed epoch with the
optimizer, epoch counter, learning rate and early-stopping state intact.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from clotseg.quiet import load_backend

keras = load_backend()  # before any other Keras import: the backend starts without C++ log lines
from clotseg import postprocessing, runtime, vessels  # noqa: E402
from clotseg.cohort import discover_cases, load_case
from clotseg.errors import StageError
from clotseg.evaluation.figures import plot_training_curves, prediction_panel
from clotseg.intensity import (add_mirror, centre_channels, modality_channels, normalise_mask, stack_context,
                               store_context_rows)
from clotseg.io import (atomic_write_json, atomic_write_text, check_keras_file, disk_full_error, is_no_space,
                        read_json, read_manifest, read_run_record, read_run_state)
from clotseg.inference import predict_samples, predict_volume_members, to_mask
from clotseg.layout import (AUGMENTED, BEST_MODEL, DATA_MANIFESTS, HISTORY, LAST_CHECKPOINT,  # noqa: F401
                            LEGACY_RUN_DEFAULTS, LOGS_DIR, MANIFEST, POSTPROCESSING_FILE, PREDICTIONS_DIR,
                            RUN_CONFIG, RUN_CONFIG_COPY, RUN_RECORD, RUN_SPLIT, RUN_STATE, RUN_SUBFOLDERS, SLICED,
                            SPLIT_FILE, TRAIN_COHORTS, TRAINING, TRAINING_CURVES, VALIDATION, augmented_dir,
                            list_runs, load_run_settings, sliced_dir, split_path)
from clotseg.settings import Settings
from clotseg.stages.common import IMAGES, MASKS, SAMPLES, open_store, read_samples_csv, store_runs
from clotseg.schedules import BudgetedSchedule, TimeBudget, budgeted, learning_rate
from myModels import build_model, deep_supervision_losses, get_loss, get_metrics
from myModels.DataGeneratorUNet2D import DataGeneratorUNet2D

MONITOR = "val_dice"
N_PANEL = 4


# ---------------------------------------------------------------- run folders
def new_run_dir(settings: Settings) -> Path:
    """Create and claim a new run folder Trainings/<YYYYmmdd-HHMMSS>[-n].

    The folder is claimed with an exclusive mkdir (it fails if the name
    exists), so two runs started in the same second never share a folder.
    """
    root = settings.trainings_path
    try:
        root.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        n = 0
        while True:
            run = root / (stamp if n == 0 else f"{stamp}-{n}")
            try:
                run.mkdir()
                break
            except FileExistsError:  # another run claimed this name first (or a file has it)
                n += 1
        for sub in RUN_SUBFOLDERS:
            (run / sub).mkdir()
    except OSError as exc:
        if is_no_space(exc):
            raise disk_full_error(root, None, "a new run folder", exc) from exc
        raise
    return run


def find_resumable(settings: Settings) -> Path | None:
    """Latest run that did not finish and has a last checkpoint.

    Every file the resume reads is checked first: run.json (of each run
    looked at), Checkpoint_Files/state.json, Relevant_Files/config.json and
    Checkpoint_Files/last.keras (complete, and of the run's input shape and
    class count), and the current settings must describe the same model
    inputs and classes, the same modalities in the same order and HU windows,
    and the same network (MODEL, BASE_FILTERS, DEPTH, NORMALIZATION, DROPOUT_KIND). Runs of
    another FOLD are passed over (their samples are another fold's). A bad
    file stops with StageError naming it.
    """
    for run in reversed(list_runs(settings)):
        record = read_run_record(run / RUN_RECORD)
        state_path = run / RUN_STATE
        if record["status"] == "finished" or not os.path.lexists(state_path):
            continue
        read_run_record(run / RUN_RECORD, required=("status", "device"))
        read_run_state(state_path)
        trained = load_run_settings(run, settings.root)
        if trained.fold != settings.fold:   # another fold's run (folds train side by side): not this one's
            continue
        check_keras_file(run / LAST_CHECKPOINT, trained.training_input_shape, trained.num_classes,
                         "the checkpoint", f"the run's settings {run / RUN_CONFIG}")
        now = (tuple(settings.model_input_shape), settings.num_classes)
        then = (tuple(trained.model_input_shape), trained.num_classes)
        if now != then:
            raise StageError(f"cannot resume run {run.name}: it was trained on inputs {then[0]} with NUM_CLASSES = "
                             f"{then[1]}, but config.py now gives inputs {now[0]} with NUM_CLASSES = {now[1]}; set "
                             "INPUT_SHAPE, CONTEXT_SLICES, SYMMETRY_CHANNELS and NUM_CLASSES back, or start a new run "
                             "(RESUME = False)")
        # the checkpoint learnt each channel as one modality in one HU window; the stores are
        # re-made from config.py, so another order or window would feed it other images
        if settings.modalities != trained.modalities:
            raise StageError(f"cannot resume run {run.name}: it was trained on modalities {trained.modalities} "
                             f"but config.py now names {settings.modalities}; set MODALITY_PATTERNS back, or "
                             "start a new run (RESUME = False)")
        # both windows are tuples or None (Settings normalises them), compared as numbers
        changed = ", ".join(f"{m} {trained.windows_hu[m]} -> {settings.windows_hu[m]}" for m in trained.modalities
                            if trained.windows_hu[m] != settings.windows_hu[m])
        if changed:
            raise StageError(f"cannot resume run {run.name}: config.py changed WINDOWS_HU ({changed}); set it back, "
                             "or start a new run (RESUME = False)")
        # the best model is exported by building config.py's network and copying the
        # checkpoint's weights into it by layer name: another network cannot take them (and
        # the resumed epochs would train the checkpoint's dropout layers, not config.py's)
        arch = ("MODEL", "BASE_FILTERS", "DEPTH", "NORMALIZATION", "DROPOUT_KIND", "EXTRA_WINDOWS_HU")
        now = tuple(getattr(settings, name.lower()) for name in arch)
        then = tuple(getattr(trained, name.lower()) for name in arch)
        if now != then:
            changed = ", ".join(f"{name} {a!r} -> {b!r}" for name, a, b in zip(arch, then, now) if a != b)
            raise StageError(f"cannot resume run {run.name}: config.py changed its network ({changed}); set "
                             "them back, or start a new run (RESUME = False)")
        return run
    return None


# ------------------------------------------------------------------ callbacks
class RunCheckpointer(keras.callbacks.Callback):
    """Saves the best model (by val Dice) and a resumable last checkpoint.

    Both are written to a temp file and renamed, so a kill mid-save never
    leaves a corrupt model. The state file is written after the model.
    """

    def __init__(self, run_dir: Path, best: float = -np.inf, best_epoch: int = -1, extra_state=None,
                 export=None):
        super().__init__()
        self.run_dir = Path(run_dir)
        self.export = export or inference_copy
        self.best = best
        self.best_epoch = best_epoch
        self.extra_state = extra_state or (lambda: {})

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        score = logs.get(MONITOR)
        if score is not None and score > self.best:
            self.best, self.best_epoch = float(score), epoch + 1
            _atomic_save_model(self.export(self.model), self.run_dir / BEST_MODEL)
        _atomic_save_model(self.model, self.run_dir / LAST_CHECKPOINT)
        state = {"epochs_done": epoch + 1, "best_val_dice": self.best, "best_epoch": self.best_epoch,
                 "learning_rate": float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)),
                 **self.extra_state()}
        atomic_write_json(self.run_dir / RUN_STATE, state)


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


def network(settings: Settings, input_shape, deep_supervision: bool = False) -> keras.Model:
    """config.py's network (MODEL and its options, from the registry) for `input_shape`: the one
    place that turns the settings into `build_model`'s arguments, so the trained model and its
    inference copy can never be built from different ones."""
    return build_model(settings.model, input_shape, settings.base_filters, settings.depth, settings.dropout,
                       settings.num_classes, deep_supervision=deep_supervision,
                       normalization=settings.normalization, dropout_kind=settings.dropout_kind,
                       extra_windows=settings.extra_window_channels)


def inference_copy(model: keras.Model, settings: Settings | None = None) -> keras.Model:
    """An uncompiled copy of `model` with its weights: saved without the
    optimizer, loss and metrics, it needs no ClotSeg class to load.

    With `settings`, the copy is built afresh at `settings.model_input_shape`:
    a model trained on patches (PATCH_SIZE, inputs (None, None, C)) is saved
    for whole slices. The networks are fully convolutional, so the weights
    do not depend on the rows and cols.
    """
    if settings is None:
        # from_config, not clone_model: a clone of a compiled model keeps its compile config
        copy = model.__class__.from_config(model.get_config())
    else:
        copy = network(settings, settings.model_input_shape)
    # by layer name: a deep-supervision model's extra heads have no counterpart in the copy
    for layer in copy.layers:
        if layer.weights:
            layer.set_weights(model.get_layer(layer.name).get_weights())
    return copy


def load_initial_weights(model: keras.Model, settings: Settings, log=print) -> dict:
    """Set `model`'s weights from INITIAL_MODEL (transfer learning); return
    what run.json records about it ({"path", "sha256", "layers"}).

    The source is checked (a complete .keras file with NUM_CLASSES outputs),
    loaded in safe mode and copied layer by layer by name, as
    `inference_copy` does: the networks are fully convolutional, so a model
    saved for 128 px slices starts a 256 px run. Every source layer with
    weights must meet a layer of the same name and weight shapes; a
    different MODEL, BASE_FILTERS, DEPTH, EXTRA_WINDOWS_HU or channel count
    stops with one line naming the file and the first layer that differs. Layers the source
    lacks (the extra heads of DEEP_SUPERVISION) keep their random start.
    """
    path = settings.initial_model_path
    what = f"INITIAL_MODEL {path}"
    check_keras_file(path, None, settings.num_classes, "INITIAL_MODEL", "NUM_CLASSES in config.py")
    try:
        source = keras.models.load_model(path, compile=False)  # safe_mode: a Lambda layer is refused
    except Exception as exc:  # noqa: BLE001 - any load failure of a user's file is one line
        raise StageError(f"{what} could not be loaded as a Keras model: {str(exc).splitlines()[0][:300]}") from exc
    channels, source_channels = model.input_shape[-1], source.input_shape[-1]
    if source_channels != channels:
        raise StageError(f"{what} takes {source_channels} input channels, this run {channels} (modalities x "
                         f"(2 CONTEXT_SLICES + 1){' x 2 for SYMMETRY_CHANNELS' if settings.symmetry_channels else ''}): "
                         "train it with the same MODALITY_PATTERNS, CONTEXT_SLICES and SYMMETRY_CHANNELS")
    targets = {layer.name: layer for layer in model.layers if layer.weights}
    copied = 0
    for layer in source.layers:
        if not layer.weights:
            continue
        target = targets.pop(layer.name, None)
        shapes = [tuple(w.shape) for w in layer.weights]
        if target is None or [tuple(w.shape) for w in target.weights] != shapes:
            found = "no layer of that name" if target is None else f"weights {[tuple(w.shape) for w in target.weights]}"
            raise StageError(f"{what} does not fit this run's network: its layer {layer.name!r} (weights {shapes}) "
                             f"meets {found}; MODEL, BASE_FILTERS, DEPTH, NORMALIZATION and EXTRA_WINDOWS_HU must "
                             "be those it was trained with")
        if layer.name == "extra_windows" and not all(
                np.allclose(a, b, atol=1e-6) for a, b in zip(layer.get_weights(), target.get_weights())):
            # fixed, not learnt: copying them would silently swap config.py's windows for the source's
            raise StageError(f"{what} was trained with other EXTRA_WINDOWS_HU windows than config.py gives; "
                             "set EXTRA_WINDOWS_HU to those it was trained with")
        target.set_weights(layer.get_weights())
        copied += 1
    if copied == 0:
        raise StageError(f"{what} holds no weights to start from")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    left = f"; {len(targets)} layer(s) it lacks keep their random start ({', '.join(sorted(targets))})" if targets else ""
    log(f"[train] starting from the weights of {path} ({copied} layers{left})")
    return {"path": str(path), "sha256": digest, "layers": copied}


@contextlib.contextmanager
def averaged_weights(model: keras.Model):
    """Inside the block, `model`'s trainable weights are the optimizer's
    exponential moving averages (EMA_MOMENTUM); its own weights come back
    after it. Without an averaging optimizer, the block sees the model as is.

    The checkpointer exports and the panel draws the averaged model, whose
    val Dice keras.callbacks.SwapEMAWeights makes the logged one; the
    resumable checkpoint keeps the raw weights and the averages (optimizer
    variables), so a resumed run goes on as if never stopped.
    """
    optimizer = getattr(model, "optimizer", None)
    if optimizer is None or not getattr(optimizer, "use_ema", False):
        yield model
        return
    own = [keras.ops.convert_to_numpy(v) for v in model.trainable_variables]
    optimizer.finalize_variable_values(model.trainable_variables)  # averages -> weights
    try:
        yield model
    finally:
        for variable, value in zip(model.trainable_variables, own):
            variable.assign(value)


class MainOutputLogs(keras.callbacks.Callback):
    """Logs of a deep-supervision model under the single-output names.

    Keras prefixes a multi-output model's metrics with the output's name
    ("probabilities_dice", "val_probabilities_dice"); the metrics are only
    computed on the main (full-size) output, so this renames them back to
    dice / val_dice, which checkpointing, early stopping, the panels and
    history.csv read. "loss" stays the weighted total; the per-output losses
    keep their names (probabilities_loss, aux1_loss, ...). Must be the first
    callback: the others receive the same logs dict after it.
    """

    def __init__(self, main_output: str):
        super().__init__()
        self.prefix = f"{main_output}_"

    def on_epoch_end(self, epoch, logs=None):
        if not logs:
            return
        for key in list(logs):
            for stage in ("", "val_"):
                full = f"{stage}{self.prefix}"
                if key.startswith(full) and not key.endswith("loss"):
                    logs[stage + key[len(full):]] = logs.pop(key)


class PredictionPanel(keras.callbacks.Callback):
    """Each epoch: a PNG of fixed validation slices (each modality, truth, prediction).

    images are the model inputs; `display_channels` picks the channels drawn
    (each modality's own slice when the inputs carry 2.5D context).
    """

    def __init__(self, images: np.ndarray, masks: np.ndarray, out_dir: Path, batch_size: int,
                 display_channels=None, names=None):
        super().__init__()
        self.images, self.masks, self.out_dir = images, masks, Path(out_dir)
        self.batch_size = batch_size
        self.display = list(display_channels) if display_channels is not None else list(range(images.shape[-1]))
        self.names = names

    def on_epoch_end(self, epoch, logs=None):
        # fixed, padded batch: a data-parallel model needs batches that split evenly
        with averaged_weights(self.model):  # the model the checkpointer saves
            prob = predict_samples(self.model, self.images, self.batch_size)
        pred = to_mask(prob)
        dice = (logs or {}).get(MONITOR)
        title = f"epoch {epoch + 1}" + (f"  val Dice {dice:.3f}" if dice is not None else "")
        path = self.out_dir / f"epoch_{epoch + 1:03d}.png"
        prediction_panel(self.images[..., self.display], self.masks, pred, path, title, names=self.names)
        shutil.copyfile(path, self.out_dir / "latest.png")


class CurvesPlotter(keras.callbacks.Callback):
    """Redraws training_curves.png from history.csv after every epoch."""

    def __init__(self, run_dir: Path):
        super().__init__()
        self.run_dir = Path(run_dir)

    def on_epoch_end(self, epoch, logs=None):
        history = self.run_dir / HISTORY
        if history.is_file():
            plot_training_curves(history, self.run_dir / TRAINING_CURVES)


def _atomic_save_model(model, path: Path) -> None:
    """Save `model` to a temp file beside `path`, then rename it into place.

    A failed save (a full disk, a kill) never leaves a half-written model
    under `path`, and the temp file is removed; a full disk becomes
    DiskFullError naming the folder and about the space the model needs.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp.keras")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        model.save(tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if _no_space(exc):
            raise disk_full_error(path.parent, _model_bytes(model), f"saving {path.name}", exc) from exc
        raise


def _no_space(exc: BaseException) -> bool:
    """ENOSPC/EDQUOT, also when a library (zipfile, h5py) wrapped or re-raised it."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if is_no_space(exc) or "No space left on device" in str(exc) or "Disk quota exceeded" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _model_bytes(model) -> int | None:
    """About what a .keras file of `model` takes: its weights and optimizer
    variables, plus the zip's config (generous)."""
    try:
        variables = list(model.weights)
        optimizer = getattr(model, "optimizer", None)
        if optimizer is not None:
            variables += list(getattr(optimizer, "variables", []))
        return int(sum(int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize for v in variables)) + 1_000_000
    except Exception:  # an estimate only: the message then says "needs more space"
        return None


# --------------------------------------------------------------------- stage
def panel_samples(settings: Settings, n: int = N_PANEL) -> tuple[np.ndarray, np.ndarray]:
    """Fixed validation slices for the per-epoch panel: the largest clots first.

    Taken from the un-augmented validation slices, so the panel shows what
    the model will meet at test time, with their 2.5D context channels.
    Returns (images (n,H,W,C') uint8, masks (n,H,W) uint8).
    """
    store = sliced_dir(settings, VALIDATION)
    images, masks = open_store(store)
    rows = read_samples_csv(store / SAMPLES)
    context = store_context_rows([r["case_id"] for r in rows], [int(r["slice"]) for r in rows],
                                 settings.context_slices, store_runs(rows))
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
    x = stack_context(np.asarray(images[context[chosen].ravel()]).reshape(
        len(chosen), context.shape[1], *images.shape[1:]))
    if settings.symmetry_channels:
        x = add_mirror(x, settings.context_slices)
    return x, np.asarray(masks[chosen])


def run_training(settings: Settings, resume: bool | None = None, log=print) -> Path | None:
    """Train (or resume) a model; return the run folder, or None if skipped.

    MODEL_TRAINING=False skips training. RESUME (or `resume=True`) continues
    the latest unfinished run from its last checkpoint, on the data config.py
    describes, which must still be the run's (inputs, modalities in their
    order, HU windows, network: `find_resumable` refuses otherwise).
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
            state = read_json(run / RUN_STATE)
            if state["epochs_done"] >= settings.epochs:
                log(f"[train] run {run.name} already completed {state['epochs_done']} epochs")
    for cohort in TRAIN_COHORTS:
        if read_manifest(augmented_dir(settings, cohort)) is None:
            raise StageError(f"no augmented {cohort} samples at {augmented_dir(settings, cohort)}; "
                             "set DATA_AUG = True (and SLICE_EXTRACT = True) and rerun")
    # each FOLD's network starts from other weights and sees its samples in another order, as
    # the members of an ensemble should (fold None or 0: RANDOM_SEED as before)
    seed = (settings.random_seed + (settings.fold or 0)) % 2**32
    keras.utils.set_random_seed(seed)
    gpus = runtime.gpu_names()
    policy = runtime.configure_precision(settings.mixed_precision, bool(gpus))
    jit = runtime.resolve_jit(settings.jit_compile, bool(gpus))

    scope, replicas = runtime.distribution_scope(settings.distribution)
    if replicas > 1 and runtime.backend() == "tensorflow":
        # XLA over a MirroredStrategy step fails: each replica's variables
        # live on another device (TF's "tf.Variable on a different device").
        jit = False
    if settings.batch_size % replicas:
        raise StageError(f"BATCH_SIZE {settings.batch_size} must be a multiple of the {replicas} devices "
                         "that DISTRIBUTION = 'data_parallel' splits each batch over")
    if run is None:
        record = {"status": "running", "started": _now(), "resumed": [], **runtime.describe(),
                  "precision": policy, "jit_compile": jit, "replicas": replicas}
        with scope:  # variables must be created where the distribution places them
            try:
                model = network(settings, settings.training_input_shape, settings.deep_supervision)
            except ValueError as exc:  # e.g. a registered model without deep supervision: a config mistake
                raise StageError(f"MODEL = {settings.model!r}: {exc}") from exc
            if settings.initial_model is not None:
                record["initial_model"] = load_initial_weights(model, settings, log)
            steps = _steps_per_epoch(settings, replicas)
            ema = ({"use_ema": True, "ema_momentum": float(settings.ema_momentum)}
                   if settings.ema_momentum is not None else {})
            model.compile(optimizer=keras.optimizers.Adam(learning_rate(settings, steps), **ema),
                          jit_compile=jit, **_loss_and_metrics(settings, len(model.outputs)))
        # the run folder only once the network stands (an INITIAL_MODEL that does not fit leaves none)
        run = new_run_dir(settings)
        _write_relevant_files(settings, run)
        initial_epoch = 0
        log(f"[train] new run {run}")
    else:
        record = read_json(run / RUN_RECORD)
        record["status"] = "running"
        record.setdefault("resumed", []).append({"at": _now(), "from_epoch": state["epochs_done"]})
        with scope:
            # safe_mode stays on: a checkpoint holding a Lambda layer is refused
            model = keras.models.load_model(run / LAST_CHECKPOINT)
        initial_epoch = int(state["epochs_done"])
        _truncate_history(run / HISTORY, initial_epoch)
        log(f"[train] resuming run {run} from epoch {initial_epoch}")
    atomic_write_json(run / RUN_RECORD, record)

    num_outputs = len(model.outputs)  # > 1: deep supervision
    train_gen, val_gen = (
        DataGeneratorUNet2D(augmented_dir(settings, cohort) / IMAGES, augmented_dir(settings, cohort) / MASKS,
                            batch_size=settings.batch_size, shuffle=cohort == TRAINING, seed=seed,
                            num_classes=settings.num_classes, indices=_divisible(settings, cohort, replicas),
                            num_outputs=num_outputs,
                            # the 0..255 codes as uint8 (the model's Rescaling layer casts): the same
                            # results as float32, a quarter of the host copies and host-to-GPU bytes
                            image_dtype="uint8",
                            # patches for training; validation sees whole slices, as testing does
                            patch_size=settings.patch_size if cohort == TRAINING else None,
                            # training only: validation scores the network as testing will use it
                            modality_dropout=settings.modality_dropout if cohort == TRAINING else 0.0,
                            modality_channels=modality_channels(len(settings.modalities), settings.context_slices,
                                                                settings.symmetry_channels),
                            # one data iterator for the whole fit: TensorFlow's per-epoch
                            # iterator rebuild stalled epochs by 5-25 s (the generator's docstring)
                            endless=cohort == TRAINING)
        for cohort in TRAIN_COHORTS)
    # the stream starts at the killed run's epoch: its sample orders and crops continue as they would have
    train_gen.set_epoch(initial_epoch)

    early = ResumableEarlyStopping(initial_state=state.get("early_stopping"), monitor=MONITOR, mode="max",
                                   patience=settings.early_stopping_patience, verbose=1)
    # a schedule owns the learning rate; the plateau reducer only runs without one
    reduce = ResumableReduceLROnPlateau(initial_state=state.get("reduce_lr"), monitor=MONITOR, mode="max",
                                        factor=0.5, patience=settings.reduce_lr_patience, min_lr=1e-6, verbose=1)
    plateau = settings.lr_schedule == "plateau"
    checkpointer = RunCheckpointer(
        run, best=state.get("best_val_dice", -np.inf), best_epoch=state.get("best_epoch", -1),
        extra_state=lambda: {"early_stopping": early.counters(),
                             **({"reduce_lr": reduce.counters()} if plateau else {})},
        export=lambda m: _averaged_copy(m, settings))
    panel_images, panel_masks = panel_samples(settings)
    callbacks = [
        # first: every later callback (and history.csv) reads dice / val_dice whatever the outputs
        *([MainOutputLogs(model.output_names[0])] if num_outputs > 1 else []),
        keras.callbacks.CSVLogger(str(run / HISTORY), append=initial_epoch > 0),
        # EMA_MOMENTUM: validation scores the averaged weights (a resumed run's optimizer decides)
        *([keras.callbacks.SwapEMAWeights()] if getattr(model.optimizer, "use_ema", False) else []),
        early, *([reduce] if plateau else []), checkpointer,
        PredictionPanel(panel_images, panel_masks, run / PREDICTIONS_DIR, settings.batch_size,
                        centre_channels(len(settings.modalities), settings.context_slices), settings.modalities),
        CurvesPlotter(run),
    ]
    budget = TimeBudget(settings.max_training_minutes) if settings.max_training_minutes else None
    schedule = None
    if budget is not None:
        callbacks.append(budget)
        # the decay ends where the budget ends (clotseg.schedules); a checkpoint saved before
        # budgeted schedules existed holds a Keras schedule object, which keeps owning its rate
        if budgeted(settings) and not isinstance(getattr(model.optimizer, "_learning_rate", None),
                                                 keras.optimizers.schedules.LearningRateSchedule):
            schedule = BudgetedSchedule(settings.lr_schedule, settings.learning_rate, settings.epochs,
                                        len(train_gen), settings.warmup_epochs, budget, initial_epoch)
            callbacks.insert(0, schedule)
    if runtime.tensorboard_available():
        callbacks.append(keras.callbacks.TensorBoard(log_dir=str(run / LOGS_DIR)))
    inputs = (f"{tuple(settings.patch_size)} patches of {settings.model_input_shape}" if settings.patch_size
              else f"{settings.model_input_shape}")
    supervised = f", deep supervision over {num_outputs} outputs" if num_outputs > 1 else ""
    windows = [f"{name} {lo:g}-{hi:g} HU" for name, (lo, hi) in settings.applied_extra_windows.items()]
    if windows:
        n = len(settings.extra_window_channels)
        inputs += f" + {n} channel{'s' if n != 1 else ''} of {', '.join(windows)} derived in the model"
    log(f"[train] {settings.model} on {inputs} inputs ({model.count_params():,} parameters{supervised}), "
        f"LR {settings.lr_schedule}{' (decay over MAX_TRAINING_MINUTES)' if schedule else ''}; "
        f"backend {runtime.backend()}, device {record['device']}, precision {policy}, "
        f"XLA {'on' if jit else 'off'}, {replicas} replica(s), {len(train_gen)} batches of {settings.batch_size} "
        "per epoch")
    started = time.monotonic()
    if initial_epoch < settings.epochs and not state.get("stopped_early"):
        model.fit(train_gen, validation_data=val_gen, epochs=settings.epochs, steps_per_epoch=len(train_gen),
                  shuffle=False,  # the generator shuffles each epoch itself (seeded)
                  initial_epoch=initial_epoch, callbacks=callbacks, verbose=1)
        stopped_early = early.stopped_epoch > 0 or (budget is not None and budget.stopped_epoch > 0)
        if budget is not None and budget.stopped_epoch:
            log(f"[train] MAX_TRAINING_MINUTES = {settings.max_training_minutes} reached after epoch "
                f"{budget.stopped_epoch}")
        if stopped_early:
            st = read_json(run / RUN_STATE)
            st["stopped_early"] = True
            atomic_write_json(run / RUN_STATE, st)
    final = read_json(run / RUN_STATE)
    record.update(status="finished", finished=_now(), epochs_done=final["epochs_done"],
                  best_val_dice=final["best_val_dice"], best_epoch=final["best_epoch"],
                  training_seconds=round(record.get("training_seconds", 0.0) + time.monotonic() - started, 1))
    if schedule is not None:
        record["lr_horizon_epochs"] = schedule.horizon_epochs
    atomic_write_json(run / RUN_RECORD, record)
    if settings.tune_postprocessing and settings.num_classes == 1:
        tune_run_postprocessing(settings, run, log)
    log(f"[train] finished: best validation Dice {final['best_val_dice']:.4f} at epoch {final['best_epoch']}; "
        f"model {run / BEST_MODEL}; outputs in {run}")
    return run


def tune_run_postprocessing(settings: Settings, run: Path, log=print) -> dict | None:
    """Choose threshold, flip TTA and component filters on the Validation
    volumes with the run's best model; write <run>/postprocessing.json.

    The model's inputs (windows, modalities, shape, 2.5D context) follow the
    run's own settings (Relevant_Files/config.json), not `settings`: a run
    re-tuned after config.py changed (bench/quality.py --retune) is fed as
    it was trained. A post-processing choice that `settings` fixes
    (THRESHOLD etc. not None) is held at that value and the others are
    chosen given it (`postprocessing.tune`'s `fixed`).

    Returns the record, or None when the Validation cohort has no labelled case.
    """
    # what config.py fixes (THRESHOLD = 0.5, ...) is held, the rest chosen given it: testing would
    # override those anyway, and a size filter chosen for another threshold would not suit
    fixed = postprocessing.fixed_by(settings)
    if (run / RUN_CONFIG).is_file():
        settings = load_run_settings(run, settings.root)
    split = read_json(run / RUN_SPLIT) if (run / RUN_SPLIT).is_file() else read_json(split_path(settings))
    wanted = set(split["cohorts"][VALIDATION])
    cases = [c for c in discover_cases(settings, require_masks=True, warn=lambda *_: None) if c.case_id in wanted]
    if not cases:
        log("[train] no Validation cases found: post-processing left at its defaults")
        return None
    model = keras.models.load_model(run / BEST_MODEL, safe_mode=True, compile=False)
    windows = [settings.windows_hu[m] for m in settings.modalities]
    # the vessel filter is searched (or held on) only where the volumes have a CTA in HU; held off
    # (MAX_VESSEL_DISTANCE_MM = 0, the default) the vessels need not be read
    has_cta = vessels.available(settings.modalities, settings.windows_hu)
    with_vessels = has_cta and fixed.get("max_vessel_distance_mm") != 0
    with_lumen = has_cta and fixed.get("max_component_cta_hu") != 0      # the lumen filter likewise
    data, gaps, near, ctas = [], [], [], []
    for case in cases:
        vols, truth = load_case(case)
        gaps.append(case.slice_gaps() or None)
        if with_vessels:
            near.append(vessels.case_vessels(case, vols, settings.modalities, settings.voxel_spacing_mm))
        if with_lumen:
            ctas.append(vessels.cta_volume(vols, settings.modalities))
        members = predict_volume_members(model, vols, windows, settings.input_shape[:2],
                                         batch_size=runtime.inference_batch_size(settings.batch_size), tta_flips=True,
                                         context_slices=settings.context_slices,
                                         symmetry=settings.symmetry_channels, slice_gaps=gaps[-1])
        data.append(([m[..., 0] for m in members], normalise_mask(truth) > 0))
    result = postprocessing.tune(data, slice_gaps=gaps, fixed=fixed, vessels=near if with_vessels else None,
                                 ctas=ctas if with_lumen else None)
    atomic_write_json(run / POSTPROCESSING_FILE, {**result, "cases": sorted(wanted)})
    chosen, val = result["chosen"], result["validation"]
    if result["reason"].startswith("only"):
        log(f"[train] post-processing: {result['reason']}")
    if fixed:
        log(f"[train] post-processing: held as config.py sets them: "
            f"{', '.join(f'{k.upper()} = {v}' for k, v in sorted(fixed.items()))}")
    log(f"[train] post-processing chosen on {len(cases)} Validation volumes: threshold {chosen['threshold']}, "
        f"TTA {'on' if chosen['tta_flips'] else 'off'}, min component {chosen['min_component_voxels']} voxels, "
        f"min peak {chosen['min_component_peak']:g}, "
        f"vessel distance {_mm_or_off(chosen['max_vessel_distance_mm'])}, "
        f"median CTA {_hu_or_off(chosen['max_component_cta_hu'])}, "
        f"keep largest {'yes' if chosen['keep_largest_component'] else 'no'} (mean Dice "
        f"{val['default']['mean_dice']:.3f} -> {val['chosen']['mean_dice']:.3f}, FP components per case "
        f"{val['default']['fp_components_per_case']:.2f} -> {val['chosen']['fp_components_per_case']:.2f}, "
        f"clots found {val['chosen']['clots_found']}) "
        f"-> {run / POSTPROCESSING_FILE}")
    return result


def _mm_or_off(mm: float) -> str:
    return f"at most {mm:g} mm" if mm > 0 else "off"


def _hu_or_off(hu: float) -> str:
    return f"at most {hu:g} HU" if hu > 0 else "off"


def _averaged_copy(model: keras.Model, settings: Settings) -> keras.Model:
    """The inference copy of `model` with its averaged weights (EMA_MOMENTUM)."""
    with averaged_weights(model):
        return inference_copy(model, settings)


def _loss_and_metrics(settings: Settings, num_outputs: int) -> dict:
    """compile() keywords: the LOSS, and with deep supervision one per output
    (the coarser ones on the pooled mask, weights 1/2**k normalised) with the
    Dice/IoU metrics on the main output only."""
    metrics = get_metrics(settings.num_classes)
    if num_outputs == 1:
        return {"loss": get_loss(settings.loss), "metrics": metrics}
    losses, weights = deep_supervision_losses(settings.loss, num_outputs)
    return {"loss": losses, "loss_weights": weights, "metrics": [metrics] + [[] for _ in range(num_outputs - 1)]}


def _steps_per_epoch(settings: Settings, replicas: int) -> int:
    n = read_json(augmented_dir(settings, TRAINING) / MANIFEST)["n_samples"]
    n -= n % replicas if replicas > 1 else 0
    return max(1, -(-n // settings.batch_size))


def _write_relevant_files(settings: Settings, run: Path) -> None:
    atomic_write_text(run / RUN_CONFIG, settings.to_json() + "\n")
    split = split_path(settings)
    if split.is_file():
        shutil.copyfile(split, run / RUN_SPLIT)
    user_config = settings.root / "config.py"
    if user_config.is_file():
        shutil.copyfile(user_config, run / RUN_CONFIG_COPY)
    manifests = {}
    for stage, folder in ((SLICED, sliced_dir), (AUGMENTED, augmented_dir)):
        for cohort in TRAIN_COHORTS:
            m = read_manifest(folder(settings, cohort))
            if m is not None:
                manifests[f"{stage}/{cohort}"] = m
    atomic_write_json(run / DATA_MANIFESTS, manifests)


def _divisible(settings: Settings, cohort: str, replicas: int) -> np.ndarray | None:
    """Sample indices whose count splits evenly over `replicas` devices.

    The last partial batch is kept, but data-parallel JAX must split every
    batch evenly, so with several devices up to replicas - 1 samples of the
    store are left out. None (all samples) on one device.
    """
    if replicas == 1:
        return None
    n = read_json(augmented_dir(settings, cohort) / MANIFEST)["n_samples"]
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


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use `python training.py`")
