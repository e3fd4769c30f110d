"""An inter-process lock per project, so two runs never write one folder at once.

The data stages (`clotseg.pipeline.prepare_data`) hold an exclusive
`fcntl.flock` on `<PROCESSED_DIR>/.clotseg.lock`. The kernel releases a flock
when its holder exits for any reason (Ctrl-C, SIGKILL, a crash), so a dead
run never blocks the next one. While the lock is held the file records the
holder (pid, host, command, start time); a second run waits up to
`wait_s` seconds (default 10, or the CLOTSEG_LOCK_WAIT_S environment
variable) and then stops with a one-line message naming the holder.

The lock is re-entrant within one process (nested `project_lock` calls on the
same folder share it).
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from clotseg.errors import FolderError, ProjectBusyError

try:
    import fcntl
except ImportError:         # not POSIX (Windows): runs are not serialised there
    fcntl = None

LOCK_NAME = ".clotseg.lock"
DEFAULT_WAIT_S = 10.0
_POLL_S = 0.1

# lock path -> [fd, depth] for the locks this process holds
_held: dict[str, list] = {}


def default_wait_s() -> float:
    """CLOTSEG_LOCK_WAIT_S from the environment, else DEFAULT_WAIT_S."""
    raw = os.environ.get("CLOTSEG_LOCK_WAIT_S")
    if raw:
        try:
            value = float(raw)
            if value >= 0:
                return value
        except ValueError:
            pass
    return DEFAULT_WAIT_S


def holder_info() -> dict:
    """What this process records in a lock file it holds."""
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "command": shlex.join([Path(sys.executable).name, *sys.argv]) if sys.argv and sys.argv[0] else
        Path(sys.executable).name,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def read_holder(lock_path: Path | str) -> dict | None:
    """The holder recorded in a lock file (None if empty or unreadable)."""
    try:
        text = Path(lock_path).read_text(encoding="utf-8")
        data = json.loads(text) if text.strip() else None
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def describe_holder(info: dict | None) -> str:
    if not info:
        return "another process (it has not recorded itself yet)"
    return (f"pid {info.get('pid', '?')} on {info.get('host', '?')} "
            f"(`{info.get('command', '?')}`, since {info.get('started', '?')})")


def _open(lock_path: Path) -> int:
    try:
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        return os.open(lock_path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
    except OSError as exc:
        raise FolderError(f"cannot create the project lock {lock_path}: {exc.strerror or exc}; "
                          f"check that {lock_path.parent} is a writable folder") from exc


def acquire(folder: Path | str, wait_s: float | None = None, log=print) -> None:
    """Take the lock of `folder` (waiting up to `wait_s` s) or raise ProjectBusyError."""
    lock_path = Path(folder).resolve() / LOCK_NAME
    key = str(lock_path)
    if key in _held:
        _held[key][1] += 1
        return
    wait_s = default_wait_s() if wait_s is None else float(wait_s)
    fd = _open(lock_path)
    if fcntl is None:
        _held[key] = [fd, 1]
        return
    deadline = time.monotonic() + wait_s
    told = False
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = describe_holder(read_holder(lock_path))
                    raise ProjectBusyError(
                        f"another ClotSeg run is using {Path(folder)}: {holder}; waited {wait_s:g} s. "
                        f"Let it finish (or stop it) and rerun; two runs must not write one project at once")
                if not told:
                    log(f"waiting up to {wait_s:g} s for another ClotSeg run that uses {Path(folder)}: "
                        f"{describe_holder(read_holder(lock_path))}")
                    told = True
                time.sleep(_POLL_S)
        record = (json.dumps(holder_info(), sort_keys=True) + "\n").encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, record, 0)
    except BaseException:
        os.close(fd)
        raise
    _held[key] = [fd, 1]


def release(folder: Path | str) -> None:
    """Release one level of the lock of `folder` taken by `acquire`."""
    key = str(Path(folder).resolve() / LOCK_NAME)
    entry = _held.get(key)
    if entry is None:
        return
    entry[1] -= 1
    if entry[1] > 0:
        return
    del _held[key]
    fd = entry[0]
    try:
        os.ftruncate(fd, 0)          # no stale holder record once released
    except OSError:
        pass
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def is_held(folder: Path | str) -> bool:
    """Whether this process holds the lock of `folder`."""
    return str(Path(folder).resolve() / LOCK_NAME) in _held


@contextmanager
def project_lock(folder: Path | str, wait_s: float | None = None, log=print):
    """`with project_lock(settings.processed_path):` hold the project's lock."""
    acquire(folder, wait_s, log)
    try:
        yield
    finally:
        release(folder)


__all__ = ["project_lock", "acquire", "release", "is_held", "read_holder", "LOCK_NAME", "default_wait_s"]
