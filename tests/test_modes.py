"""Single-channel and multi-class cohorts through every stage, model and testing."""

import csv

import numpy as np
import pytest

from clotseg.pipeline import prepare_data
from clotseg.stages.augment import augmented_dir
from clotseg.stages.evaluate import run_evaluation
from clotseg.stages.train import run_training
from tests.conftest import quiet, tiny_settings, write_case

pytestmark = pytest.mark.slow


def _run_all(s):
    prepare_data(s, log=quiet, demo_if_empty=False)
    run = run_training(s, log=quiet)
    run_evaluation(s, log=quiet)
    with open(run / "Testing" / "metrics.csv") as fh:
        return run, list(csv.DictReader(fh))


def test_single_channel_ncct_only(tmp_path):
    s = tiny_settings(tmp_path, modality_patterns={"NCCT": "CS<ID>_NCCT_Reg_Binary.npy"},
                      windows_hu={"NCCT": (0.0, 80.0)}, input_shape=(64, 64, 1), epochs=1)
    for cid in range(1, 6):
        write_case(s, cid, cta=None)
    run, rows = _run_all(s)
    assert np.load(augmented_dir(s, "Training") / "images.npy", mmap_mode="r").shape[-1] == 1
    assert rows and all(0 <= float(r["dice"]) <= 1 for r in rows)
    assert (run / "Testing" / "overlays" / f"{rows[0]['case_id']}.png").is_file()


def test_three_class_masks_train_softmax_and_report_per_class(tmp_path):
    s = tiny_settings(tmp_path, num_classes=3, epochs=1)
    for cid in range(1, 6):
        _, _, m = write_case(s, cid)
        m = m.copy()
        m[2:6, 2:6, :] = 2                                     # a second class elsewhere
        write_case(s, cid, mask=m)
    run, rows = _run_all(s)
    masks = np.load(augmented_dir(s, "Training") / "masks.npy", mmap_mode="r")
    assert set(np.unique(masks)) == {0, 1, 2}
    assert {"dice_c1", "dice_c2", "hd95_c1", "hd95_c2"} <= set(rows[0])
    pred = np.load(run / "Testing" / "predictions" / f"{rows[0]['case_id']}_pred.npy")
    assert set(np.unique(pred)) <= {0, 1, 2}
