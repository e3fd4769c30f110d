"""Exceptions that end a ClotSeg run with a clear message and a non-zero exit.

Scripts catch `ClotSegError` and print its message without a traceback: the
message alone must tell the user which case, file or setting is at fault and
what to do about it.
"""


class ClotSegError(Exception):
    """Base class: a problem the user can fix; the message says how."""

    exit_code = 2


class ConfigError(ClotSegError):
    """One or more settings in config.py are invalid (all are listed)."""

    def __init__(self, problems):
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"config.py has {len(self.problems)} problem(s):\n{lines}")


class InputDataError(ClotSegError):
    """A case or file of the cohort is missing, malformed or inconsistent."""


class StageError(ClotSegError):
    """A stage cannot run: its inputs on disk are missing or stale."""


class ProjectBusyError(ClotSegError):
    """Another ClotSeg run holds the project's lock (its pid/host/command are named)."""


class DiskFullError(ClotSegError):
    """Not enough free space to write an output; the folder and the space needed are named."""


class FolderError(ClotSegError):
    """A project folder is a file, read-only or otherwise unusable."""
