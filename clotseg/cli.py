"""Shared command-line handling for training.py and testing.py."""

from __future__ import annotations

import argparse
import errno
import os
import sys
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from clotseg.errors import ClotSegError, FolderError
from clotseg.io import check_output_folder, is_no_space
from clotseg.settings import Settings

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def base_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", default=str(PROJECT_ROOT / "config.py"),
                        help="path to the config module (default: config.py beside this script)")
    parser.add_argument("--preset", default=None,
                        help="overlay PRESETS[NAME] from the config, e.g. 'demo' (small and CPU-friendly)")
    return parser


def load_settings(args) -> Settings:
    """Settings from --config/--preset, with the project's output folders checked."""
    settings = Settings.from_file(args.config, preset=args.preset)
    check_project_folders(settings)
    return settings


def check_project_folders(settings: Settings) -> None:
    """Before any work: TRAININGS_DIR must be (or become) a writable folder
    (both scripts write there) and PROCESSED_DIR must not be a file.
    Raises FolderError with a one-line message."""
    check_output_folder(settings.trainings_path, "TRAININGS_DIR")
    processed = settings.processed_path
    if processed.exists() and not processed.is_dir():
        raise FolderError(f"PROCESSED_DIR {processed} is a file, not a folder; move the file away or set "
                          "PROCESSED_DIR in config.py to another folder")


def _os_error_line(exc: OSError) -> str | None:
    """One line for OS errors a user can fix (full disk, permissions), else None."""
    where = exc.filename or "a file"
    if is_no_space(exc):
        return (f"the disk is full (no space left on device) while writing {where}; free some space and "
                "rerun the same command (finished stages are kept)")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"permission denied for {where} ({exc.strerror}); make it readable/writable and rerun"
    return None


def run_main(main) -> None:
    """Run `main()`; a ClotSegError prints its message and exits non-zero."""
    try:
        code = main()
    except ClotSegError as exc:
        print(f"\nClotSeg stopped: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except OSError as exc:
        line = _os_error_line(exc)
        if line is None:
            raise
        print(f"\nClotSeg stopped: {line}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("\nClotSeg interrupted; finished stages are kept, rerun the same command to continue.",
              file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)
