"""Reliability, round two (issue 13): concurrent runs, full disk, demo cohort
safety and validation of every file read, each on a tiny cohort."""

import errno
import json
import os
import shutil
import subprocess
import sys
import time
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest

from clotseg import io as cio
from clotseg import locking
from clotseg.cli import check_project_folders, run_main
from clotseg.errors import DiskFullError, FolderError, InputDataError, ProjectBusyError, StageError
from clotseg.io import atomic_save_npy, clean_stale_temps, read_manifest, staged_dir, write_manifest
from clotseg.pipeline import ensure_demo_cohort, prepare_data
from clotseg.stages.slicing import sliced_dir
from tests.conftest import ROOT, TINY, quiet, tiny_settings, write_case, write_cohort

ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "NO_ALBUMENTATIONS_UPDATE": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}


def _run(settings, **kw):
    return prepare_data(settings, log=quiet, demo_if_empty=False, **kw)


def _project(root: Path, n=6, **overrides):
    """A project folder with its own config.py (repo defaults + tiny overrides) and a cohort."""
    root.mkdir(parents=True, exist_ok=True)
    values = {**TINY, **{k.upper(): v for k, v in overrides.items()}}
    text = (ROOT / "config.py").read_text() + "\n# test overrides\n"
    text += "".join(f"{k} = {v!r}\n" for k, v in values.items())
    (root / "config.py").write_text(text)
    s = tiny_settings(root, **overrides)
    write_cohort(s, n=n)
    return s


def _training(root: Path, *args, env=None):
    return subprocess.Popen([sys.executable, str(ROOT / "training.py"), "--config", str(root / "config.py"),
                             "--prepare-only", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**ENV, **(env or {})})


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _one_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    assert "Traceback" not in text
    return lines[-1]


# ------------------------------------------------------------ 1. concurrency
_HOLDER = """
import sys, time
sys.path.insert(0, {root!r})
from clotseg.locking import acquire
acquire({folder!r}, wait_s=0)
print("locked", flush=True)
time.sleep(60)
"""


def test_lock_names_its_holder_and_is_released_when_the_holder_dies(tmp_path):
    folder = tmp_path / "Processed"
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER.format(root=str(ROOT), folder=str(folder))],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        record = locking.read_holder(folder / locking.LOCK_NAME)
        assert record["pid"] == holder.pid and record["host"] and "time.sleep" not in record["command"]
        started = time.monotonic()
        with pytest.raises(ProjectBusyError) as info:
            locking.acquire(folder, wait_s=0.3, log=quiet)
        assert time.monotonic() - started >= 0.3
        msg = str(info.value)
        assert f"pid {holder.pid}" in msg and str(folder) in msg and "\n" not in msg
    finally:
        holder.kill()          # SIGKILL: no cleanup code runs, the kernel drops the flock
        holder.wait()
    locking.acquire(folder, wait_s=0, log=quiet)
    try:
        assert locking.read_holder(folder / locking.LOCK_NAME)["pid"] == os.getpid()
        # re-entrant in one process
        with locking.project_lock(folder, wait_s=0, log=quiet):
            assert locking.is_held(folder)
        assert locking.is_held(folder)
    finally:
        locking.release(folder)
    assert not locking.is_held(folder)
    assert locking.read_holder(folder / locking.LOCK_NAME) is None     # record cleared on release


def test_second_run_waits_then_refuses_with_one_line_naming_the_holder(tmp_path):
    s = _project(tmp_path / "p")
    with locking.project_lock(s.processed_path, wait_s=0, log=quiet):
        proc = _training(s.root, env={"CLOTSEG_LOCK_WAIT_S": "0.5"})
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, out + err
    line = _one_line(err)
    assert line.startswith("ClotSeg stopped: another ClotSeg run is using")
    assert f"pid {os.getpid()}" in line and "waited 0.5 s" in line
    assert not (s.processed_path / "Sliced").exists()


@pytest.mark.slow
def test_two_runs_started_at_once_both_succeed_with_complete_stores(tmp_path):
    s = _project(tmp_path / "p")
    for cid in range(7, 19):
        write_case(s, cid, shape=(64, 64, 30))
    procs = [_training(s.root, env={"CLOTSEG_LOCK_WAIT_S": "120"}) for _ in range(2)]
    results = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, results):
        assert p.returncode == 0, out + err
    assert any("up to date" in out for out, _ in results)        # the second reused the first one's output
    for stage in ("Sliced", "Augmented"):
        for cohort in ("Training", "Validation"):
            store = s.processed_path / stage / cohort
            man = read_manifest(store)
            assert man is not None and {"images.npy", "masks.npy", "samples.csv"} <= set(man["files"])
            assert np.load(store / "images.npy", mmap_mode="r").shape[0] == man["n_samples"]
        assert not [p.name for p in (s.processed_path / stage).iterdir() if p.name.startswith(".")]


def test_a_live_runs_temp_folder_is_never_deleted_a_dead_ones_is(tmp_path):
    final = tmp_path / "Sliced" / "Training"
    dead = final.parent / f".Training.tmp-{cio._HOST}-{_dead_pid()}-abc"
    with staged_dir(final) as tmp:
        (tmp / "images.npy").write_bytes(b"x" * 100)
        dead.mkdir()
        clean_stale_temps(final)          # what a second run does before building the same stage
        assert (tmp / "images.npy").is_file()
        assert not dead.exists()
        write_manifest(tmp, "slice", "k")
    assert (final / "images.npy").stat().st_size == 100
    other_host = final.parent / ".Training.tmp-otherhost-1-abc"
    other_host.mkdir()
    clean_stale_temps(final)
    assert other_host.exists()            # cannot tell whether its owner lives: left alone


def test_stage_with_a_missing_or_resized_file_is_not_up_to_date(tmp_path):
    s = tiny_settings(tmp_path)
    write_cohort(s)
    _run(s)
    store = sliced_dir(s, "Training")
    man = read_manifest(store)
    assert man["files"]["images.npy"] == (store / "images.npy").stat().st_size
    good = (store / "images.npy").read_bytes()
    # what the race left: a manifest saying complete, a samples.csv and no arrays
    (store / "images.npy").unlink()
    (store / "masks.npy").unlink()
    assert read_manifest(store) is None
    with pytest.raises(StageError, match=r"SLICE_EXTRACT is False but .*Training is incomplete \(images\.npy is missing"):
        _run(s.replace(slice_extract=False))
    messages = []
    prepare_data(s, log=messages.append, demo_if_empty=False)
    assert any("incomplete" in m and "rebuilding" in m for m in messages)
    assert (store / "images.npy").read_bytes() == good
    # a truncated file (size differs from the manifest) is not taken either
    aug = s.processed_path / "Augmented" / "Training" / "masks.npy"
    aug.write_bytes(aug.read_bytes()[:-10])
    with pytest.raises(StageError, match=r"masks\.npy has \d+ bytes, the manifest records"):
        _run(s.replace(data_aug=False))


# ------------------------------------------------------------- 2. demo cohort
def test_demo_cohort_is_not_written_beside_upper_case_npy_files_or_a_lone_sidecar(tmp_path):
    s = tiny_settings(tmp_path)
    write_case(s, 1)
    for p in list(s.volume_path.iterdir()) + list(s.mask_path.iterdir()):
        p.rename(p.with_name(p.name.lower().replace(".npy", ".NPY")))
    (s.volume_path / "CS1.json").write_text('{"spacing_mm": [0.4, 0.4, 1.0], "mine": true}')
    before = {p.name: p.read_bytes() for p in s.volume_path.iterdir()}
    assert ensure_demo_cohort(s, log=quiet) is False
    assert {p.name: p.read_bytes() for p in s.volume_path.iterdir()} == before
    other = tiny_settings(tmp_path / "b")
    other.volume_path.mkdir(parents=True)
    (other.volume_path / "notes.txt").write_text("my notes")
    assert ensure_demo_cohort(other, log=quiet) is False
    assert [p.name for p in other.volume_path.iterdir()] == ["notes.txt"]


def test_demo_cohort_is_written_into_a_fresh_clone_whose_folders_hold_only_gitkeep(tmp_path, monkeypatch):
    """The repository keeps its empty data folders with a .gitkeep: that is
    not data, so a fresh clone gets the demo cohort (and keeps the .gitkeep)."""
    import clotseg.pipeline as pipeline

    monkeypatch.setattr(pipeline, "DEMO_CASES", 3)
    s = tiny_settings(tmp_path)
    for folder in (s.volume_path, s.mask_path):
        folder.mkdir(parents=True)
        (folder / ".gitkeep").write_text("")
    assert ensure_demo_cohort(s, log=quiet) is True
    assert len(list(s.volume_path.glob("CS*_CTA_Binary.npy"))) == 3
    assert (s.volume_path / ".gitkeep").is_file()


def test_demo_cohort_never_overwrites_a_file_that_appears_meanwhile(tmp_path, monkeypatch):
    import clotseg.phantom as phantom
    import clotseg.pipeline as pipeline

    s = tiny_settings(tmp_path)
    real = phantom.write_cohort

    def racing(vol, seg, n, **kw):
        out = real(vol, seg, n, progress=False, **kw)
        s.volume_path.mkdir(parents=True, exist_ok=True)
        (s.volume_path / "CS2.json").write_text("user data")      # another program writes meanwhile
        return out

    monkeypatch.setattr(pipeline, "DEMO_CASES", 3)
    monkeypatch.setattr(phantom, "write_cohort", racing)
    with pytest.raises(InputDataError, match=r"CS2\.json appeared meanwhile"):
        ensure_demo_cohort(s, log=quiet)
    assert (s.volume_path / "CS2.json").read_text() == "user data"
    assert sorted(p.name for p in s.volume_path.iterdir()) == ["CS2.json"]
    assert not [p for p in s.volume_path.parent.iterdir() if ".demo-" in p.name]
    monkeypatch.setattr(phantom, "write_cohort", lambda vol, seg, n, **kw: real(vol, seg, n, progress=False, **kw))
    (s.volume_path / "CS2.json").unlink()
    assert ensure_demo_cohort(s, log=quiet) is True
    assert len(list(s.volume_path.glob("*_CTA_Binary.npy"))) == 3
    assert len(list(s.mask_path.glob("*.npy"))) == 3


# ---------------------------------------------------------------- 4. full disk
def _fake_usage(free):
    usage = namedtuple("usage", "total used free")
    return lambda path: usage(10**12, 10**12 - free, free)


def test_full_disk_before_slicing_is_a_message_and_the_previous_store_stays(tmp_path, monkeypatch):
    s = tiny_settings(tmp_path)
    write_cohort(s)
    _run(s)
    store = sliced_dir(s, "Training")
    before = {p.name: p.read_bytes() for p in store.iterdir()}
    changed = s.replace(windows_hu={"CTA": (-50, 500), "NCCT": (0, 80)})     # forces a re-slice
    monkeypatch.setattr(cio.shutil, "disk_usage", _fake_usage(1000))
    with pytest.raises(DiskFullError) as info:
        _run(changed)
    msg = str(info.value)
    assert "\n" not in msg and str(store.parent) in msg and "the new Training output needs about" in msg and "1.0 kB free" in msg
    assert {p.name: p.read_bytes() for p in store.iterdir()} == before
    assert not [p for p in store.parent.iterdir() if p.name.startswith(".")]


def test_enospc_while_reserving_the_store_is_a_message_not_sigbus(tmp_path, monkeypatch):
    s = tiny_settings(tmp_path)
    write_cohort(s)

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cio.os, "posix_fallocate", full)
    with pytest.raises(DiskFullError, match=r"Training sample store needs about \d"):
        _run(s)
    assert not sliced_dir(s, "Training").exists()
    assert not [p for p in sliced_dir(s, "Training").parent.iterdir() if p.name.startswith(".")]


def test_enospc_in_atomic_writes_and_stage_folders_keeps_the_old_content(tmp_path, monkeypatch):
    target = tmp_path / "out" / "a.npy"
    atomic_save_npy(target, np.arange(5))
    old = target.read_bytes()

    def full(*_a, **_k):
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(np, "save", full)
        with pytest.raises(DiskFullError) as info:
            atomic_save_npy(target, np.zeros(1000, np.float64))
    assert f"not enough disk space in {target.parent}" in str(info.value)
    assert "needs about 8.1 kB" in str(info.value)
    assert target.read_bytes() == old and sorted(p.name for p in target.parent.iterdir()) == ["a.npy"]

    final = tmp_path / "stage"
    with staged_dir(final) as tmp:
        (tmp / "x").write_text("old")
        write_manifest(tmp, "t", "k")
    with pytest.raises(DiskFullError, match=rf"{final.parent}.*needs about"):
        with staged_dir(final) as tmp:
            (tmp / "x").write_bytes(b"new" * 1000)
            raise OSError(errno.ENOSPC, "No space left on device")
    assert (final / "x").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "stage"]


def test_scripts_turn_enospc_into_one_line_exit_2(capsys):
    def main():
        raise OSError(errno.ENOSPC, "No space left on device", "/x/Trainings/r/model.keras")

    with pytest.raises(SystemExit) as info:
        run_main(main)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "/x/Trainings/r/model.keras" in _one_line(err) and "disk is full" in err


# ------------------------------------------------------- 5. validation on load
@pytest.mark.parametrize("text,pattern", [
    ("{not json", r"CS2\.json is not valid JSON"),
    ("[0.5, 0.5, 1.0]", r"CS2\.json must hold a JSON object"),
    ('{"spacing_mm": [0.5, 0.5]}', r"CS2\.json: spacing_mm must be three finite positive numbers"),
    ('{"spacing_mm": [0.5, -1, 1]}', r"spacing_mm must be three finite positive"),
    ('{"spacing_mm": [0.5, NaN, 1]}', r"spacing_mm must be three finite positive"),
    ('{"spacing_mm": ["0.5", 0.5, 1]}', r"spacing_mm must be three finite positive"),
], ids=["invalid", "not-object", "two", "negative", "nan", "string"])
def test_bad_sidecar_is_refused_before_any_work(tmp_path, text, pattern):
    s = tiny_settings(tmp_path)
    write_cohort(s, n=4)
    (s.volume_path / "CS2.json").write_text(text)
    with pytest.raises(InputDataError, match=pattern):
        _run(s)
    assert not (s.processed_path / "Sliced").exists()


def test_sidecar_edited_after_a_good_run_is_checked_again(tmp_path):
    s = tiny_settings(tmp_path)
    write_cohort(s, n=4)
    (s.volume_path / "cs3.JSON").write_text('{"spacing_mm": [0.5, 0.5, 1.0]}')
    _run(s)
    (s.volume_path / "cs3.JSON").write_text('{"spacing_mm": [0.5, 0.5, 0]}')
    with pytest.raises(InputDataError, match=r"case CS3: sidecar .*cs3\.JSON: spacing_mm"):
        _run(s)


def test_symlink_loops_devices_and_fifos_are_named_not_called_missing(tmp_path):
    s = tiny_settings(tmp_path)
    write_cohort(s, n=4)
    loop = s.volume_path / "CS2_CTA_Binary.npy"
    loop.unlink()
    loop.symlink_to(loop.name)
    dev = s.volume_path / "CS3_NCCT_Reg_Binary.npy"
    dev.unlink()
    dev.symlink_to("/dev/zero")
    fifo = s.mask_path / "CS4_seg_corrected_binary.npy"
    fifo.unlink()
    os.mkfifo(fifo)
    with pytest.raises(InputDataError) as info:
        _run(s)
    msg = str(info.value)
    assert "CS2_CTA_Binary.npy is a symbolic link loop" in msg
    assert "CS3_NCCT_Reg_Binary.npy is a character device" in msg and "/dev/zero" in msg
    assert "CS4_seg_corrected_binary.npy is a named pipe (FIFO)" in msg
    assert "missing" not in msg and "no mask" not in msg


def test_project_folders_that_are_files_or_read_only(tmp_path, monkeypatch):
    s = tiny_settings(tmp_path)
    write_cohort(s, n=4)
    s.trainings_path.write_text("oops")
    with pytest.raises(FolderError, match=r"TRAININGS_DIR .*Trainings is a file, not a folder"):
        check_project_folders(s)
    s.trainings_path.unlink()
    s.processed_path.write_text("oops")
    with pytest.raises(FolderError, match=r"PROCESSED_DIR .*Processed is a file, not a folder"):
        check_project_folders(s)
    with pytest.raises(FolderError, match=r"PROCESSED_DIR .*is a file"):
        _run(s)
    s.processed_path.unlink()
    s.processed_path.mkdir()
    real = cio.tempfile.mkstemp

    def read_only(*a, dir=None, **k):
        if Path(dir) == s.processed_path:
            raise PermissionError(errno.EACCES, "Permission denied", str(dir))
        return real(*a, dir=dir, **k)

    with monkeypatch.context() as m:
        m.setattr(cio.tempfile, "mkstemp", read_only)
        with pytest.raises(FolderError, match=r"PROCESSED_DIR .*Processed is not writable"):
            _run(s)
    assert list(s.processed_path.iterdir()) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_processed_folder_really(tmp_path):
    s = tiny_settings(tmp_path)
    write_cohort(s, n=4)
    s.processed_path.mkdir()
    s.processed_path.chmod(0o555)
    try:
        with pytest.raises(FolderError, match="not writable"):
            _run(s)
    finally:
        s.processed_path.chmod(0o755)


def test_trainings_path_that_is_a_file_exits_2_with_one_line(tmp_path):
    s = _project(tmp_path / "p", n=4)
    s.trainings_path.write_text("not a folder")
    proc = _training(s.root)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2
    assert "TRAININGS_DIR" in _one_line(err) and "is a file, not a folder" in err
    assert not s.processed_path.exists()


def test_case_too_large_for_memory_is_refused_from_the_header(tmp_path, monkeypatch):
    import clotseg.cohort as cohort

    s = tiny_settings(tmp_path)
    write_cohort(s, n=4)
    loaded = []
    real_asarray = cohort.np.asarray
    monkeypatch.setattr(cohort, "available_memory_bytes", lambda: 50_000)
    monkeypatch.setattr(cohort.np, "asarray", lambda *a, **k: loaded.append(1) or real_asarray(*a, **k))
    with pytest.raises(InputDataError, match=r"case CS1 is too large for the memory available: .*needs about "
                                             r"[\d.]+ kB, 50\.0 kB available"):
        _run(s)
    assert not loaded                                   # refused before reading any voxel
    assert not (s.processed_path / "Sliced").exists()


def test_cohort_with_all_masks_empty_is_refused(tmp_path):
    s = tiny_settings(tmp_path)
    write_cohort(s, n=4, clot_free=(1, 2, 3, 4))
    with pytest.raises(InputDataError, match=r"every mask of the cohort is empty: none of the 4 case"):
        _run(s)
    assert not (s.processed_path / "Sliced").exists() and not (s.processed_path / "split.json").exists()


# --- .npy loads from several threads (testing.py's loader pool) -------------------------------

def _race_error():
    return SystemError(f"{cio.AST_RACE} (before=39, after=36)")


def test_npy_load_tries_again_after_the_ast_race_of_cpython(tmp_path, monkeypatch):
    path = tmp_path / "CS1_CTA_Binary.npy"
    np.save(path, np.arange(6, dtype=np.int16).reshape(2, 3))
    real, calls = np.load, []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise _race_error()
        return real(*args, **kwargs)

    monkeypatch.setattr(np, "load", flaky)
    np.testing.assert_array_equal(cio.load_npy(path), np.arange(6).reshape(2, 3))
    assert len(calls) == 2


@pytest.mark.parametrize("error, tries", [(_race_error, cio.AST_RACE_TRIES), (lambda: SystemError("other"), 1)])
def test_npy_load_gives_up_on_a_lasting_race_and_never_retries_other_errors(tmp_path, monkeypatch, error, tries):
    path = tmp_path / "CS1_CTA_Binary.npy"
    np.save(path, np.zeros(3))
    calls = []

    def broken(*args, **kwargs):
        calls.append(1)
        raise error()

    monkeypatch.setattr(np, "load", broken)
    with pytest.raises(SystemError):
        cio.load_npy(path)
    assert len(calls) == tries


def test_npy_loads_from_threads_parse_one_at_a_time(tmp_path, monkeypatch):
    import threading
    from concurrent.futures import ThreadPoolExecutor

    path = tmp_path / "CS1_CTA_Binary.npy"
    np.save(path, np.ones((4, 4), np.float32))
    real, inside, most, guard = np.load, [0], [0], threading.Lock()

    def watched(*args, **kwargs):
        with guard:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
        time.sleep(0.002)          # long enough for the other threads to arrive
        try:
            return real(*args, **kwargs)
        finally:
            with guard:
                inside[0] -= 1

    monkeypatch.setattr(np, "load", watched)
    with ThreadPoolExecutor(4) as pool:
        arrays = list(pool.map(lambda _: cio.load_npy(path), range(16)))
    assert all(a.shape == (4, 4) for a in arrays)
    assert most[0] == 1


def test_npy_load_reads_the_data_outside_the_parse_lock_into_an_owned_array(tmp_path, monkeypatch):
    # the lock covers the header parse (np.load mapping the file); the copy into memory is made
    # after it, so loader threads read side by side, and the caller gets a plain writable array
    path = tmp_path / "CS1_CTA_Binary.npy"
    np.save(path, np.arange(12, dtype=np.int16).reshape(3, 4))
    real, held = np.array, []

    def spy(*args, **kwargs):
        held.append(cio._NPY_LOCK.locked())
        return real(*args, **kwargs)

    monkeypatch.setattr(np, "array", spy)
    arr = cio.load_npy(path)
    monkeypatch.undo()
    assert held and not any(held)
    assert type(arr) is np.ndarray and arr.flags.writeable and arr.flags.owndata
    np.testing.assert_array_equal(arr, np.arange(12).reshape(3, 4))
    arr[0, 0] = 7                                   # never written back to the file
    assert cio.load_npy(path)[0, 0] == 0
    assert isinstance(cio.load_npy(path, mmap=True), np.memmap)
