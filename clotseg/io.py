"""Safe, atomic file I/O and stage manifests.

Every stage writes into a temporary folder next to its final folder and
renames it into place only when everything (manifest last) is written, so a
killed run never leaves a half-finished stage that looks finished. Arrays are
read with `allow_pickle=False` only; no code path in ClotSeg unpickles.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import re
import shutil
import socket
import stat
import tempfile
import threading
import time
import zipfile
import zlib
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from numpy.lib.format import open_memmap

from clotseg.errors import DiskFullError, FolderError, InputDataError, StageError
from clotseg.layout import MANIFEST  # noqa: F401  (the on-disk names live in clotseg.layout)


# np.load parses every .npy header with ast.literal_eval, and CPython keeps the AST
# constructor's recursion counter per interpreter, not per thread: two threads parsing at
# once can fail with a spurious "SystemError: AST constructor recursion depth mismatch"
# (python/cpython#106905; seen on 3.11.7 while testing.py's loader threads read cases). A lock
# keeps ClotSeg's own loads apart; a parse that still meets another library's (TensorFlow
# parses functions it traces in the main thread) is tried again, since every parse starts
# its count afresh. Only the header parse needs the lock: the file is mapped under it and its
# data read after, so loader threads still read their volumes side by side.
_NPY_LOCK = threading.Lock()
AST_RACE = "AST constructor recursion depth mismatch"
AST_RACE_TRIES = 3


def _np_load(path: Path, mmap: bool):
    for attempt in range(AST_RACE_TRIES):
        try:
            with _NPY_LOCK:
                mapped = np.load(path, mmap_mode="r", allow_pickle=False)
            break
        except SystemError as exc:
            if AST_RACE not in str(exc) or attempt == AST_RACE_TRIES - 1:
                raise
    return mapped if mmap else np.array(mapped)


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
    problem = special_file_problem(path)
    if problem is not None:
        raise InputDataError(f"{label} {problem}")
    try:
        arr = _np_load(path, mmap)
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


def special_file_problem(path: Path | str) -> str | None:
    """Why `path` is not a readable regular file, or None if it is one.

    Tells apart a missing file, a broken symbolic link, a symbolic link loop,
    a folder and special files (devices, FIFOs, sockets), so messages never
    say "missing" for a file that is there but unusable (opening a FIFO or a
    device would hang or read forever).
    """
    path = Path(path)
    try:
        st = os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "is a symbolic link loop (it points back at itself); replace it with the real file"
        if os.path.islink(path):
            try:
                target = os.readlink(path)
            except OSError:
                target = "?"
            return f"is a broken symbolic link (its target {target} does not exist)"
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            return "does not exist"
        return f"cannot be read: {exc.strerror or exc}"
    mode = st.st_mode
    if stat.S_ISREG(mode):
        return None
    via = f" (through the symbolic link to {os.readlink(path)})" if os.path.islink(path) else ""
    if stat.S_ISDIR(mode):
        return f"is a folder, not a file{via}"
    kind = ("a character device" if stat.S_ISCHR(mode) else "a block device" if stat.S_ISBLK(mode)
            else "a named pipe (FIFO)" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode)
            else "not a regular file")
    return f"is {kind}, not a regular file{via}; ClotSeg reads only regular files"


def available_memory_bytes() -> int | None:
    """Memory this process can still use: MemAvailable (Linux), else free
    physical pages (os.sysconf), capped by a cgroup v2 memory limit; None
    when unknown."""
    avail = None
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError, IndexError):
        avail = None
    if avail is None:
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            avail = None
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = Path("/sys/fs/cgroup/memory.current").read_text().strip()
        if limit.isdigit() and used.isdigit():
            room = max(0, int(limit) - int(used))
            avail = room if avail is None else min(avail, room)
    except OSError:
        pass
    return avail


def human_bytes(n: float) -> str:
    """1234567 -> '1.2 MB' (decimal units, as `df -H` shows)."""
    n = float(n)
    for unit in ("bytes", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


# ------------------------------------------------------------ disk space
_NO_SPACE = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


def is_no_space(exc: BaseException) -> bool:
    """Whether `exc` is "no space left on device" (or a disk quota)."""
    return isinstance(exc, OSError) and exc.errno in _NO_SPACE


def _existing_ancestor(path: Path) -> Path:
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def free_bytes(folder: Path | str) -> int | None:
    """Free bytes on the file system holding `folder` (or its nearest existing parent)."""
    try:
        return int(shutil.disk_usage(_existing_ancestor(Path(folder))).free)
    except OSError:
        return None


def disk_full_error(folder: Path | str, needed: int | None, what: str = "", exc=None) -> DiskFullError:
    """The one-line message for a full disk."""
    free = free_bytes(folder)
    need = f"needs about {human_bytes(needed)}" if needed else "needs more space"
    have = f", {human_bytes(free)} free" if free is not None else ""
    cause = " (no space left on device)" if exc is not None else ""
    return DiskFullError(f"not enough disk space in {folder}{cause}: {what + ' ' if what else ''}{need}{have}; "
                         "free some space (or move the project) and rerun; nothing that was there before "
                         "was changed")


def ensure_free_space(folder: Path | str, needed: int, what: str = "") -> None:
    """Raise DiskFullError naming `folder` unless `needed` bytes are free there."""
    free = free_bytes(folder)
    if free is not None and free < needed:
        raise disk_full_error(folder, needed, what)


def create_npy(path: Path | str, dtype, shape, what: str = "") -> np.memmap:
    """A new .npy file opened as a writable memory map, its blocks reserved.

    Writes through a memory map into a sparse file end in SIGBUS when the
    disk fills up; reserving the whole file first (posix_fallocate) turns a
    full disk into DiskFullError here instead.
    """
    path = Path(path)
    try:
        arr = open_memmap(path, mode="w+", dtype=dtype, shape=tuple(shape))
        if hasattr(os, "posix_fallocate"):
            size = path.stat().st_size
            fd = os.open(path, os.O_RDWR)
            try:
                os.posix_fallocate(fd, 0, size)
            except OSError as exc:
                if is_no_space(exc):
                    raise
                # file systems without fallocate support: the free-space check has to do
            finally:
                os.close(fd)
    except OSError as exc:
        if is_no_space(exc):
            need = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
            raise disk_full_error(path.parent, need, what or f"writing {path.name}", exc) from exc
        raise
    return arr


def check_output_folder(path: Path | str, setting: str) -> None:
    """Raise FolderError unless `path` is (or can become) a writable folder.

    `setting` names the config value (e.g. "PROCESSED_DIR") in the message.
    A folder that does not exist yet is fine when its nearest existing parent
    is a writable folder. Nothing is created.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise FolderError(f"{setting} {path} is a file, not a folder; move the file away or set {setting} "
                          "in config.py to another folder")
    if not path.exists() and os.path.lexists(path):
        raise FolderError(f"{setting} {path} {special_file_problem(path)}")
    base = _existing_ancestor(path)
    if not base.is_dir():
        raise FolderError(f"{setting} {path} cannot be created: {base} is a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(dir=base, prefix=".clotseg-write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        reason = "is on a read-only file system" if exc.errno == errno.EROFS else "is not writable"
        where = f"{setting} {path}" if base == path.absolute() else f"{base} (parent of {setting} {path})"
        raise FolderError(f"{where} {reason} ({exc.strerror or exc}); make it writable or set {setting} "
                          "in config.py to a writable folder") from exc


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
def _atomic_file(path: Path | str, size: int | None = None):
    """Yield a binary file handle whose content replaces `path` atomically
    (temp file in the same folder, fsync, normal permissions, rename) only
    if the block finishes; on error the temp file is removed and `path` is
    unchanged. A full disk raises DiskFullError naming the folder and
    `size` (the bytes to write, when known)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        if is_no_space(exc):
            raise disk_full_error(path.parent, size, f"writing {path.name}", exc) from exc
        raise
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        if is_no_space(exc):
            raise disk_full_error(path.parent, size, f"writing {path.name}", exc) from exc
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    """Write a file via temp file + fsync + rename (never half-written)."""
    with _atomic_file(path, len(data)) as fh:
        fh.write(data)


def atomic_write_text(path: Path | str, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path | str, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def atomic_save_npy(path: Path | str, arr: np.ndarray) -> None:
    """np.save (no pickles) through a temp file + rename."""
    arr = np.asarray(arr)
    with _atomic_file(path, int(arr.nbytes) + 128) as fh:
        np.save(fh, arr, allow_pickle=False)


def read_json(path: Path | str):
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def read_json_file(path: Path | str, what: str = "file", expect: type | None = dict):
    """Read a JSON file ClotSeg wrote itself (a run's config.json, run.json,
    state.json), checking it as it is loaded.

    Raises StageError with one line naming the file and the problem: missing
    (or not a regular file), not UTF-8, not valid JSON (truncated or edited),
    or not of the type `expect` (a JSON object by default).
    """
    path = Path(path)
    label = f"{what} {path}"
    problem = special_file_problem(path)
    if problem is not None:
        raise StageError(f"{label} {problem}")
    try:
        with open(path, "rb") as fh:
            text = fh.read().decode("utf-8")
        data = json.loads(text)
    except UnicodeDecodeError as exc:
        raise StageError(f"{label} is not UTF-8 text (truncated or overwritten?): {exc.reason}") from exc
    except json.JSONDecodeError as exc:
        cut = " (it is empty)" if not text.strip() else ""
        raise StageError(f"{label} is not valid JSON{cut} (truncated or edited?): {exc.msg} at line {exc.lineno} "
                         f"column {exc.colno}") from exc
    except (OSError, ValueError, RecursionError) as exc:
        raise StageError(f"{label} cannot be read: {exc}") from exc
    if expect is not None and not isinstance(data, expect):
        kind = {dict: "a JSON object {...}", list: "a JSON list [...]"}.get(expect, expect.__name__)
        raise StageError(f"{label} must hold {kind}, not {_json_kind(data)}")
    return data


def _json_kind(value) -> str:
    return {dict: "an object", list: "a list", str: "text", int: "a number", float: "a number",
            bool: "true/false", type(None): "null"}.get(type(value), type(value).__name__)


def _is_number(v, finite: bool = False) -> bool:
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        return False
    try:
        return not finite or math.isfinite(v)
    except OverflowError:
        return False


def _is_count(v, low: int = 0) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= low


# ------------------------------------------------------------ run records
# What `clotseg.stages.train` writes and reads back on a resume; keys not
# listed here are left alone (a newer version may add some).
_STATE_FIELDS = {
    "epochs_done": ("a whole number >= 0", lambda v: _is_count(v, 0)),
    "best_val_dice": ("a number", lambda v: _is_number(v) and not math.isnan(v)),
    "best_epoch": ("a whole number >= -1", lambda v: _is_count(v, -1)),
    "learning_rate": ("a number >= 0", lambda v: _is_number(v, finite=True) and v >= 0),  # poly decays to 0
    "stopped_early": ("true or false", lambda v: isinstance(v, bool)),
}
_STATE_REQUIRED = ("epochs_done", "best_val_dice", "best_epoch")
_COUNTER_FIELDS = {"wait": lambda v: _is_count(v, 0), "best": _is_number, "cooldown": lambda v: _is_count(v, 0)}
_RECORD_FIELDS = {
    "status": ("text", lambda v: isinstance(v, str)),
    "resumed": ("a list", lambda v: isinstance(v, list)),
    "device": ("text", lambda v: isinstance(v, str)),
    "training_seconds": ("a number >= 0", lambda v: _is_number(v, finite=True) and v >= 0),
    "epochs_done": ("a whole number >= 0", lambda v: _is_count(v, 0)),
}


def _field_problems(data: dict, required, fields: dict) -> list[str]:
    """Missing `required` keys and known `fields` ({key: (what, check)}) of the wrong kind."""
    bad = [f"{k} is missing" for k in required if k not in data]
    for key, (kind, ok) in fields.items():
        if key in data and not ok(data[key]):
            bad.append(f"{key} must be {kind}, got {json.dumps(data[key])[:40]}")
    return bad


def read_run_state(path: Path | str) -> dict:
    """A run's Checkpoint_Files/state.json, checked: a JSON object whose
    epoch counter, best score/epoch, learning rate and early-stopping /
    LR-plateau counters have the types the resume needs. StageError (one
    line naming the file) otherwise."""
    path = Path(path)
    data = read_json_file(path, "the checkpoint state", dict)
    bad = _field_problems(data, _STATE_REQUIRED, _STATE_FIELDS)
    for key in ("early_stopping", "reduce_lr"):
        if key in data:
            counters = data[key]
            if not isinstance(counters, dict):
                bad.append(f"{key} must be an object, got {json.dumps(counters)[:40]}")
                continue
            for name, value in counters.items():
                check = _COUNTER_FIELDS.get(name)
                if check is not None and not check(value):
                    bad.append(f"{key}.{name} must be a number, got {json.dumps(value)[:40]}")
    if not bad and data["best_epoch"] > data["epochs_done"]:
        bad.append(f"best_epoch {data['best_epoch']} is after epochs_done {data['epochs_done']}")
    if bad:
        raise StageError(f"the checkpoint state {path} is not valid (edited or from another version?): "
                         f"{'; '.join(bad)}; restore it or start a new run (RESUME = False)")
    return data


def read_run_record(path: Path | str, required=("status",)) -> dict:
    """A run's run.json, checked: a JSON object with a text `status` and
    well-typed known fields (`required` must be present). StageError (one
    line naming the file) otherwise."""
    path = Path(path)
    data = read_json_file(path, "the run record", dict)
    bad = _field_problems(data, required, _RECORD_FIELDS)
    if bad:
        raise StageError(f"the run record {path} is not valid (edited or from another version?): {'; '.join(bad)}")
    return data


# ------------------------------------------------------------ model files
def check_keras_file(path: Path | str, input_shape=None, num_classes: int | None = None, what: str = "model",
                     expected_from: str = "the run's settings") -> dict:
    """Check a `.keras` model file without loading it (no Keras import).

    The file must be a regular file and a complete zip archive (every
    member's CRC checked: a truncated or corrupt file is caught) holding a
    Keras model config and weights. When `input_shape` (rows, cols,
    channels) or `num_classes` is given, the model's input layer and output
    layer must agree with them. Returns {"input_shape": tuple | None,
    "num_classes": int | None} as read from the file.

    Raises StageError with one line naming the file and the problem, and
    `expected_from` (where the expected values come from) on a mismatch.
    """
    path = Path(path)
    label = f"{what} {path}"
    problem = special_file_problem(path)
    if problem is not None:
        raise StageError(f"{label} {problem}")
    hint = "; it was probably cut short by a full disk or a kill: retrain, or restore it from a backup"
    try:
        with zipfile.ZipFile(path) as zf:
            names = set(zf.namelist())
            bad = zf.testzip()
            if bad is not None:
                raise StageError(f"{label} is corrupt ({bad} inside it fails its checksum){hint}")
            if "config.json" not in names or not any(n.startswith("model.weights.") for n in names):
                raise StageError(f"{label} is not a Keras model file (no config.json and model weights inside; "
                                 f"found {sorted(names)[:5]})")
            config = json.loads(zf.read("config.json").decode("utf-8"))
    except StageError:
        raise
    except (zipfile.BadZipFile, EOFError, zlib.error) as exc:
        raise StageError(f"{label} is not a readable .keras model (truncated or corrupt?): {exc}{hint}") from exc
    except (UnicodeDecodeError, ValueError) as exc:
        raise StageError(f"{label} holds an unreadable model config (corrupt?): {exc}{hint}") from exc
    except OSError as exc:
        raise StageError(f"{label} cannot be read: {exc.strerror or exc}") from exc
    found_shape, found_classes = _keras_io(config)
    if input_shape is not None and found_shape is not None and tuple(found_shape) != tuple(input_shape):
        raise StageError(f"{label} takes inputs of shape {tuple(found_shape)} (rows, cols, channels) but "
                         f"{expected_from} give {tuple(input_shape)}; it belongs to other settings (INPUT_SHAPE, "
                         "CONTEXT_SLICES, MODALITY_PATTERNS)")
    if num_classes is not None and found_classes is not None and found_classes != num_classes:
        raise StageError(f"{label} predicts {found_classes} class(es) but {expected_from} give NUM_CLASSES = "
                         f"{num_classes}; it belongs to other settings")
    return {"input_shape": found_shape, "num_classes": found_classes}


def _keras_io(config) -> tuple[tuple | None, int | None]:
    """(input shape without the batch axis, output channels) from a saved
    functional model's config.json; None where the config does not say."""
    try:
        inner = config["config"]
        layers = {layer.get("name") or layer["config"].get("name"): layer for layer in inner["layers"]}
        shape = None
        inputs = inner.get("input_layers") or []
        if inputs and isinstance(inputs[0], str):     # a single input: ["name", 0, 0]
            inputs = [inputs]
        if len(inputs) == 1:
            batch_shape = layers[inputs[0][0]]["config"].get("batch_shape")
            if batch_shape:
                shape = tuple(batch_shape[1:])
        classes = None
        outputs = inner.get("output_layers") or []
        if outputs and isinstance(outputs[0], str):
            outputs = [outputs]
        if len(outputs) == 1:
            out_cfg = layers[outputs[0][0]]["config"]
            value = out_cfg.get("filters", out_cfg.get("units"))
            classes = value if isinstance(value, int) else None
        return shape, classes
    except (KeyError, TypeError, IndexError, AttributeError):
        return None, None


def fingerprint(obj) -> str:
    """Stable short hash of a JSON-able object (settings, input lists)."""
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def file_signature(path: Path) -> list:
    """[name, size, mtime_ns]: changes when a file is replaced or edited."""
    st = Path(path).stat()
    return [Path(path).name, st.st_size, st.st_mtime_ns]


# ----------------------------------------------------------------- stage dirs
def read_manifest(stage_dir: Path, verify: bool = True) -> dict | None:
    """The manifest of a finished stage folder, or None if absent/unreadable.

    With `verify` (default), a manifest whose listed files are missing or
    have another size than recorded also gives None: the folder is not a
    finished stage, whatever the manifest says.
    """
    mpath = Path(stage_dir) / MANIFEST
    if not mpath.is_file():
        return None
    try:
        data = read_json(mpath)
    except (OSError, ValueError):
        return None
    if not (isinstance(data, dict) and data.get("complete") is True):
        return None
    if verify and manifest_problems(stage_dir, data):
        return None
    return data


def manifest_problems(stage_dir: Path, manifest: dict, required=()) -> list[str]:
    """What disagrees between a stage folder and its manifest's file list.

    Every file in manifest["files"] ({relative path: size in bytes}) must
    exist with that size; `required` names files that must exist even when
    the manifest lists none (manifests written before file lists existed).
    Returns short texts such as "images.npy is missing".
    """
    stage_dir = Path(stage_dir)
    problems = []
    files = manifest.get("files")
    if files is not None and not isinstance(files, dict):
        return [f"{MANIFEST} has no valid file list"]
    for rel, size in sorted((files or {}).items()):
        path = stage_dir / rel
        try:
            st = path.stat()
        except OSError:
            problems.append(f"{rel} is missing")
            continue
        if not stat.S_ISREG(st.st_mode):
            problems.append(f"{rel} is not a regular file")
        elif isinstance(size, int) and st.st_size != size:
            problems.append(f"{rel} has {st.st_size} bytes, the manifest records {size}")
    if files is None:
        problems += [f"{rel} is missing" for rel in required if not (stage_dir / rel).is_file()]
    return problems


_HOST = re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname()) or "host"
# .<name>.tmp-<host>-<pid>-<random> and .<name>.old-<host>-<pid>-<ns>
_OWNED = re.compile(r"\.(?:tmp|old)-(?P<host>.+)-(?P<pid>\d+)-(?P<tag>[A-Za-z0-9_]+)$")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True          # exists, owned by someone else
    except OSError:
        return False
    return True


def owner_alive(temp_name: str) -> bool:
    """Whether the run that made a temp/old stage folder may still be using it.

    Names carry the host and pid of their maker. A folder made on this host
    by a process that no longer exists is stale; one made on another host
    (shared file system) is left alone, as is one of a live process. Names
    without an owner (older versions) count as stale.
    """
    m = _OWNED.search(temp_name)
    if m is None:
        return False
    if m.group("host") != _HOST:
        return True
    return _pid_alive(int(m.group("pid")))


def _du(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


@contextmanager
def staged_dir(final_dir: Path, needed_bytes: int | None = None):
    """Build a stage's output in a temp folder, then swap it into place.

    Yields the temp folder. On normal exit the caller must have written the
    manifest (`write_manifest`); the temp folder then replaces `final_dir`
    (the old one is removed only after the new one is in place). On any
    exception the temp folder is deleted and `final_dir` is left untouched.

    The temp folder's name carries this host and pid, so a concurrent run
    never deletes it (see `clean_stale_temps`). `needed_bytes`, when known,
    is checked against the free space first; a full disk while building
    (ENOSPC) becomes DiskFullError naming the folder and the space needed.
    """
    final_dir = Path(final_dir)
    try:
        final_dir.parent.mkdir(parents=True, exist_ok=True)
    except FileExistsError as exc:
        raise FolderError(f"cannot create {final_dir}: {exc.filename} is a file, not a folder") from exc
    except OSError as exc:
        if is_no_space(exc):
            raise disk_full_error(final_dir.parent, needed_bytes, f"the new {final_dir.name} output", exc) from exc
        raise
    clean_stale_temps(final_dir)
    if needed_bytes:
        ensure_free_space(final_dir.parent, needed_bytes, f"the new {final_dir.name} output")
    try:
        tmp = Path(tempfile.mkdtemp(dir=final_dir.parent, prefix=f".{final_dir.name}.tmp-{_HOST}-{os.getpid()}-"))
    except OSError as exc:
        if is_no_space(exc):
            raise disk_full_error(final_dir.parent, needed_bytes, f"the new {final_dir.name} output", exc) from exc
        raise
    try:
        yield tmp
        if read_manifest(tmp) is None:
            raise RuntimeError(f"stage output {final_dir.name} was built without a manifest")
        old = None
        if final_dir.exists():
            old = final_dir.parent / f".{final_dir.name}.old-{_HOST}-{os.getpid()}-{time.time_ns()}"
            os.replace(final_dir, old)
        os.replace(tmp, final_dir)
        _fsync_dir(final_dir.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except OSError as exc:
        if is_no_space(exc):
            written = _du(tmp)
            shutil.rmtree(tmp, ignore_errors=True)
            need = needed_bytes or (written + 1_000_000)
            raise disk_full_error(final_dir.parent, need, f"the new {final_dir.name} output", exc) from exc
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def clean_stale_temps(final_dir: Path) -> None:
    """Remove temp/old folders that a killed run left beside `final_dir`.

    Only folders whose maker is gone are touched (see `owner_alive`): a run
    working next to us keeps its temp folder. A stale old copy whose
    replacement never arrived (`final_dir` missing) is put back instead.
    """
    parent = Path(final_dir).parent
    if not parent.is_dir():
        return
    for p in parent.glob(f".{Path(final_dir).name}.*"):
        if not p.is_dir() or not (".tmp-" in p.name or ".old-" in p.name):
            continue
        if owner_alive(p.name):
            continue
        # Only an old copy whose replacement is already in place may go;
        # if final_dir is missing, the old copy is the last good output.
        if ".old-" in p.name and not Path(final_dir).exists():
            os.replace(p, final_dir)
            continue
        shutil.rmtree(p, ignore_errors=True)


def list_files(stage_dir: Path) -> dict:
    """{relative posix path: size} of every file under `stage_dir` but the manifest."""
    stage_dir = Path(stage_dir)
    out = {}
    for root, dirs, files in os.walk(stage_dir):
        dirs.sort()
        for name in sorted(files):
            path = Path(root) / name
            rel = path.relative_to(stage_dir).as_posix()
            if rel == MANIFEST:
                continue
            out[rel] = path.stat().st_size
    return out


def write_manifest(stage_dir: Path, stage: str, fingerprint_value: str, **info) -> dict:
    """Write the manifest that marks a stage folder complete.

    Call it last: it records the name and size of every file then in the
    folder ("files"), and a stage counts as finished only while all of them
    are there with those sizes (`read_manifest`).
    """
    manifest = {
        "stage": stage,
        "complete": True,
        "fingerprint": fingerprint_value,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **info,
        "files": list_files(stage_dir),
    }
    atomic_write_json(Path(stage_dir) / MANIFEST, manifest)
    return manifest
