"""Reliability, round two (issue 13), the rest: Ctrl-C during a multi-process
augmentation, a full disk while augmenting or saving a model, atomic run
folders, validation of a run's own files (config.json, run.json, state.json,
.keras models) and of every config value against what its consumer accepts."""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import zipfile
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest

from clotseg import io as cio
from clotseg.errors import ConfigError, DiskFullError, StageError
from clotseg.io import read_manifest
from clotseg.pipeline import prepare_data
from clotseg.settings import Settings
from clotseg.stages.augment import augmented_dir
from tests.conftest import ROOT, TINY, quiet, tiny_settings, write_case, write_cohort

ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "NO_ALBUMENTATIONS_UPDATE": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}


def _project(root: Path, n=6, shape=(48, 40, 6), **overrides):
    """A project folder with its own config.py (repo defaults + tiny overrides) and a cohort."""
    root.mkdir(parents=True, exist_ok=True)
    values = {**TINY, **{k.upper(): v for k, v in overrides.items()}}
    text = (ROOT / "config.py").read_text() + "\n# test overrides\n"
    text += "".join(f"{k} = {v!r}\n" for k, v in values.items())
    (root / "config.py").write_text(text)
    s = tiny_settings(root, **overrides)
    write_cohort(s, n=n, shape=shape)
    return s


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def _group_members(pgid: int) -> list[str]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid:
                out.append(Path(stat.parent, "cmdline").read_text().replace("\0", " "))
        except (OSError, IndexError, ValueError):
            pass
    return out


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


# ------------------------------------------------------- Ctrl-C, several workers
@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads /proc to find the worker processes")
def test_ctrl_c_during_augmentation_with_two_workers_ends_within_seconds(tmp_path):
    s = _project(tmp_path / "p", n=6, shape=(32, 32, 6), input_shape=(32, 32, 2), num_workers=2,
                 target_sample_size_aug_train=150_000,   # ~25 s of work at 6,000 samples/s: Ctrl-C lands mid-run
                 augmentation="standard", context_slices=0, hard_negative_fraction=0.0)
    # start_new_session: the run and its workers form one process group, like a
    # terminal's foreground job; Ctrl-C there sends SIGINT to the whole group
    proc = subprocess.Popen([sys.executable, str(ROOT / "training.py"), "--config", str(s.root / "config.py"),
                             "--prepare-only"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=ENV, start_new_session=True,
                            # a suite started in the background (`cmd &` in a script) ignores SIGINT, and
                            # children inherit that: give the run a terminal's default disposition
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    aug = s.processed_path / "Augmented"
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            tmp = [p for p in aug.glob(".Training.tmp-*")] if aug.is_dir() else []
            workers = _children(proc.pid)
            if tmp and len(workers) >= 2 and any((t / "images.npy").is_file() for t in tmp):
                break
            time.sleep(0.05)
        assert proc.poll() is None, proc.communicate()
        assert len(workers) >= 2
        time.sleep(1.0)                     # workers well into their chunks
        assert proc.poll() is None
        started = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=60)
        took = time.monotonic() - started
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, out + err
    print(f"Ctrl-C ended the run in {took:.2f} s")
    assert took < 4.0, f"Ctrl-C took {took:.1f} s to end the run"
    assert "ClotSeg interrupted" in err and "Traceback" not in err, err
    end = time.monotonic() + 2.0     # the multiprocessing resource tracker exits once its pipe closes
    while _group_alive(proc.pid) and time.monotonic() < end:
        time.sleep(0.05)
    assert not _group_alive(proc.pid), f"a process of the run outlived it: {_group_members(proc.pid)}"
    # nothing half-written that looks complete, and no temp folder left behind
    assert read_manifest(augmented_dir(s, "Training")) is None
    assert not [p.name for p in aug.iterdir() if p.name.startswith(".")]


# ------------------------------------------------------------------ full disk
def _fake_usage(free):
    usage = namedtuple("usage", "total used free")
    return lambda path: usage(10**12, 10**12 - free, free)


def _snapshot(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _worker_survives_an_early_ctrl_c() -> tuple[bool, bool]:
    """In a pool worker before its initializer: is SIGINT blocked at start, and does a
    Ctrl-C that lands then (sent to itself) leave it running once `_init_worker` ran?"""
    from clotseg.stages.augment import _init_worker
    blocked = signal.SIGINT in signal.pthread_sigmask(signal.SIG_BLOCK, set())
    os.kill(os.getpid(), signal.SIGINT)      # raises KeyboardInterrupt here unless blocked
    _init_worker()                           # ignores it, discarding the pending one, then unblocks
    time.sleep(0.05)
    return blocked, signal.SIGINT not in signal.pthread_sigmask(signal.SIG_BLOCK, set())


@pytest.mark.skipif(not hasattr(signal, "pthread_sigmask"), reason="POSIX signal masks")
@pytest.mark.parametrize("method", ["spawn", "the pool's own"])
def test_pool_workers_start_with_ctrl_c_blocked_until_their_initializer_ignores_it(method):
    # a spawned worker re-imports the caller's script before its initializer runs; a Ctrl-C then
    # used to print a KeyboardInterrupt traceback from the worker (seen in CI on a loaded machine).
    # "the pool's own": fork where no threaded runtime is loaded, as augmentation chooses (forking
    # this process after TensorFlow started its threads can deadlock, which is why it does)
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor
    from clotseg.stages.augment import _pool_context, _sigint_blocked, _stop_pool
    context = mp.get_context("spawn") if method == "spawn" else _pool_context()
    pool = ProcessPoolExecutor(1, mp_context=context)
    future = None
    try:
        with _sigint_blocked():
            future = pool.submit(_worker_survives_an_early_ctrl_c)
        assert future.result(timeout=120) == (True, True)
    finally:
        _stop_pool(pool, [future] if future is not None else [])
    assert signal.SIGINT not in signal.pthread_sigmask(signal.SIG_BLOCK, set())


@pytest.mark.skipif(not hasattr(signal, "pthread_sigmask"), reason="POSIX signal masks")
def test_a_ctrl_c_while_the_pool_starts_reaches_the_main_process_afterwards():
    from clotseg.stages.augment import _sigint_blocked
    reached = []
    # a suite started in the background (`cmd &` in a script) ignores SIGINT: give this
    # process a terminal's Ctrl-C handling for the test
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            with _sigint_blocked():
                # sent to this thread: a signal sent to the process may be taken by any thread
                # that does not block it (TensorFlow's, once imported), and Python then raises
                # in the main thread at once; the pool's workers inherit only this thread's mask
                signal.pthread_kill(threading.get_ident(), signal.SIGINT)
                reached.append("inside")     # not raised while blocked
    finally:
        signal.signal(signal.SIGINT, previous)
    assert reached == ["inside"]
    assert signal.SIGINT not in signal.pthread_sigmask(signal.SIG_BLOCK, set())


def test_full_disk_before_augmenting_is_a_message_and_the_previous_store_stays(tmp_path, monkeypatch):
    s = tiny_settings(tmp_path)
    write_cohort(s)
    prepare_data(s, log=quiet, demo_if_empty=False)
    store = augmented_dir(s, "Training")
    before = _snapshot(store)
    changed = s.replace(aug_p=0.5)                     # only the augmentation is stale
    monkeypatch.setattr(cio.shutil, "disk_usage", _fake_usage(2000))
    with pytest.raises(DiskFullError) as info:
        prepare_data(changed, log=quiet, demo_if_empty=False)
    msg = str(info.value)
    assert "\n" not in msg and str(store.parent) in msg and "the new Training output needs about" in msg
    assert "2.0 kB free" in msg
    assert _snapshot(store) == before
    assert not [p for p in store.parent.iterdir() if p.name.startswith(".")]


def test_enospc_while_reserving_the_augmented_store_is_a_message_not_sigbus(tmp_path, monkeypatch):
    s = tiny_settings(tmp_path)
    write_cohort(s)
    prepare_data(s, log=quiet, demo_if_empty=False)
    store = augmented_dir(s, "Training")
    before = _snapshot(store)

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cio.os, "posix_fallocate", full)
    with pytest.raises(DiskFullError, match=r"the augmented Training sample store needs about \d"):
        prepare_data(s.replace(aug_p=0.5), log=quiet, demo_if_empty=False)
    assert _snapshot(store) == before
    assert not [p for p in store.parent.iterdir() if p.name.startswith(".")]


class _FakeModel:
    """Stands in for a Keras model: save() writes part of the file, then fails."""

    def __init__(self, error):
        self.error = error
        self.weights = [np.zeros((1000, 250), np.float32)]

    def save(self, path):
        Path(path).write_bytes(b"PK" + b"x" * 5000)
        raise self.error


def test_full_disk_while_saving_a_model_is_a_message_and_leaves_no_temp_file(tmp_path):
    from clotseg.stages.train import _atomic_save_model

    target = tmp_path / "run" / "Checkpoint_Files" / "last.keras"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"the previous checkpoint")
    with pytest.raises(DiskFullError) as info:
        _atomic_save_model(_FakeModel(OSError(errno.ENOSPC, "No space left on device")), target)
    msg = str(info.value)
    assert "\n" not in msg and f"not enough disk space in {target.parent}" in msg
    assert "saving last.keras needs about 2.0 MB" in msg
    assert target.read_bytes() == b"the previous checkpoint"
    assert sorted(p.name for p in target.parent.iterdir()) == ["last.keras"]
    # h5py / zipfile may wrap the OS error: still a full disk
    wrapped = RuntimeError("Unable to synchronously write data (file write failed: errno = 28, "
                           "error message = 'No space left on device')")
    with pytest.raises(DiskFullError):
        _atomic_save_model(_FakeModel(wrapped), target)
    # any other failure propagates unchanged, and the temp file is gone too
    with pytest.raises(PermissionError):
        _atomic_save_model(_FakeModel(PermissionError(errno.EACCES, "Permission denied")), target)
    assert sorted(p.name for p in target.parent.iterdir()) == ["last.keras"]


def test_new_run_dir_claims_its_folder_atomically(tmp_path, monkeypatch):
    import threading

    from clotseg.stages import train

    s = tiny_settings(tmp_path)
    monkeypatch.setattr(train.time, "strftime", lambda fmt, *a: "20260101-120000")
    (s.trainings_path / "20260101-120000").mkdir(parents=True)          # an earlier run this second
    (s.trainings_path / "20260101-120000-1").write_text("a file")      # and a file with the next name
    made, errors = [], []

    def claim():
        try:
            made.append(train.new_run_dir(s))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    names = sorted(p.name for p in made)
    assert len(set(names)) == 8 and "20260101-120000" not in names and "20260101-120000-1" not in names
    for run in made:
        assert sorted(p.name for p in run.iterdir()) == ["Best_Model", "Checkpoint_Files", "Predictions",
                                                         "Relevant_Files"]


def test_training_does_not_take_an_augmented_store_with_missing_files(tmp_path):
    from clotseg.stages.train import run_training

    s = tiny_settings(tmp_path)
    write_cohort(s)
    prepare_data(s, log=quiet, demo_if_empty=False)
    (augmented_dir(s, "Validation") / "images.npy").unlink()       # manifest still says complete
    with pytest.raises(StageError, match=r"no augmented Validation samples"):
        run_training(s, resume=False, log=quiet)
    assert not s.trainings_path.exists() or not list(s.trainings_path.iterdir())


# ------------------------------------------------- a run's own files, validated
# The fake run is trained with 2.5D context (6 input channels), whatever the
# default, so "config.py now gives other inputs" is CONTEXT_SLICES = 0.
RUN_CONTEXT = 1


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    """A tiny model of the tiny settings, saved as .keras (model + optimizer)."""
    import keras

    from myModels import build_model

    s = tiny_settings(tmp_path_factory.mktemp("m"), context_slices=RUN_CONTEXT)
    model = build_model(s.model, s.model_input_shape, s.base_filters, s.depth, s.dropout, s.num_classes)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy")
    path = tmp_path_factory.mktemp("saved") / "last.keras"
    model.save(path)
    return path


def _fake_run(s, saved_model, name="20260101-000000"):
    """A run folder as an unfinished training leaves it, without training."""
    run = s.trainings_path / name
    for sub in ("Best_Model", "Checkpoint_Files", "Relevant_Files", "Predictions"):
        (run / sub).mkdir(parents=True)
    (run / "Relevant_Files" / "config.json").write_text(s.to_json() + "\n")
    (run / "run.json").write_text(json.dumps({"status": "running", "device": "CPU", "resumed": []}))
    (run / "Checkpoint_Files" / "state.json").write_text(json.dumps(
        {"epochs_done": 1, "best_val_dice": 0.1, "best_epoch": 1, "learning_rate": 0.001,
         "early_stopping": {"wait": 0, "best": 0.1}}))
    shutil.copyfile(saved_model, run / "Checkpoint_Files" / "last.keras")
    shutil.copyfile(saved_model, run / "Best_Model" / "model.keras")
    return run


def _edit_json(path: Path, **changes):
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def _truncate(path: Path, keep: float = 0.5):
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])


@pytest.mark.parametrize("damage,pattern", [
    (lambda run: _truncate(run / "Relevant_Files" / "config.json"),
     r"the run's settings .*Relevant_Files/config\.json is not valid JSON \(truncated or edited\?\)"),
    (lambda run: (run / "Relevant_Files" / "config.json").write_text(""),
     r"config\.json is not valid JSON \(it is empty\)"),
    (lambda run: (run / "Relevant_Files" / "config.json").write_text("[1, 2]"),
     r"config\.json must hold a JSON object"),
    (lambda run: _edit_json(run / "Relevant_Files" / "config.json", LEARNIG_RATE=0.1),
     r"the run's settings .*Relevant_Files/config\.json are not valid .*unknown setting LEARNIG_RATE "
     r"\(did you mean LEARNING_RATE\?\)"),
    (lambda run: _edit_json(run / "Relevant_Files" / "config.json", BATCH_SIZE="8"),
     r"Relevant_Files/config\.json are not valid .*BATCH_SIZE must be a positive integer"),
    (lambda run: (run / "Relevant_Files" / "config.json").unlink(),
     r"the run's settings .*config\.json does not exist"),
    (lambda run: _truncate(run / "run.json"), r"the run record .*run\.json is not valid JSON"),
    (lambda run: _edit_json(run / "run.json", status=3), r"run record .*run\.json is not valid .*status must be text"),
    (lambda run: _edit_json(run / "run.json", resumed="yes"), r"run\.json .*resumed must be a list"),
    (lambda run: _truncate(run / "Checkpoint_Files" / "state.json"),
     r"the checkpoint state .*Checkpoint_Files/state\.json is not valid JSON"),
    (lambda run: _edit_json(run / "Checkpoint_Files" / "state.json", epochs_done="1"),
     r"state\.json is not valid .*epochs_done must be a whole number >= 0, got \"1\""),
    (lambda run: _edit_json(run / "Checkpoint_Files" / "state.json", early_stopping={"wait": "x"}),
     r"state\.json is not valid .*early_stopping\.wait must be a number"),
    (lambda run: _edit_json(run / "Checkpoint_Files" / "state.json", best_epoch=7),
     r"state\.json is not valid .*best_epoch 7 is after epochs_done 1"),
    (lambda run: _truncate(run / "Checkpoint_Files" / "last.keras", 0.6),
     r"the checkpoint .*last\.keras is not a readable \.keras model \(truncated or corrupt\?\)"),
    (lambda run: (run / "Checkpoint_Files" / "last.keras").unlink(), r"the checkpoint .*last\.keras does not exist"),
    (lambda run: (run / "Checkpoint_Files" / "last.keras").write_text("not a model"),
     r"last\.keras is not a readable \.keras model"),
    (lambda run: _edit_json(run / "Relevant_Files" / "config.json", INPUT_SHAPE=[32, 32, 2]),
     r"the checkpoint .*last\.keras takes inputs of shape \(64, 64, 6\) .* but the run's settings "
     r".*config\.json give \(32, 32, 6\)"),
    (lambda run: _edit_json(run / "Relevant_Files" / "config.json", NUM_CLASSES=3),
     r"last\.keras predicts 1 class\(es\) but the run's settings .*config\.json give NUM_CLASSES = 3"),
], ids=["config-truncated", "config-empty", "config-list", "config-unknown-key", "config-bad-type",
        "config-missing", "record-truncated", "record-status", "record-resumed", "state-truncated",
        "state-type", "state-counter", "state-order", "checkpoint-truncated", "checkpoint-missing",
        "checkpoint-not-zip", "checkpoint-input-shape", "checkpoint-classes"])
def test_resume_names_the_damaged_run_file_in_one_line(tmp_path, saved_model, damage, pattern):
    from clotseg.stages.train import find_resumable

    s = tiny_settings(tmp_path, context_slices=RUN_CONTEXT)
    run = _fake_run(s, saved_model)
    assert find_resumable(s) == run
    damage(run)
    with pytest.raises(StageError, match=pattern) as info:
        find_resumable(s)
    assert "\n" not in str(info.value)
    assert "config.py has" not in str(info.value)


def test_checkpoint_corrupt_inside_is_caught_by_its_checksum(tmp_path, saved_model):
    from clotseg.io import check_keras_file

    bad = tmp_path / "model.keras"
    data = bytearray(saved_model.read_bytes())
    with zipfile.ZipFile(saved_model) as zf:
        info = zf.getinfo("model.weights.h5")
    middle = info.header_offset + 100 + info.compress_size // 2
    data[middle:middle + 64] = bytes(b ^ 0xFF for b in data[middle:middle + 64])   # flipped bits in the weights
    bad.write_bytes(bytes(data))
    with pytest.raises(StageError, match=r"is corrupt \(model\.weights\.h5 inside it fails its checksum\)"):
        check_keras_file(bad)
    assert check_keras_file(saved_model) == {"input_shape": (64, 64, 6), "num_classes": 1}


def test_resume_with_other_model_inputs_in_config_py_is_refused(tmp_path, saved_model):
    from clotseg.stages.train import find_resumable

    s = tiny_settings(tmp_path, context_slices=RUN_CONTEXT)
    run = _fake_run(s, saved_model)
    with pytest.raises(StageError, match=rf"cannot resume run {run.name}: it was trained on inputs \(64, 64, 6\) "
                                         r"with NUM_CLASSES = 1, but config.py now gives inputs \(64, 64, 2\)"):
        find_resumable(s.replace(context_slices=0))
    _edit_json(run / "run.json", status="finished")
    assert find_resumable(s.replace(context_slices=0)) is None      # a finished run is not resumed


def test_resume_takes_the_latest_unfinished_run_of_its_own_fold(tmp_path, saved_model):
    from clotseg.stages.train import find_resumable

    s = tiny_settings(tmp_path, context_slices=RUN_CONTEXT)
    fold0 = _fake_run(s.replace(fold=0), saved_model, "20260101-000000")
    fold1 = _fake_run(s.replace(fold=1), saved_model, "20260101-000001")   # the latest: another fold's
    assert find_resumable(s.replace(fold=0)) == fold0
    assert find_resumable(s.replace(fold=1)) == fold1
    assert find_resumable(s) is None and find_resumable(s.replace(fold=2)) is None


@pytest.mark.parametrize("change", [{"normalization": "instance"}, {"model": "resunet"}, {"base_filters": 3},
                                    {"dropout_kind": "spatial"}, {"extra_windows_hu": {"NCCT": (10.0, 90.0)}}])
def test_resume_with_another_network_in_config_py_is_refused(tmp_path, saved_model, change):
    """The best model is exported into config.py's network: a run killed and
    resumed after MODEL, BASE_FILTERS, DEPTH, NORMALIZATION or EXTRA_WINDOWS_HU changed would
    fail there with a traceback (after DROPOUT_KIND it would train the checkpoint's
    dropout, not config.py's); it is refused up front with one line."""
    from clotseg.stages.train import find_resumable

    s = tiny_settings(tmp_path, context_slices=RUN_CONTEXT)
    run = _fake_run(s, saved_model)
    assert find_resumable(s) == run
    name = next(iter(change)).upper()
    with pytest.raises(StageError, match=rf"cannot resume run {run.name}: config.py changed its network "
                                         rf"\({name} .* -> .*\); set them back") as info:
        find_resumable(s.replace(**change))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("change,pattern", [
    ({"modality_patterns": {"NCCT": "CS<ID>_NCCT_Reg_Binary.npy", "CTA": "CS<ID>_CTA_Binary.npy"}},
     r"it was trained on modalities \['CTA', 'NCCT'\] but config\.py now names \['NCCT', 'CTA'\]; "
     r"set MODALITY_PATTERNS back"),
    ({"windows_hu": {"CTA": (-100.0, 600.0), "NCCT": (0.0, 80.0)}},
     r"config\.py changed WINDOWS_HU \(NCCT \(0\.0, 200\.0\) -> \(0\.0, 80\.0\)\); set it back"),
])
def test_resume_with_other_modalities_or_windows_is_refused(tmp_path, saved_model, change, pattern):
    """The stores are re-made from config.py: a swapped modality order or another
    window has the same input shape but feeds the checkpoint other images under
    the same channels, so resuming it is refused with one line."""
    from clotseg.stages.train import find_resumable

    s = tiny_settings(tmp_path, context_slices=RUN_CONTEXT, windows_hu={"CTA": (-100.0, 600.0), "NCCT": (0.0, 200.0)})
    run = _fake_run(s, saved_model)
    assert find_resumable(s) == run
    with pytest.raises(StageError, match=rf"cannot resume run {run.name}: " + pattern) as info:
        find_resumable(s.replace(**change))
    assert "\n" not in str(info.value)


def test_run_settings_load_checked_for_testing_too(tmp_path, saved_model):
    from clotseg.stages.train import load_run_settings

    s = tiny_settings(tmp_path, context_slices=RUN_CONTEXT)
    run = _fake_run(s, saved_model)
    assert load_run_settings(run, s.root) == s.replace(presets={})
    _edit_json(run / "Relevant_Files" / "config.json", WINDOWS_HU={"CTA": [600, -100], "NCCT": None})
    with pytest.raises(StageError, match=r"config\.json are not valid .*WINDOWS_HU\['CTA'\] must be \(low, high\)"):
        load_run_settings(run, s.root)


@pytest.mark.slow
def test_training_resume_with_a_truncated_state_exits_2_with_one_line(tmp_path, saved_model):
    s = _project(tmp_path / "p", n=4)
    run = _fake_run(s, saved_model)
    _truncate(run / "Checkpoint_Files" / "state.json")
    done = subprocess.run([sys.executable, str(ROOT / "training.py"), "--config", str(s.root / "config.py"),
                           "--resume"], capture_output=True, text=True, env=ENV, timeout=300)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    last = [ln for ln in done.stderr.splitlines() if ln.strip()][-1]
    assert last.startswith("ClotSeg stopped: the checkpoint state ") and "state.json is not valid JSON" in last


# ------------------------------------ config values checked against their consumers
@pytest.mark.parametrize("values,pattern", [
    ({"RANDOM_SEED": 2**32}, r"RANDOM_SEED must be an integer from 0 to 2\*\*32 - 1"),
    ({"RANDOM_SEED": True}, r"RANDOM_SEED must be an integer"),
    ({"TRAIN_PERC": 10**400}, r"TRAIN_PERC must be in \(0, 1\)"),
    ({"INPUT_SHAPE": (96, 96, 2), "DEPTH": 6}, r"INPUT_SHAPE rows and cols must be multiples of 2\*\*DEPTH = 64"),
    ({"INPUT_SHAPE": [64, 64.0, 2]}, r"INPUT_SHAPE must be \(rows, cols, channels\) of positive integers"),
    ({"INPUT_SHAPE": (8192, 8192, 2)}, r"INPUT_SHAPE rows and cols must be at most 4096"),
    ({"BATCH_SIZE": 64, "TARGET_SAMPLE_SIZE_AUG_TRAIN": 40},
     r"BATCH_SIZE 64 is larger than TARGET_SAMPLE_SIZE_AUG_TRAIN 40"),
    ({"TARGET_SAMPLE_SIZE_AUG_VAL": 10**12}, r"TARGET_SAMPLE_SIZE_AUG_VAL must be at most 10,000,000"),
    ({"WINDOWS_HU": {"CTA": (True, 600), "NCCT": (0, 80)}}, r"WINDOWS_HU\['CTA'\] must be \(low, high\)"),
    ({"WINDOWS_HU": {"CTA": (-1e300, 1e300), "NCCT": (0, 80)}}, r"within \+-1e\+06"),
    ({"WINDOWS_HU": {"CTA": (0, 1e-9), "NCCT": (0, 80)}}, r"at least 0\.001 apart"),
    ({"WINDOWS_HU": {"CTA": ("-100", 600), "NCCT": (0, 80)}}, r"WINDOWS_HU\['CTA'\]"),
    ({"WINDOWS_HU": [(-100, 600), (0, 80)]}, r"WINDOWS_HU must be a dict"),
    ({"VOXEL_SPACING_MM": (0.5, True, 1.0)}, r"VOXEL_SPACING_MM must be None or three positive numbers"),
    ({"NUM_CLASSES": 256}, r"NUM_CLASSES must be an integer from 1 to 255"),
    ({"NUM_WORKERS": 100000}, r"NUM_WORKERS must be 0 \(all cores\) or a positive integer up to 256"),
    ({"BASE_FILTERS": 4096, "DEPTH": 3}, r"BASE_FILTERS \* 2\*\*DEPTH .* at most 8192"),
    ({"BOOTSTRAP_RESAMPLES": 10**9}, r"BOOTSTRAP_RESAMPLES must be an integer from 100 to 1,000,000"),
    ({"LOSS": ["dice"]}, r"LOSS must be one of"),
    ({"MODEL": np.array(["unet"])}, r"MODEL must be one of"),
    ({"JIT_COMPILE": 1}, r"JIT_COMPILE must be 'auto', True or False"),
    ({"MIXED_PRECISION": "yes"}, r"MIXED_PRECISION must be 'auto', True or False"),
    ({"DISTRIBUTION": np.zeros(3)}, r"DISTRIBUTION must be None or 'data_parallel'"),
    ({"TTA_FLIPS": 1}, r"TTA_FLIPS must be None"),
    ({"TEST_RUN": ".."}, r"TEST_RUN must be None, a run folder name \(no path separators\) or a list"),
    ({"PROCESSED_DIR": "DL_vol_files/binary"}, r"PROCESSED_DIR .* must not be or lie inside VOLUME_DIR"),
    ({"TRAININGS_DIR": "DL_seg_files/binary/runs"}, r"TRAININGS_DIR .* must not be or lie inside MASK_DIR"),
    ({"VOLUME_DIR": "a\0b"}, r"VOLUME_DIR must be a folder path"),
    ({"MASK_PATTERN": "P<ID>_seg.npy"}, r"must have the same case prefix before <ID>"),
    ({"CASE_PREFIX": "P"}, r"CASE_PREFIX 'P' must be the text before <ID> in the file patterns \('CS'\)"),
    ({"MASK_PATTERN": ".CS<ID>_seg.npy"}, r"MASK_PATTERN must be a file name with one <ID>"),
    ({"MODALITY_PATTERNS": {"CT/A": "CS<ID>_a.npy", "NCCT": "CS<ID>_b.npy"}},
     r"MODALITY_PATTERNS names must be non-empty text without slashes"),
    ({"PRESET": ["demo"]}, r"PRESET must be None or the name \(text\) of an entry of PRESETS"),
    ({"PRESETS": [("demo", {})]}, r"PRESETS must be a dict \{name: \{SETTING: value, \.\.\.\}\}, got a list"),
    ({"PRESETS": {"demo": ("BATCH_SIZE", 8)}}, r"PRESETS\['demo'\] must be a dict \{SETTING: value\}, got a tuple"),
    ({"PRESETS": {"demo": {3: 8}}}, r"PRESETS\['demo'\] has a setting name that is not text: 3"),
    ({"PRESETS": {"demo": {"BACH_SIZE": 8}}}, r"PRESETS\['demo'\] sets unknown setting BACH_SIZE \(did you mean BATCH_SIZE\?\)"),
    ({"PRESETS": {"demo": {"PRESETS": {}}}}, r"PRESETS\['demo'\] cannot set PRESETS"),
    # a preset that is not chosen is checked too, with the file's own values under it
    ({"PRESETS": {"ok": {"BATCH_SIZE": 8}, "gpu": {"DEPTH": 7, "INPUT_SHAPE": "256"}}},
     r"PRESETS\['gpu'\]: DEPTH must be an integer.*PRESETS\['gpu'\]: INPUT_SHAPE must be \(rows, cols, channels\)"),
    ({"PRESETS": {"gpu": {"DEPTH": 6, "INPUT_SHAPE": (96, 96, 2)}}},
     r"PRESETS\['gpu'\]: INPUT_SHAPE rows and cols must be multiples of 2\*\*DEPTH = 64"),
])
def test_config_values_are_checked_against_what_their_consumers_accept(tmp_path, values, pattern):
    base = {**TINY, "INPUT_SHAPE": (64, 64, 2)}
    with pytest.raises(ConfigError) as info:
        Settings.from_dict({**base, **values}, root=tmp_path)
    assert __import__("re").search(pattern, " | ".join(info.value.problems)), info.value.problems


def test_config_py_and_each_of_its_presets_pass(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("cfg", ROOT / "config.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    for name in [None, *mod.PRESETS]:
        Settings.from_module(mod, preset=name)


def test_boundary_values_that_pass_work_in_their_consumers():
    """The limits the validation allows are accepted by the libraries that use them."""
    import keras

    from myModels import build_model

    keras.utils.set_random_seed(2**32 - 1)              # RANDOM_SEED's upper bound
    for model in ("unet", "resunet"):
        for depth in (1, 6):                             # INPUT_SHAPE a multiple of 2**DEPTH, both models
            side = 2 ** depth
            net = build_model(model, (side, 3 * side, 2), 1, depth, 0.0, 255)     # NUM_CLASSES up to 255
            assert net.output_shape == (None, side, 3 * side, 255)
