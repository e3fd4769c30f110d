"""The on-disk layout, in one place: folder and file names under PROCESSED_DIR
and TRAININGS_DIR, the cohort names, and run listing and lookup.

    Processed/                                (PROCESSED_DIR)
      Preprocessed/              PREPROCESSED: the PREPROCESS stage (raw cohorts only)
        Registration/<case>/     registration.json (REGISTRATION_FILE) + manifest.json
        Resampled/<case>/        the volumes and mask at TARGET_SPACING_MM, grids.json (GRIDS_FILE)
        ROI/<case>/              the cropped volumes and mask, <case>.json sidecar
        Cohort/volumes/, masks/  PREP_COHORT: the prepared cohort the next stages read,
                                 summary.json (PREPROCESS_SUMMARY), manifest.json
      split.json                 SPLIT_FILE: case ids per cohort + fingerprint
      checked_cases.json         CHECK_CACHE: per-case check results (signatures)
      Sliced/<cohort>/           SLICED: every slice of Training / Validation
      Augmented/<cohort>/        AUGMENTED: the augmented training samples
        images.npy masks.npy samples.csv manifest.json   (IMAGES, MASKS, SAMPLES, MANIFEST)
      Fold<k>/                   FOLD_PREFIX: with FOLD = k, that fold's split.json, Sliced/, Augmented/
    Trainings/<run>/                          (TRAININGS_DIR; <run> = YYYYmmdd-HHMMSS[-n])
      run.json                   RUN_RECORD: marks a run folder (status, epochs)
      Best_Model/model.keras     BEST_MODEL: for inference, plain keras loads it
      Checkpoint_Files/          CHECKPOINT_DIR: last.keras (LAST_CHECKPOINT), state.json (RUN_STATE)
      Relevant_Files/            RELEVANT_FILES: config.json (RUN_CONFIG), split.json (RUN_SPLIT),
                                 config.py, data_manifests.json (DATA_MANIFESTS)
      Predictions/epoch_NNN.png  PREDICTIONS_DIR: validation panels during training
      postprocessing.json        POSTPROCESSING_FILE: tuned on the Validation volumes
      history.csv, training_curves.png, logs/   (HISTORY, TRAINING_CURVES, LOGS_DIR)
      Testing/                   TESTING_DIR: testing.py (Testing_<folder> for --input-dir)
        predictions/             TEST_PREDICTIONS_DIR
    Trainings/Ensemble_<k>runs_<hash>/Testing/   ENSEMBLE_PREFIX: testing.py with several runs

Stages and tools import names from here and shared helpers, never from each
other. Standard library and clotseg.errors only at import time (settings are
passed in), so clotseg.io can use it too and importing it never starts Keras.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from clotseg.errors import StageError

if TYPE_CHECKING:  # pragma: no cover
    from clotseg.settings import Settings

# ------------------------------------------------------------------ cohorts
TRAINING, VALIDATION, TESTING = "Training", "Validation", "Testing"
COHORTS = (TRAINING, VALIDATION, TESTING)
TRAIN_COHORTS = (TRAINING, VALIDATION)          # sliced and augmented before training

# ---------------------------------------------------------------- Processed/
PREPROCESSED = "Preprocessed"
PREP_REGISTRATION, PREP_RESAMPLED, PREP_ROI, PREP_COHORT = "Registration", "Resampled", "ROI", "Cohort"
PREP_STEPS = (PREP_REGISTRATION, PREP_RESAMPLED, PREP_ROI)
PREP_VOLUMES, PREP_MASKS = "volumes", "masks"
REGISTRATION_FILE = "registration.json"
GRIDS_FILE = "grids.json"
PREPROCESS_SUMMARY = "summary.json"
SPLIT_FILE = "split.json"
CHECK_CACHE = "checked_cases.json"
SLICED = "Sliced"
AUGMENTED = "Augmented"
FOLD_PREFIX = "Fold"
ENSEMBLE_PREFIX = "Ensemble_"
IMAGES, MASKS, SAMPLES = "images.npy", "masks.npy", "samples.csv"
MANIFEST = "manifest.json"                      # written last: marks a stage output complete

# ---------------------------------------------------------- Trainings/<run>/
RUN_RECORD = "run.json"
BEST_MODEL_DIR = "Best_Model"
BEST_MODEL = Path(BEST_MODEL_DIR) / "model.keras"
CHECKPOINT_DIR = "Checkpoint_Files"
LAST_CHECKPOINT = Path(CHECKPOINT_DIR) / "last.keras"
RUN_STATE = Path(CHECKPOINT_DIR) / "state.json"
RELEVANT_FILES = "Relevant_Files"
RUN_CONFIG = Path(RELEVANT_FILES) / "config.json"
RUN_SPLIT = Path(RELEVANT_FILES) / SPLIT_FILE
RUN_CONFIG_COPY = Path(RELEVANT_FILES) / "config.py"
DATA_MANIFESTS = Path(RELEVANT_FILES) / "data_manifests.json"
PREDICTIONS_DIR = "Predictions"
RUN_SUBFOLDERS = (BEST_MODEL_DIR, CHECKPOINT_DIR, RELEVANT_FILES, PREDICTIONS_DIR)
POSTPROCESSING_FILE = "postprocessing.json"
TRAINING_CURVES = "training_curves.png"
HISTORY = "history.csv"
LOGS_DIR = "logs"
TESTING_DIR = "Testing"
TEST_PREDICTIONS_DIR = "predictions"

# settings that runs saved before they existed had implicitly: the value that
# reproduces how such a run was trained (plain 2D U-Net), not today's default
LEGACY_RUN_DEFAULTS = {"CONTEXT_SLICES": 0, "MODEL": "unet"}
_RUN_NAME = re.compile(r"[\w.\-]+")


# ------------------------------------------------------------ Processed/ paths
def cohort_root(settings: "Settings") -> Path:
    """Where the split and the cohorts' samples live: PROCESSED_DIR, or PROCESSED_DIR/Fold<k> with
    FOLD = k, so each fold keeps its own split and samples (folds trained side by side never
    replace each other's, and a fold trained again finds its samples up to date)."""
    fold = getattr(settings, "fold", None)
    return settings.processed_path if fold is None else settings.processed_path / f"{FOLD_PREFIX}{fold}"


def split_path(settings: "Settings") -> Path:
    return cohort_root(settings) / SPLIT_FILE


def check_cache_path(settings: "Settings") -> Path:
    return settings.processed_path / CHECK_CACHE


def sliced_dir(settings: "Settings", cohort: str) -> Path:
    return cohort_root(settings) / SLICED / cohort


def augmented_dir(settings: "Settings", cohort: str) -> Path:
    return cohort_root(settings) / AUGMENTED / cohort


def preprocessed_dir(settings: "Settings") -> Path:
    return settings.processed_path / PREPROCESSED


def preprocess_step_dir(settings: "Settings", step: str, case_id: str) -> Path:
    """Processed/Preprocessed/<step>/<case>: one case's output of one step."""
    return preprocessed_dir(settings) / step / case_id


def prepared_cohort_dir(settings: "Settings") -> Path:
    return preprocessed_dir(settings) / PREP_COHORT


def preprocessed_inputs(settings: "Settings") -> "Settings":
    """The settings with VOLUME_DIR / MASK_DIR on the prepared cohort of the
    PREPROCESS stage (relative to the config's folder when inside it), so the
    split, slicing, training and testing read the prepared cases."""
    import os

    cohort = prepared_cohort_dir(settings)
    root = settings.root.resolve()

    def rel(path: Path) -> str:
        return os.path.relpath(path, root) if root in path.parents else str(path)

    return settings.replace(volume_dir=rel(cohort / PREP_VOLUMES), mask_dir=rel(cohort / PREP_MASKS))


# ------------------------------------------------------------------- runs
def list_runs(settings: "Settings") -> list[Path]:
    """Run folders (with a run.json), oldest first."""
    root = settings.trainings_path
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if (p / RUN_RECORD).is_file()), key=lambda p: p.name)


def has_best_model(run: Path) -> bool:
    return (Path(run) / BEST_MODEL).is_file()


def resolve_run(settings: "Settings", name: str | None = None) -> Path:
    """The run to test: `name`, else TEST_RUN, else the latest with a best model.

    Raises StageError (one line) for a name that is not a plain folder name,
    a run without Best_Model/model.keras, or no trained run at all.
    """
    if not name and len(settings.test_runs) > 1:
        raise StageError(f"TEST_RUN names {len(settings.test_runs)} runs (an ensemble); test them together "
                         "with `python testing.py`")
    name = name or (settings.test_runs[0] if settings.test_runs else None)
    if name:
        if not _RUN_NAME.fullmatch(name) or name in (".", ".."):
            raise StageError(f"run name {name!r} must be a folder name under {settings.trainings_path}")
        run = settings.trainings_path / name
        if not has_best_model(run):
            raise StageError(f"run {name!r} has no {BEST_MODEL.as_posix()} under {settings.trainings_path}")
        return run
    runs = [r for r in list_runs(settings) if has_best_model(r)]
    if not runs:
        raise StageError(f"no trained model under {settings.trainings_path}; run `python training.py` first")
    return runs[-1]


def resolve_runs(settings: "Settings", names=None) -> list[Path]:
    """The runs to test: `names` (one run name or several), else TEST_RUN (a name or a list of
    them), else the latest run with a best model. Several runs are an ensemble (their models'
    probabilities averaged); each is checked as `resolve_run` checks one."""
    if isinstance(names, str):
        names = [names]
    names = list(names or settings.test_runs)
    if len(set(names)) != len(names):
        raise StageError(f"run {sorted(n for n in names if names.count(n) > 1)[0]!r} is named twice; "
                         "an ensemble's runs must differ")
    if not names:
        return [resolve_run(settings)]
    return [resolve_run(settings, name) for name in names]


def ensemble_dir(settings: "Settings", runs: list[Path]) -> Path:
    """Trainings/Ensemble_<k>runs_<hash>: where an ensemble of `runs` writes its testing folders
    (the hash of the sorted run names, so the same runs in any order share it)."""
    import hashlib

    key = hashlib.sha256("\n".join(sorted(Path(r).name for r in runs)).encode()).hexdigest()[:8]
    return settings.trainings_path / f"{ENSEMBLE_PREFIX}{len(runs)}runs_{key}"


def load_run_settings(run: Path, root: Path) -> "Settings":
    """The settings a run was trained with (paths resolved against `root`).

    A missing, truncated or edited Relevant_Files/config.json (an unknown
    key or an invalid value included) stops with StageError, one line naming
    that file (not config.py).
    """
    from clotseg.settings import Settings

    return Settings.from_run_config(Path(run) / RUN_CONFIG, root, LEGACY_RUN_DEFAULTS)


def check_best_model(run: Path, trained: "Settings") -> dict:
    """Check a run's Best_Model/model.keras before loading it: a complete
    .keras file (a truncated or corrupt one is named) whose input shape and
    class count are those of the run's settings `trained`. StageError (one
    line) otherwise; see `clotseg.io.check_keras_file`."""
    from clotseg.io import check_keras_file

    return check_keras_file(Path(run) / BEST_MODEL, trained.model_input_shape, trained.num_classes,
                            "the best model", f"the run's settings {Path(run) / RUN_CONFIG}")


def testing_dir(run: Path, input_dir: Path | None = None) -> Path:
    """<run>/Testing for the run's own Testing cohort; <run>/Testing_<input folder
    name> for cases of another folder, so those never replace the run's scores."""
    if input_dir is None:
        return Path(run) / TESTING_DIR
    name = re.sub(r"[^\w.\-]+", "_", Path(input_dir).resolve().name) or "input"
    return Path(run) / f"{TESTING_DIR}_{name}"
