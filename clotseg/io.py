"""Safe, atomic file I/O and stage manifests.

Every stage writes into a temporary folder next to its final folder and
renames it into place only when everything (manifest last) is written, so a
killed run never leaves a half-finished stage that looks finished. Arrays are
read with `allow_pickle=False` only; no code path in ClotSeg unpickles.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from clotseg.errors import InputDataError

MANIFEST = "manifest.json"


def load_npy(path: Path | str, mmap: bool = False, what: str = "") -> np.ndarray:
    """Load a .npy array without ever unpickling.

    Args:
        path: file to read.
        mmap: memory-map read-only instead of reading into RAM.
        what: label for error messages, e.g. "case CS3 CTA".
    Raises:
        InputDataError naming the file when it is missing, truncated, not a
        .npy file or holds Python objects (pickles).
    """
    path = Path(path)
    label = f"{what} file {path}" if what else f"file {path}"
    if not path.is_file():
        raise InputDataError(f"{label} does not exist")
    try:
        arr = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except ValueError as exc:
        msg = str(exc)
        if "allow_pickle" in msg or "Object arrays" in msg:
            raise InputDataError(f"{label} holds pickled Python objects; ClotSeg refuses to load it "
                                 "(re-save it as a plain numeric array with np.save)") from exc
        raise InputDataError(f"{label} is not a readable .npy array (truncated or corrupt?): {msg}") from exc
    except (OSError, EOFError) as exc:
        raise InputDataError(f"{label} is not a readable .npy array (truncated or corrupt?): {exc}") from exc
    if not isinstance(arr, np.ndarray) or arr.dtype.hasobject:
        raise InputDataError(f"{label} holds Python objects; ClotSeg refuses to load it")
    return arr


def npy_header(path: Path | str, what: str = "") -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) of a .npy file, read from its header only (cheap)."""
    arr = load_npy(path, mmap=True, what=what)
    return tuple(arr.shape), arr.dtype


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()  # what open() would give; mkstemp alone gives 0600


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def _atomic_file(path: Path | str):
    """Yield a binary file handle whose content replaces `path` atomically
    (temp file in the same folder, fsync, normal permissions, rename) only
    if the block finishes; on error the temp file is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    """Write a file via temp file + fsync + rename (never half-written)."""
    with _atomic_file(path) as fh:
        fh.write(data)


def atomic_write_text(path: Path | str, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path | str, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def atomic_save_npy(path: Path | str, arr: np.ndarray) -> None:
    """np.save (no pickles) through a temp file + rename."""
    with _atomic_file(path) as fh:
        np.save(fh, np.asarray(arr), allow_pickle=False)


def read_json(path: Path | str):
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def fingerprint(obj) -> str:
    """Stable short hash of a JSON-able object (settings, input lists)."""
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def file_signature(path: Path) -> list:
    """[name, size, mtime_ns]: changes when a file is replaced or edited."""
    st = Path(path).stat()
    return [Path(path).name, st.st_size, st.st_mtime_ns]


# ----------------------------------------------------------------- stage dirs
def read_manifest(stage_dir: Path) -> dict | None:
    """The manifest of a finished stage folder, or None if absent/unreadable."""
    mpath = Path(stage_dir) / MANIFEST
    if not mpath.is_file():
        return None
    try:
        data = read_json(mpath)
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) and data.get("complete") is True else None


@contextmanager
def staged_dir(final_dir: Path):
    """Build a stage's output in a temp folder, then swap it into place.

    Yields the temp folder. On normal exit the caller must have written the
    manifest (`write_manifest`); the temp folder then replaces `final_dir`
    (the old one is removed only after the new one is in place). On any
    exception the temp folder is deleted and `final_dir` is left untouched.
    """
    final_dir = Path(final_dir)
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(final_dir)
    tmp = Path(tempfile.mkdtemp(dir=final_dir.parent, prefix=f".{final_dir.name}.tmp-"))
    try:
        yield tmp
        if read_manifest(tmp) is None:
            raise RuntimeError(f"stage output {final_dir.name} was built without a manifest")
        old = None
        if final_dir.exists():
            old = final_dir.parent / f".{final_dir.name}.old-{os.getpid()}-{time.time_ns()}"
            os.replace(final_dir, old)
        os.replace(tmp, final_dir)
        _fsync_dir(final_dir.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def clean_stale_temps(final_dir: Path) -> None:
    """Remove temp/old folders a killed run left beside `final_dir`."""
    parent = Path(final_dir).parent
    if not parent.is_dir():
        return
    for p in parent.glob(f".{Path(final_dir).name}.*"):
        if p.is_dir() and (".tmp-" in p.name or ".old-" in p.name):
            # Only an old copy whose replacement is already in place may go;
            # if final_dir is missing, the old copy is the last good output.
            if ".old-" in p.name and not Path(final_dir).exists():
                os.replace(p, final_dir)
                continue
            shutil.rmtree(p, ignore_errors=True)


def write_manifest(stage_dir: Path, stage: str, fingerprint_value: str, **info) -> dict:
    """Write the manifest that marks a stage folder complete."""
    manifest = {
        "stage": stage,
        "complete": True,
        "fingerprint": fingerprint_value,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **info,
    }
    atomic_write_json(Path(stage_dir) / MANIFEST, manifest)
    return manifest
