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
import os
import re
import shutil
import socket
import stat
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from numpy.lib.format import open_memmap

from clotseg.errors import DiskFullError, FolderError, InputDataError

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
    problem = special_file_problem(path)
    if problem is not None:
        raise InputDataError(f"{label} {problem}")
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
