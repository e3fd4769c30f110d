"""Voxel and case uncertainty from ensemble members (clotseg.evaluation.uncertainty)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from clotseg.evaluation.uncertainty import (case_uncertainty, uncertainty_map, uncertainty_ranking,
                                            uncertainty_scatter_plot)


def _members():
    """Three members on a (4, 4, 2) grid: agree on voxel (1,1,0), split on (2,2,1)."""
    m = np.zeros((3, 4, 4, 2), np.float32)
    m[:, 1, 1, 0] = 0.9              # all say clot
    m[:, 2, 2, 1] = [1.0, 0.0, 0.0]  # one of three says clot
    m[:, 3, 3, 1] = 0.5              # all undecided: no spread, maximal entropy
    return m


def test_std_and_entropy_maps_known_values():
    m = _members()
    std = uncertainty_map(m)
    assert std.dtype == np.float32 and std.shape == (4, 4, 2)
    assert std[1, 1, 0] == 0.0 and std[3, 3, 1] == 0.0 and std[0, 0, 0] == 0.0
    assert std[2, 2, 1] == pytest.approx(np.std([1.0, 0.0, 0.0]))        # sqrt(2)/3
    ent = uncertainty_map(m, "entropy")
    assert ent[3, 3, 1] == pytest.approx(1.0)
    assert ent[0, 0, 0] == 0.0
    assert ent[1, 1, 0] == pytest.approx(-(0.9 * np.log2(0.9) + 0.1 * np.log2(0.1)), rel=1e-5)
    assert np.abs(std.astype(np.float16).astype(np.float32) - std).max() < 1e-3
    assert uncertainty_map([np.array([[0.0, 1.0]]), np.array([[1.0, 1.0]])])[0].tolist() == [0.5, 0.0]
    with pytest.raises(ValueError, match="method"):
        uncertainty_map(m, "variance")


def test_members_with_trailing_channel_and_lists():
    m = _members()[..., None]                       # (M, h, w, D, 1), as predict_volume_members gives
    assert uncertainty_map(list(m)).shape == (4, 4, 2)
    with pytest.raises(ValueError, match="differ in shape"):
        uncertainty_map([np.zeros((2, 2)), np.zeros((2, 3))])


def test_case_score_over_the_union_of_member_masks():
    m = _members()
    c = case_uncertainty(m)
    # union of members' masks (p > 0.5): (1,1,0) with std 0 and (2,2,1) with std sqrt(2)/3
    assert c["uncertain_region_voxels"] == 2
    assert c["uncertainty_score"] == pytest.approx(np.std([1.0, 0.0, 0.0]) / 2)
    assert c["member_disagreement"] == pytest.approx(0.5)            # intersection 1 of union 2
    agree = case_uncertainty(np.stack([m[0], m[0]]))
    assert agree["uncertainty_score"] == 0.0 and agree["member_disagreement"] == 0.0
    empty = case_uncertainty(np.zeros((3, 4, 4, 2)))
    assert empty == {"uncertainty_score": 0.0, "member_disagreement": 0.0, "uncertain_region_voxels": 0,
                     "uncertainty_method": "std"}
    ent = case_uncertainty(m, method="entropy")
    assert ent["uncertainty_method"] == "entropy" and 0.0 < ent["uncertainty_score"] <= 1.0


def test_ranking_and_degenerate_inputs():
    scores = [0.01, 0.05, 0.10, 0.20, 0.30]
    dices = [0.90, 0.85, 0.60, 0.40, 0.10]
    r = uncertainty_ranking(scores, dices)
    assert r["n"] == 5 and r["spearman_rho"] == pytest.approx(-1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert uncertainty_ranking([0.1, 0.2], [0.5, 0.6])["spearman_rho"] is None
        assert uncertainty_ranking([0.1, 0.1, 0.1], [0.5, 0.6, 0.7])["spearman_rho"] is None
        assert uncertainty_ranking([0.1, None, 0.3, 0.4], [0.9, 0.8, float("nan"), 0.2])["n"] == 2
    with pytest.raises(ValueError):
        uncertainty_ranking([0.1], [0.2, 0.3])


def test_scatter_plot_png(tmp_path):
    out = uncertainty_scatter_plot([0.01, 0.05, 0.2], [0.9, 0.8, 0.3], tmp_path / "unc.png", labels=["a", "b", "c"])
    assert out.read_bytes()[:4] == b"\x89PNG"
    assert uncertainty_scatter_plot([], [], tmp_path / "none.png").is_file()


def test_list_members_give_the_bits_of_the_stacked_std_in_any_memory_order():
    """Test time passes (h, w, D) views of (D, h, w) predictions: the block-wise
    std over the list equals np.std of the stacked, clipped members exactly,
    and the case score equals the stacked array's."""
    rng = np.random.default_rng(7)
    base = [rng.random((9, 70, 40), dtype=np.float32) for _ in range(3)]
    base[1][0, :3, :3] = 1.3                                    # outside [0, 1]: clipped as before
    views = [np.moveaxis(b, 0, 2) for b in base]                # shape (70, 40, 9), not C-contiguous
    stacked = np.stack([np.ascontiguousarray(v) for v in views])
    want = np.clip(stacked, 0.0, 1.0).std(axis=0, dtype=np.float64).astype(np.float32)
    got = uncertainty_map(views)
    assert got.shape == want.shape and np.array_equal(got, want)
    assert case_uncertainty(views, 0.5, unc_map=got) == case_uncertainty(stacked, 0.5, unc_map=want)


@pytest.mark.parametrize("bad", [np.float32(0.5), np.zeros(4, np.float32)])
def test_a_scalar_or_a_vector_is_not_a_stack_of_maps(bad):
    with pytest.raises(ValueError, match=r"stack \(M, \.\.\.\)"):
        uncertainty_map(bad)
    with pytest.raises(ValueError, match=r"stack \(M, \.\.\.\)"):
        case_uncertainty(bad)
