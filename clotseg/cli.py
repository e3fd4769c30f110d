"""Shared command-line handling for training.py and testing.py."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from clotseg.errors import ClotSegError
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
    return Settings.from_file(args.config, preset=args.preset)


def run_main(main) -> None:
    """Run `main()`; a ClotSegError prints its message and exits non-zero."""
    try:
        code = main()
    except ClotSegError as exc:
        print(f"\nClotSeg stopped: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print("\nClotSeg interrupted; finished stages are kept, rerun the same command to continue.",
              file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)
