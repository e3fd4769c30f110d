"""Training runs on disk: kept for older imports; the names and functions
live in `clotseg.layout`, the one module that owns the on-disk layout."""

from clotseg.layout import (BEST_MODEL, HISTORY, LEGACY_RUN_DEFAULTS, POSTPROCESSING_FILE,  # noqa: F401
                            RELEVANT_FILES, RUN_CONFIG, RUN_RECORD, RUN_SPLIT, TESTING_DIR, TRAINING_CURVES,
                            check_best_model, has_best_model, list_runs, load_run_settings, resolve_run)
