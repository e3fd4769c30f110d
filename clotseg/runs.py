"""Training runs on disk: the folder names of `Trainings/<run>/`, listing,
lookup and the settings a run was trained with.

Shared by the testing step (`clotseg.stages.evaluate`), the scoring command
(`python -m clotseg.evaluate`) and, later, the training stage, so that none of
them imports another stage. Only the standard library and `clotseg.settings`:
importing it never starts Keras.

    Trainings/<run>/
      run.json                       marks a run folder (status, epochs)
      Best_Model/model.keras         BEST_MODEL
      Relevant_Files/config.json     RUN_CONFIG: the run's settings
      Relevant_Files/split.json      RUN_SPLIT: its Training/Validation/Testing case ids
      postprocessing.json            POSTPROCESSING_FILE: tuned on the Validation volumes
      training_curves.png, history.csv
      Testing/                       TESTING_DIR: written by testing.py
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from clotseg.errors import StageError
from clotseg.settings import Settings

RUN_RECORD = "run.json"
BEST_MODEL = Path("Best_Model") / "model.keras"
RELEVANT_FILES = "Relevant_Files"
RUN_CONFIG = Path(RELEVANT_FILES) / "config.json"
RUN_SPLIT = Path(RELEVANT_FILES) / "split.json"
POSTPROCESSING_FILE = "postprocessing.json"
TRAINING_CURVES = "training_curves.png"
HISTORY = "history.csv"
TESTING_DIR = "Testing"

# settings that runs saved before they existed had implicitly (kept equal to
# clotseg.stages.train.LEGACY_RUN_DEFAULTS)
LEGACY_RUN_DEFAULTS = {"CONTEXT_SLICES": 0, "MODEL": "unet"}
_RUN_NAME = re.compile(r"[\w.\-]+")


def list_runs(settings: Settings) -> list[Path]:
    """Run folders (with a run.json), oldest first."""
    root = settings.trainings_path
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if (p / RUN_RECORD).is_file()), key=lambda p: p.name)


def has_best_model(run: Path) -> bool:
    return (Path(run) / BEST_MODEL).is_file()


def resolve_run(settings: Settings, name: str | None = None) -> Path:
    """The run to test: `name`, else TEST_RUN, else the latest with a best model.

    Raises StageError (one line) for a name that is not a plain folder name,
    a run without Best_Model/model.keras, or no trained run at all.
    """
    name = name or settings.test_run
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


def load_run_settings(run: Path, root: Path) -> Settings:
    """The settings a run was trained with (paths resolved against `root`).

    A missing, truncated or edited Relevant_Files/config.json (an unknown
    key or an invalid value included) stops with StageError, one line naming
    that file (not config.py).
    """
    return Settings.from_run_config(Path(run) / RUN_CONFIG, root, LEGACY_RUN_DEFAULTS)


def check_best_model(run: Path, trained: Settings) -> dict:
    """Check a run's Best_Model/model.keras before loading it: a complete
    .keras file (a truncated or corrupt one is named) whose input shape and
    class count are those of the run's settings `trained`. StageError (one
    line) otherwise; see `clotseg.io.check_keras_file`."""
    from clotseg.io import check_keras_file

    return check_keras_file(Path(run) / BEST_MODEL, trained.model_input_shape, trained.num_classes,
                            "the best model", f"the run's settings {Path(run) / RUN_CONFIG}")
