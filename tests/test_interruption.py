"""Real subprocesses killed with SIGKILL mid-stage, then rerun to completion."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from clotseg.io import read_json
from clotseg.pipeline import prepare_data
from clotseg.stages.augment import augmented_dir
from clotseg.stages.slicing import sliced_dir
from tests.conftest import ROOT, TINY, quiet, tiny_settings, write_case, write_cohort

pytestmark = pytest.mark.slow


def make_project(root: Path, **overrides):
    """A project folder with its own config.py (repo defaults + tiny overrides)."""
    root.mkdir(parents=True, exist_ok=True)
    values = {**TINY, **{k.upper(): v for k, v in overrides.items()}}
    text = (ROOT / "config.py").read_text() + "\n# test overrides (a later assignment wins)\n"
    text += "".join(f"{k} = {v!r}\n" for k, v in values.items())
    (root / "config.py").write_text(text)
    s = tiny_settings(root, **overrides)
    write_cohort(s, n=6)
    return s


def start(root: Path, *args):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "NO_ALBUMENTATIONS_UPDATE": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.Popen([sys.executable, str(ROOT / "training.py"), "--config", str(root / "config.py"), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)


def kill_when(proc, condition, timeout=120):
    """SIGKILL `proc` as soon as `condition()` is true; return whether it was."""
    end = time.time() + timeout
    while time.time() < end and proc.poll() is None:
        if condition():
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.005)
    proc.kill()
    proc.wait()
    return False


def _bigger_cohort(settings):
    """Extra 64x64x40 cases, so that slicing takes long enough to be killed."""
    for cid in range(7, 41):
        write_case(settings, cid, shape=(64, 64, 40))


@pytest.mark.parametrize("store_dir,overrides,extra", [
    (sliced_dir, {}, _bigger_cohort),
    (augmented_dir, {"target_sample_size_aug_train": 3000, "num_workers": 1}, lambda s: None),
], ids=["slicing", "augmentation"])
def test_stage_killed_midway_reruns_to_identical_output(tmp_path, store_dir, overrides, extra):
    s = make_project(tmp_path / "killed", **overrides)
    extra(s)
    proc = start(s.root, "--prepare-only")
    parent = store_dir(s, "Training").parent
    assert kill_when(proc, lambda: parent.is_dir() and any(p.name.startswith(".Training.tmp-")
                                                            for p in parent.iterdir()))
    assert not (store_dir(s, "Training") / "manifest.json").exists()
    rerun = start(s.root, "--prepare-only")
    out, _ = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, out
    assert not [p for p in parent.iterdir() if p.name.startswith(".")]   # temp folders cleaned
    ref = tiny_settings(tmp_path / "reference", **overrides)
    write_cohort(ref, n=6)
    extra(ref)
    prepare_data(ref, log=quiet, demo_if_empty=False)
    for name in ("images.npy", "masks.npy", "samples.csv"):
        assert (store_dir(s, "Training") / name).read_bytes() == (store_dir(ref, "Training") / name).read_bytes()


def test_half_written_slice_stage_is_never_taken_as_done(tmp_path):
    s = tiny_settings(tmp_path)
    write_cohort(s)
    prepare_data(s, log=quiet, demo_if_empty=False)
    good = (sliced_dir(s, "Training") / "images.npy").read_bytes()
    # what a kill during slicing leaves: a temp folder with a partial array, no manifest
    stale = sliced_dir(s, "Training").parent / ".Training.tmp-dead"
    stale.mkdir()
    np.save(stale / "images.npy", np.zeros((3, 64, 64, 2), np.uint8))
    # ... and a kill between the two renames of the swap: only the old copy exists
    sliced_dir(s, "Validation").rename(sliced_dir(s, "Validation").parent / ".Validation.old-1-2")
    prepare_data(s.replace(slice_extract=False, data_aug=False), log=quiet, demo_if_empty=False)
    assert not stale.exists()
    assert (sliced_dir(s, "Validation") / "manifest.json").is_file()
    assert (sliced_dir(s, "Training") / "images.npy").read_bytes() == good


def test_training_killed_after_an_epoch_resumes_with_state(tmp_path):
    s = make_project(tmp_path / "p", epochs=4, target_sample_size_aug_train=32, target_sample_size_aug_val=8)
    proc = start(s.root)
    runs = s.trainings_path

    def one_epoch_done():
        for state in runs.glob("*/Checkpoint_Files/state.json"):
            try:
                return read_json(state)["epochs_done"] >= 1
            except (OSError, ValueError):
                return False
        return False

    assert kill_when(proc, one_epoch_done, timeout=240)
    run = next(runs.iterdir())
    done_at_kill = read_json(run / "Checkpoint_Files" / "state.json")["epochs_done"]
    assert done_at_kill < 4
    rerun = start(s.root, "--resume")
    out, _ = rerun.communicate(timeout=400)
    assert rerun.returncode == 0, out
    assert "resuming run" in out
    assert [p.name for p in runs.iterdir()] == [run.name]          # no second run folder
    record = read_json(run / "run.json")
    assert record["status"] == "finished" and record["epochs_done"] == 4
    assert record["resumed"][0]["from_epoch"] == done_at_kill
    epochs = [line.split(",")[0] for line in (run / "history.csv").read_text().splitlines()[1:]]
    assert epochs == ["0", "1", "2", "3"]                            # each epoch once
    # ... and testing.py, as a user runs it, reports on the resumed run's model
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run([sys.executable, str(ROOT / "testing.py"), "--config", str(s.root / "config.py")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "| Dice |" in done.stdout
    for rel in ("metrics.csv", "summary.json", "montage.png", "manifest.json"):
        assert (run / "Testing" / rel).is_file(), rel


def test_scripts_exit_nonzero_with_a_clear_message_on_bad_config(tmp_path):
    root = tmp_path / "bad"
    root.mkdir()
    (root / "config.py").write_text((ROOT / "config.py").read_text() + "\nTRAIN_PERC = 0.9\nBATCH_SIZE = -1\n")
    for script in ("training.py", "testing.py"):
        done = subprocess.run([sys.executable, str(ROOT / script), "--config", str(root / "config.py")],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 2
        assert "TRAIN_PERC + VAL_PERC" in done.stderr and "BATCH_SIZE" in done.stderr
        assert "Traceback" not in done.stderr
    assert not (root / "Processed").exists() and not (root / "DL_vol_files").exists()
