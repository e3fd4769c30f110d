"""Tests for clotseg.evaluation.metrics and clotseg.evaluation.stats."""

import math
import time

import numpy as np
import pytest
from scipy import stats as sps
from scipy.spatial import cKDTree

from clotseg.evaluation.metrics import case_metrics, directed_surface_distances, failure_distance
from clotseg.evaluation.stats import detection_summary, summarize


# ----------------------------------------------------------------- helpers
def sphere(shape, centre, radius):
    g = np.indices(shape)
    return sum((g[i] - centre[i]) ** 2 for i in range(3)) <= radius ** 2


def box(shape, lo, hi):
    m = np.zeros(shape, dtype=bool)
    m[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = True
    return m


def brute_surface(mask):
    """Mask voxels with a 6-neighbour outside the mask (outside the image counts as outside)."""
    padded = np.pad(mask, 1, constant_values=False)
    inner = np.ones_like(mask)
    for axis in range(3):
        for step in (-1, 1):
            inner &= np.roll(padded, step, axis=axis)[1:-1, 1:-1, 1:-1]
    return mask & ~inner


def brute_distances(pred, truth, spacing):
    sp = np.asarray(spacing, dtype=float)
    a = np.argwhere(brute_surface(pred)) * sp
    b = np.argwhere(brute_surface(truth)) * sp
    d_ab = cKDTree(b).query(a)[0]
    d_ba = cKDTree(a).query(b)[0]
    both = np.concatenate([d_ab, d_ba])
    return {"hd": both.max(), "hd95": np.percentile(both, 95), "assd": (d_ab.mean() + d_ba.mean()) / 2}


NUMERIC = ["dice", "iou", "precision", "recall", "hd", "hd95", "assd", "pred_volume", "true_volume",
           "abs_volume_diff", "signed_volume_diff"]


def assert_no_nan(m):
    for k in NUMERIC:
        assert math.isfinite(m[k]), k


# ----------------------------------------------------------------- distances
@pytest.mark.parametrize("axis,k,spacing", [(0, 3, (1.0, 1.0, 1.0)), (2, 2, (0.6, 0.8, 2.5)),
                                            (1, 4, (0.5, 0.9, 3.0))])
def test_shifted_sphere_hausdorff_equals_shift(axis, k, spacing):
    shape = (40, 40, 40)
    centre = [18, 18, 18]
    truth = sphere(shape, centre, 7)
    moved = list(centre)
    moved[axis] += k
    pred = sphere(shape, moved, 7)
    m = case_metrics(pred, truth, spacing)
    # every surface voxel of one sphere has its translate on the other surface
    # (so HD <= k*s), and the extreme pole has nothing closer (so HD >= k*s)
    assert m["hd"] == pytest.approx(k * spacing[axis], abs=1e-9)
    assert 0 < m["hd95"] <= m["hd"] + 1e-9
    assert 0 < m["assd"] < m["hd"]
    assert m["distance_unit"] == "mm"
    ref = brute_distances(pred, truth, spacing)
    for key in ("hd", "hd95", "assd"):
        assert m[key] == pytest.approx(ref[key], rel=1e-9, abs=1e-9)


@pytest.mark.parametrize("method", ["edt", "kdtree"])
def test_both_distance_methods_match_brute_force_at_image_border(method):
    shape = (24, 20, 12)
    truth = sphere(shape, (2, 10, 6), 6)          # cut by the image border
    pred = sphere(shape, (4, 9, 5), 5) | box(shape, (18, 1, 9), (22, 4, 12))
    sp = (0.7, 0.7, 2.0)
    d_pt, d_tp = directed_surface_distances(pred, truth, sp, method=method)
    ref = brute_distances(pred, truth, sp)
    both = np.concatenate([d_pt, d_tp])
    assert both.max() == pytest.approx(ref["hd"], rel=1e-9)
    assert np.percentile(both, 95) == pytest.approx(ref["hd95"], rel=1e-9)
    assert (d_pt.mean() + d_tp.mean()) / 2 == pytest.approx(ref["assd"], rel=1e-9)


def test_anisotropic_spacing_scales_distances_per_axis():
    shape = (10, 10, 10)
    pred = np.zeros(shape, bool)
    truth = np.zeros(shape, bool)
    pred[4, 4, 2] = True
    truth[4, 4, 5] = True
    vox = case_metrics(pred, truth, None)
    mm = case_metrics(pred, truth, (0.7, 0.7, 3.0))
    assert vox["distance_unit"] == "voxel" and mm["distance_unit"] == "mm"
    for key in ("hd", "hd95", "assd"):
        assert vox[key] == pytest.approx(3.0)
        assert mm[key] == pytest.approx(9.0)
    # the same shift along a row axis is only 3 * 0.7 mm
    truth2 = np.zeros(shape, bool)
    truth2[7, 4, 2] = True
    assert case_metrics(pred, truth2, (0.7, 0.7, 3.0))["hd95"] == pytest.approx(2.1)


def test_identical_masks_have_zero_distance():
    m = case_metrics(sphere((20, 20, 20), (10, 10, 10), 4), sphere((20, 20, 20), (10, 10, 10), 4), (1, 1, 2))
    assert (m["dice"], m["hd"], m["hd95"], m["assd"]) == (1.0, 0.0, 0.0, 0.0)


# ----------------------------------------------------------------- overlap and volume
def test_dice_iou_precision_recall_of_overlapping_cubes():
    shape = (30, 30, 30)
    truth = box(shape, (5, 5, 5), (15, 15, 15))        # 1000 voxels
    pred = box(shape, (8, 5, 5), (18, 15, 20))         # 10*10*15 = 1500 voxels
    overlap = 7 * 10 * 10
    m = case_metrics(pred, truth, None)
    assert m["dice"] == pytest.approx(2 * overlap / 2500)
    assert m["iou"] == pytest.approx(overlap / (2500 - overlap))
    assert m["precision"] == pytest.approx(overlap / 1500)
    assert m["recall"] == pytest.approx(overlap / 1000)
    assert m["case_type"] == "detected"


def test_volumes_in_mm3_and_voxels():
    shape = (30, 30, 30)
    truth = box(shape, (5, 5, 5), (15, 15, 15))
    pred = box(shape, (5, 5, 5), (15, 15, 11))          # 600 voxels
    mm = case_metrics(pred, truth, (0.5, 0.5, 2.0))     # 0.5 mm^3 per voxel
    assert mm["volume_unit"] == "mm3"
    assert (mm["true_volume"], mm["pred_volume"]) == (500.0, 300.0)
    assert (mm["signed_volume_diff"], mm["abs_volume_diff"]) == (-200.0, 200.0)
    vox = case_metrics(pred, truth, None)
    assert vox["volume_unit"] == "voxel" and vox["true_volume"] == 1000


# ----------------------------------------------------------------- empty cases
def test_true_negative():
    z = np.zeros((8, 8, 4), np.uint8)
    m = case_metrics(z, z, (1, 1, 1))
    assert m["case_type"] == "true_negative"
    assert (m["dice"], m["iou"], m["precision"], m["recall"]) == (1, 1, 1, 1)
    assert (m["hd"], m["hd95"], m["assd"]) == (0, 0, 0)
    assert m["distance_is_failure_value"] is False
    assert m["n_true_lesions"] == m["n_false_positive_components"] == 0
    assert_no_nan(m)


def test_missed_clot_with_empty_prediction():
    shape = (10, 12, 8)
    truth = box(shape, (2, 2, 2), (4, 4, 4))
    m = case_metrics(np.zeros(shape), truth, (1.0, 1.0, 2.0))
    diagonal = math.sqrt(10 ** 2 + 12 ** 2 + 16 ** 2)
    assert m["case_type"] == "missed"
    assert (m["dice"], m["iou"], m["precision"], m["recall"]) == (0, 0, 0, 0)
    assert m["hd"] == m["hd95"] == m["assd"] == pytest.approx(diagonal)
    assert m["distance_is_failure_value"] is True
    assert (m["n_true_lesions"], m["n_detected"], m["n_missed"]) == (1, 0, 1)
    assert_no_nan(m)


def test_false_alarm():
    shape = (10, 12, 8)
    pred = box(shape, (1, 1, 1), (3, 3, 3)) | box(shape, (7, 7, 5), (9, 9, 7))
    m = case_metrics(pred, np.zeros(shape, bool), None)
    assert m["case_type"] == "false_alarm"
    assert (m["dice"], m["iou"], m["precision"], m["recall"]) == (0, 0, 0, 0)
    assert m["hd95"] == pytest.approx(failure_distance(shape)) == pytest.approx(math.sqrt(100 + 144 + 64))
    assert m["distance_is_failure_value"] is True
    assert m["n_false_positive_components"] == 2
    assert_no_nan(m)


def test_disjoint_prediction_is_missed_with_finite_distance():
    shape = (20, 20, 20)
    truth = box(shape, (2, 2, 2), (4, 4, 4))
    pred = box(shape, (10, 2, 2), (12, 4, 4))
    m = case_metrics(pred, truth, None)
    assert m["case_type"] == "missed"
    assert m["dice"] == 0 and m["distance_is_failure_value"] is False
    assert m["hd"] == pytest.approx(8.0)   # truth row 2 -> pred row 10
    assert m["hd"] < failure_distance(shape)


def test_unlabeled_case_reports_prediction_only():
    pred = box((10, 10, 10), (1, 1, 1), (3, 3, 3))
    m = case_metrics(pred, None, (0.5, 0.5, 2.0))
    assert m == {"case_type": "unlabeled", "pred_volume": 4.0, "volume_unit": "mm3", "n_pred_components": 1}


# ----------------------------------------------------------------- lesions
def test_lesion_counting():
    shape = (30, 30, 10)
    lesion_a = box(shape, (2, 2, 2), (5, 5, 5))
    lesion_b = box(shape, (20, 20, 2), (23, 23, 5))
    truth = lesion_a | lesion_b
    pred = box(shape, (3, 3, 3), (6, 6, 6)) | box(shape, (12, 2, 6), (14, 4, 8))   # hit A + FP blob
    m = case_metrics(pred, truth, None)
    assert (m["n_true_lesions"], m["n_detected"], m["n_missed"]) == (2, 1, 1)
    assert (m["n_pred_components"], m["n_false_positive_components"]) == (2, 1)


def test_components_use_26_connectivity():
    truth = np.zeros((6, 6, 6), bool)
    truth[1, 1, 1] = truth[2, 2, 2] = True          # corner-touching: one lesion
    m = case_metrics(truth, truth, None)
    assert m["n_true_lesions"] == 1 and m["n_pred_components"] == 1


def test_bad_inputs_raise():
    with pytest.raises(ValueError):
        case_metrics(np.zeros((4, 4, 4)), np.zeros((4, 4, 5)), None)
    with pytest.raises(ValueError):
        case_metrics(np.zeros((4, 4)), np.zeros((4, 4)), None)
    with pytest.raises(ValueError):
        case_metrics(np.zeros((4, 4, 4)), np.zeros((4, 4, 4)), (1.0, 0.0, 1.0))


def test_full_size_case_is_fast():
    shape = (256, 256, 60)
    truth = sphere(shape, (100, 120, 30), 10)
    pred = sphere(shape, (103, 120, 31), 10) | box(shape, (200, 200, 50), (204, 204, 53))
    case_metrics(pred, truth, (0.5, 0.5, 2.0))          # warm-up (imports, caches)
    t0 = time.perf_counter()
    m = case_metrics(pred, truth, (0.5, 0.5, 2.0))
    assert time.perf_counter() - t0 < 1.0
    assert m["n_false_positive_components"] == 1


# ----------------------------------------------------------------- stats
def test_summarize_basic_and_nan_safe():
    s = summarize([1.0, np.nan, 3.0, None, 5.0], n_resamples=2000)
    assert (s["n"], s["n_missing"]) == (3, 2)
    assert s["mean"] == pytest.approx(3.0) and s["median"] == 3.0
    assert s["std"] == pytest.approx(2.0)
    assert s["ci_low"] <= s["mean"] <= s["ci_high"]
    assert 1.0 <= s["ci_low"] and s["ci_high"] <= 5.0
    empty = summarize([np.nan])
    assert empty["n"] == 0 and math.isnan(empty["mean"])
    one = summarize([0.4])
    assert one["ci_low"] == one["ci_high"] == 0.4


def test_bootstrap_deterministic_and_narrows_with_more_cases():
    rng = np.random.default_rng(1)
    small, large = rng.normal(0.6, 0.2, 15), rng.normal(0.6, 0.2, 600)
    a, b = summarize(small, seed=3), summarize(small, seed=3)
    assert (a["ci_low"], a["ci_high"]) == (b["ci_low"], b["ci_high"])
    assert summarize(small, seed=4)["ci_low"] != a["ci_low"]
    big = summarize(large, seed=3)
    assert big["ci_low"] <= big["mean"] <= big["ci_high"]
    assert big["ci_high"] - big["ci_low"] < (a["ci_high"] - a["ci_low"]) / 2


def test_bootstrap_matches_scipy_percentile_bootstrap():
    x = np.random.default_rng(7).gamma(2.0, 1.0, 40)
    ours = summarize(x, n_resamples=5000, seed=0)
    ref = sps.bootstrap((x,), np.mean, n_resamples=5000, method="percentile", confidence_level=0.95,
                        rng=np.random.default_rng(123)).confidence_interval
    se = x.std(ddof=1) / math.sqrt(x.size)
    assert ours["ci_low"] == pytest.approx(ref.low, abs=0.1 * se)
    assert ours["ci_high"] == pytest.approx(ref.high, abs=0.1 * se)


def test_detection_summary():
    rows = [
        {"n_true_lesions": 2, "n_detected": 1, "n_pred_components": 2, "n_false_positive_components": 1},
        {"n_true_lesions": 1, "n_detected": 0, "n_pred_components": 0, "n_false_positive_components": 0},
        {"n_true_lesions": 1, "n_detected": 1, "n_pred_components": 1, "n_false_positive_components": 0},
        {"n_true_lesions": 0, "n_detected": 0, "n_pred_components": 0, "n_false_positive_components": 0},
        {"n_true_lesions": 0, "n_detected": 0, "n_pred_components": 3, "n_false_positive_components": 3},
        {"case_type": "unlabeled", "n_pred_components": 5},                       # ignored
    ]
    d = detection_summary(rows)
    assert d["lesion_sensitivity"] == pytest.approx(2 / 4)
    assert d["case_sensitivity"] == pytest.approx(2 / 3)
    assert d["specificity"] == pytest.approx(1 / 2)
    assert d["fp_components_per_case"] == pytest.approx(4 / 5)
    lo, hi = d["case_sensitivity_ci"]
    assert 0 <= lo < 2 / 3 < hi <= 1
    none = detection_summary([])
    assert math.isnan(none["lesion_sensitivity"]) and none["n_cases"] == 0
