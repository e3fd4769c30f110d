"""Tests for clotseg.evaluation.report and clotseg.evaluation.figures."""

import csv
import json
import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.image as mpimg  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from clotseg.evaluation import figures  # noqa: E402
from clotseg.evaluation.metrics import case_metrics  # noqa: E402
from clotseg.evaluation.report import markdown_table, write_report  # noqa: E402

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SPACING = (0.5, 0.5, 2.0)


def cube(shape, lo, hi):
    m = np.zeros(shape, dtype=bool)
    m[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = True
    return m


@pytest.fixture
def rows():
    shape = (24, 24, 8)
    clot = cube(shape, (5, 5, 2), (10, 10, 5))
    empty = np.zeros(shape, bool)
    cases = {
        "CS1": (cube(shape, (6, 5, 2), (11, 10, 5)), clot),      # detected
        "CS2": (empty, clot),                                    # missed
        "CS3": (empty, empty),                                   # true negative
        "CS4": (cube(shape, (15, 15, 1), (17, 17, 3)), empty),   # false alarm
        "CS5": (clot | cube(shape, (18, 18, 6), (20, 20, 8)), clot),
    }
    out = [{"case_id": cid, **case_metrics(p, t, SPACING)} for cid, (p, t) in cases.items()]
    out.append({"case_id": "CS6", **case_metrics(clot, None, SPACING)})
    return out


def no_nan_json(text):
    def reject(name):
        raise AssertionError(f"non-standard JSON constant {name}")
    return json.loads(text, parse_constant=reject)


# ----------------------------------------------------------------- report
def test_write_report_files(tmp_path, rows):
    summary = write_report(rows, tmp_path / "report", n_resamples=500, seed=1,
                           meta={"run": "demo", "threshold": 0.5, "backend": "jax"})
    with open(tmp_path / "report" / "metrics.csv", newline="") as fh:
        table = list(csv.reader(fh))
    header, body = table[0], table[1:]
    assert header[0] == "case_id"
    assert [r[0] for r in body] == ["CS1", "CS2", "CS3", "CS4", "CS5", "CS6"]
    assert {"dice", "hd95", "assd", "case_type", "n_false_positive_components"} <= set(header)
    dice = {r[0]: r[header.index("dice")] for r in body}
    assert float(dice["CS2"]) == 0.0 and float(dice["CS3"]) == 1.0 and dice["CS6"] == ""

    saved = no_nan_json((tmp_path / "report" / "summary.json").read_text())
    assert saved == summary
    for key in ("metrics", "metrics_clot_cases", "detection", "case_types", "units", "meta", "bootstrap"):
        assert key in saved
    assert saved["case_types"] == {"detected": 2, "false_alarm": 1, "missed": 1, "true_negative": 1,
                                   "unlabeled": 1}
    assert saved["units"] == {"distance": "mm", "volume": "mm3"}
    assert saved["meta"]["run"] == "demo"
    d = saved["metrics"]["dice"]
    assert d["n"] == 5 and set(d) >= {"mean", "median", "std", "ci_low", "ci_high"}
    dice_values = [r["dice"] for r in rows if "dice" in r]
    assert d["mean"] == pytest.approx(np.mean(dice_values))
    assert d["ci_low"] <= d["mean"] <= d["ci_high"]
    # clot-only scope leaves out CS3 and CS4 and keeps the miss
    assert saved["metrics_clot_cases"]["dice"]["n"] == 3
    assert saved["metrics_clot_cases"]["recall"]["mean"] == pytest.approx(
        np.mean([rows[0]["recall"], 0.0, 1.0]))
    assert saved["n_distance_failure_values"] == 2
    assert saved["detection"]["case_sensitivity"] == pytest.approx(2 / 3)
    assert saved["detection"]["specificity"] == pytest.approx(1 / 2)
    assert saved["metrics"]["hd95"]["unit"] == "mm"


def test_markdown_table(rows):
    from clotseg.evaluation.report import build_summary

    text = markdown_table(build_summary(rows, n_resamples=200))
    lines = text.splitlines()
    assert lines[0].startswith("| metric | mean | median | std | 95% CI")
    dice_line = next(line for line in lines if line.startswith("| Dice |"))
    assert dice_line.count("|") == 7
    assert any(line.startswith("| HD95 (mm) |") for line in lines)
    assert "Case sensitivity: 66.7% (2/3 clot cases)" in text
    assert "Lesion sensitivity" in text and "Specificity" in text


def test_mixed_units_are_not_averaged_together(tmp_path):
    truth = cube((12, 12, 6), (3, 3, 1), (6, 6, 4))
    pred = cube((12, 12, 6), (4, 3, 1), (7, 6, 4))
    rows = [{"case_id": "A", **case_metrics(pred, truth, (1, 1, 3))},
            {"case_id": "B", **case_metrics(pred, truth, None)}]
    summary = write_report(rows, tmp_path, n_resamples=100)
    assert "hd95" not in summary["metrics"]
    assert summary["metrics"]["hd95 [mm]"]["n"] == summary["metrics"]["hd95 [voxel]"]["n"] == 1
    assert summary["units"]["distance"] == "mixed" and summary["warnings"]
    assert "HD95 (mm)" in markdown_table(summary)


def test_multi_class_rows_are_summarised_per_class(tmp_path):
    shape = (16, 16, 6)
    labels = np.zeros(shape, np.uint8)
    labels[2:6, 2:6, 1:4] = 1
    labels[10:13, 10:13, 2:4] = 2
    pred = labels.copy()
    pred[10:13, 10:13, 2:4] = 0                    # class 2 missed entirely
    rows = []
    for cid in ("CS1", "CS2"):
        row = {"case_id": cid}
        for c in (1, 2):
            row.update({f"{k}_c{c}": v for k, v in case_metrics(pred == c, labels == c, None).items()})
        rows.append(row)
    summary = write_report(rows, tmp_path, n_resamples=100)
    assert set(summary["classes"]) == {"c1", "c2"}
    assert summary["classes"]["c1"]["metrics"]["dice"]["mean"] == pytest.approx(1.0)
    assert summary["classes"]["c2"]["metrics"]["dice"]["mean"] == 0.0
    assert summary["classes"]["c2"]["case_types"] == {"missed": 2}
    header = (tmp_path / "metrics.csv").read_text().splitlines()[0].split(",")
    assert header[:3] == ["case_id", "case_type_c1", "dice_c1"]
    assert header.index("pred_voxels_c1") < header.index("case_type_c2")
    text = markdown_table(summary)
    assert "Class 1" in text and "Class 2" in text and text.count("| Dice |") == 2


def test_write_report_rejects_bad_case_ids(tmp_path, rows):
    with pytest.raises(ValueError):
        write_report(rows + [dict(rows[0])], tmp_path)
    with pytest.raises(ValueError):
        write_report([{k: v for k, v in rows[0].items() if k != "case_id"}], tmp_path)
    assert not (tmp_path / "summary.json").exists()


# ----------------------------------------------------------------- figures
def assert_png(path, min_size=(50, 50)):
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    img = mpimg.imread(path)
    assert img.shape[0] >= min_size[0] and img.shape[1] >= min_size[1]
    assert img.std() > 0                              # not a blank canvas
    assert not list(path.parent.glob("*.tmp*"))       # temp file renamed away
    assert plt.get_fignums() == []
    return img


def hu_slices(n=48, seed=0):
    rng = np.random.default_rng(seed)
    cta = rng.normal(40, 20, (n, n))
    cta[10:30, 20:24] = 300.0
    ncct = rng.normal(35, 5, (n, n))
    truth = np.zeros((n, n), np.uint8)
    truth[14:18, 20:24] = 1
    pred = np.zeros((n, n), np.uint8)
    pred[15:19, 21:24] = 1
    return cta, ncct, truth, pred


def test_training_curves(tmp_path):
    full = tmp_path / "history.csv"
    full.write_text("epoch,dice,loss,val_dice,val_loss\n0,0.1,0.9,0.05,1.0\n1,0.3,0.7,0.2,0.8\n"
                    "2,0.5,0.5,0.35,0.6\n")
    assert_png(figures.plot_training_curves(full, tmp_path / "out" / "curves.png"))
    partial = tmp_path / "partial.csv"
    partial.write_text("loss\n0.9\n0.7\n")            # no epoch, no dice, no validation
    assert_png(figures.plot_training_curves(partial, tmp_path / "partial.png"))


def test_case_overlay_panels(tmp_path):
    cta, ncct, truth, pred = hu_slices(96)
    three = assert_png(figures.case_overlay(cta, ncct, truth, pred, tmp_path / "a.png", "CS1 slice 3"))
    two = assert_png(figures.case_overlay(cta, ncct, None, np.zeros_like(pred), tmp_path / "b.png", "CS2"))
    assert three.shape[1] > two.shape[1]               # zoom panel added when there is a clot
    assert_png(figures.case_overlay(cta.astype(np.uint8), None, truth, pred, tmp_path / "c.png", ""))


def test_best_slice_index():
    truth = np.zeros((8, 8, 5), np.uint8)
    pred = np.zeros_like(truth)
    pred[1:3, 1:3, 4] = 1
    assert figures.best_slice_index(truth, pred) == 4
    truth[0:2, 0:2, 1] = 1
    truth[0:3, 0:3, 3] = 1
    assert figures.best_slice_index(truth, pred) == 3
    assert figures.best_slice_index(np.zeros_like(truth), None) == 2


def test_montage_many_cases(tmp_path):
    cases = []
    for i in range(30):
        cta, ncct, truth, pred = hu_slices(64, seed=i)
        cases.append((f"CS{i}", cta, ncct, truth if i % 5 else None, pred, float("nan") if i == 3 else i / 30))
    img = assert_png(figures.montage(cases, tmp_path / "montage.png", windows=((-100, 600), (0, 80))))
    assert img.shape[0] <= 3000 and img.shape[1] <= 3000
    assert_png(figures.montage([], tmp_path / "empty.png"), min_size=(10, 10))


def test_prediction_panel(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 32, 32, 2), dtype=np.uint8)
    truths = np.zeros((3, 32, 32), np.uint8)
    truths[:, 10:14, 10:14] = 1
    preds = rng.random((3, 32, 32)).astype(np.float32)
    img = assert_png(figures.prediction_panel(images, truths, preds, tmp_path / "p.png", "epoch 1"))
    assert img.shape[0] > img.shape[1] * 0.8             # four rows for three columns
    with pytest.raises(ValueError):
        figures.prediction_panel(images, truths[:2], preds, tmp_path / "bad.png")
    assert math.isfinite(float(img.mean()))
