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


def test_png_slice_folder_imported_then_single_channel_pipeline(tmp_path):
    """Cranium/SIIM-style PNG slices -> importer -> every stage with one channel."""
    import cv2

    from clotseg.importers import ImportOptions, import_slices

    src_img, src_mask = tmp_path / "src" / "images", tmp_path / "src" / "masks"
    src_img.mkdir(parents=True)
    src_mask.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for patient in range(1, 6):
        for k in range(6):
            img = rng.integers(20, 60, (40, 48), dtype=np.uint8)
            mask = np.zeros((40, 48), np.uint8)
            if 1 <= k <= 3:
                r, c = 8 + 3 * patient, 10 + 2 * k
                img[r:r + 6, c:c + 6] = 220
                mask[r:r + 6, c:c + 6] = 255
            cv2.imwrite(str(src_img / f"{patient}_{k}.png"), img)
            cv2.imwrite(str(src_mask / f"{patient}_{k}.png"), mask)
    s = tiny_settings(tmp_path, modality_patterns={"XRAY": "CS<ID>_XRAY.npy"}, windows_hu={"XRAY": (0.0, 255.0)},
                      input_shape=(64, 64, 1), epochs=1)
    report = import_slices(src_img, ImportOptions.from_settings(s, log=quiet), masks=src_mask,
                           modality_name="XRAY")
    assert len(report.case_ids) == 5                      # 30 PNGs grouped into 5 cases
    vol = np.load(s.volume_path / "CS1_XRAY.npy")
    assert vol.shape == (40, 48, 6)                       # slices stacked along the last axis
    run, rows = _run_all(s)
    # one modality: its slice and, with CONTEXT_SLICES = k, its 2k neighbours
    assert np.load(augmented_dir(s, "Training") / "images.npy", mmap_mode="r").shape[-1] == 2 * s.context_slices + 1
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
