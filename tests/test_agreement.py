"""Agreement statistics of predicted vs true biomarkers (clotseg.evaluation.agreement)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy import stats

from clotseg.evaluation.agreement import agreement, agreement_table, bland_altman, bland_altman_plot, icc_2_1


def test_icc_2_1_hand_computed_two_raters():
    # n = 3 cases, k = 2 (pred, true); grand mean 3.5
    # row means 1.5, 3, 6     -> SSR = 2 (4 + 0.25 + 6.25) = 21,  MSR = 21 / 2 = 10.5
    # column means 3, 4        -> SSC = 3 (0.25 + 0.25) = 1.5,     MSC = 1.5
    # SST = 6.25 + 2.25 + 0.25 + 0.25 + 2.25 + 12.25 = 23.5 -> SSE = 1, MSE = 1 / 2 = 0.5
    # ICC = (10.5 - 0.5) / (10.5 + 0.5 + 2 (1.5 - 0.5) / 3) = 10 / (35 / 3) = 6 / 7
    assert icc_2_1([[1, 2], [3, 3], [5, 7]]) == pytest.approx(6 / 7)


def test_icc_2_1_shrout_fleiss_table():
    """Shrout & Fleiss (1979), Table 2: 6 targets, 4 judges; ICC(2,1) = 0.29."""
    table = [[9, 2, 5, 8], [6, 1, 3, 2], [8, 4, 6, 8], [7, 1, 2, 6], [10, 5, 6, 9], [6, 2, 4, 7]]
    assert icc_2_1(table) == pytest.approx(0.29, abs=0.005)


def test_agreement_values_match_scipy_and_bland_altman():
    true = np.array([100.0, 150.0, 40.0, 220.0, 90.0, 60.0])
    pred = true * 1.1 + np.array([5.0, -8.0, 3.0, 10.0, -2.0, 1.0])
    a = agreement(pred, true)
    assert a["n"] == 6 and a["n_dropped"] == 0
    assert a["pearson_r"] == pytest.approx(stats.pearsonr(pred, true).statistic)
    assert a["spearman_rho"] == pytest.approx(stats.spearmanr(pred, true).statistic)
    diff = pred - true
    assert a["mean_diff"] == pytest.approx(diff.mean())
    assert a["sd_diff"] == pytest.approx(diff.std(ddof=1))
    assert a["loa_low"] == pytest.approx(diff.mean() - 1.96 * diff.std(ddof=1))
    assert a["loa_high"] == pytest.approx(diff.mean() + 1.96 * diff.std(ddof=1))
    assert 0.9 < a["icc_2_1"] < 1.0
    perfect = agreement(true, true)
    assert perfect["icc_2_1"] == pytest.approx(1.0) and perfect["mean_diff"] == 0.0
    ba = bland_altman([1, 3, 5], [2, 3, 7])
    assert ba["mean_diff"] == pytest.approx(-1.0) and ba["sd_diff"] == pytest.approx(1.0)


def test_small_constant_and_missing_inputs_give_none_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        empty = agreement([], [])
        assert empty["n"] == 0 and all(empty[k] is None for k in ("pearson_r", "icc_2_1", "mean_diff", "loa_low"))
        two = agreement([1.0, 2.0], [1.5, 2.5])
        assert two["n"] == 2 and two["pearson_r"] is None and two["icc_2_1"] is None
        const = agreement([5.0, 5.0, 5.0, 5.0], [1.0, 2.0, 3.0, 4.0])
        assert const["pearson_r"] is None and const["spearman_rho"] is None
        assert const["icc_2_1"] is not None and const["mean_diff"] == pytest.approx(2.5)
        same = agreement([3.0] * 4, [3.0] * 4)
        assert same["icc_2_1"] is None and same["pearson_r"] is None and same["mean_diff"] == 0.0
        holes = agreement([1.0, None, float("nan"), 4.0, 5.0, 7.0], [1.0, 2.0, 3.0, None, 5.5, 6.0])
        assert holes["n"] == 3 and holes["n_dropped"] == 3
        assert all(v is None or math.isfinite(v) for v in holes.values())
    with pytest.raises(ValueError, match="values"):
        agreement([1, 2, 3], [1, 2])


def test_agreement_table_only_biomarkers_present():
    rows = [{"pred_volume_mm3": v * 1.05, "true_volume_mm3": v, "pred_length_mm": v / 10, "true_length_mm": v / 9}
            for v in (50.0, 80.0, 120.0, 200.0)]
    rows.append({"pred_volume_mm3": 30.0})            # unlabelled case: no truth
    table = agreement_table(rows)
    assert set(table) == {"volume_mm3", "length_mm"}
    assert table["volume_mm3"]["n"] == 4 and table["volume_mm3"]["n_dropped"] == 1
    assert table["volume_mm3"]["pearson_r"] == pytest.approx(1.0)


def test_bland_altman_plot_writes_png(tmp_path):
    out = bland_altman_plot([110, 160, 45, 230], [100, 150, 40, 220], tmp_path / "ba_volume.png",
                            title="Clot volume", unit="mm³", labels=["CS1", "CS2", "CS3", "CS4"])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    none = bland_altman_plot([None], [1.0], tmp_path / "ba_empty.png", title="Clot length", unit="mm")
    assert none.stat().st_size > 0
    assert not list(tmp_path.glob("*.tmp.png"))
