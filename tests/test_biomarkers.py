"""Clot biomarkers on shapes with known answers (clotseg.evaluation.biomarkers)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from clotseg.evaluation.biomarkers import biomarker_row, case_biomarkers, unit_of


def _cylinder(spacing, length, radius, direction, shape):
    """Voxels whose centre (index x spacing, mm) lies in a cylinder centred in the grid."""
    sp = np.asarray(spacing, float)
    u = np.asarray(direction, float)
    u /= np.linalg.norm(u)
    pts = np.indices(shape).reshape(3, -1).T * sp
    d = pts - (np.asarray(shape) - 1) * sp / 2
    t = d @ u
    radial = np.linalg.norm(d - np.outer(t, u), axis=1)
    return ((np.abs(t) <= length / 2) & (radial <= radius)).reshape(shape).astype(np.uint8)


@pytest.mark.parametrize("spacing, direction, length, radius", [
    ((0.5, 0.7, 1.5), (1.0, 0.6, 2.0), 24.0, 3.0),     # oblique through all three axes
    ((0.4, 0.4, 2.0), (1.0, 1.0, 0.5), 20.0, 2.0),     # thick slices, mostly in-plane
    ((0.5, 0.7, 1.5), (0.0, 0.0, 1.0), 24.0, 3.0),     # along the slices
])
def test_tilted_cylinder_length_and_volume(spacing, direction, length, radius):
    mask = _cylinder(spacing, length, radius, direction, (80, 70, 30))
    b = case_biomarkers(mask, spacing)
    diagonal = math.sqrt(sum(s * s for s in spacing))
    assert abs(b["length_mm"] - length) <= diagonal
    assert b["volume_mm3"] == pytest.approx(math.pi * radius ** 2 * length, rel=0.03)
    assert b["n_components"] == 1
    assert b["n_voxels"] == int(mask.sum())
    assert b["volume_mm3"] == pytest.approx(mask.sum() * spacing[0] * spacing[1] * spacing[2])
    per_slice = mask.sum(axis=(0, 1))
    assert b["area_max_mm2"] == pytest.approx(per_slice.max() * spacing[0] * spacing[1])
    assert b["area_max_slice"] == int(np.argmax(per_slice))
    present = np.flatnonzero(per_slice)
    assert (b["slice_min"], b["slice_max"]) == (present[0], present[-1])
    assert b["n_slices"] == present[-1] - present[0] + 1
    # the cylinder is centred in the grid
    centre = (np.array(mask.shape) - 1) / 2
    got = [b["centroid_row_vox"], b["centroid_col_vox"], b["centroid_slice_vox"]]
    assert np.allclose(got, centre, atol=0.5)
    assert b["centroid_slice_mm"] == pytest.approx(b["centroid_slice_vox"] * spacing[2])
    assert "ncct_mean_hu" not in b and "perviousness_hu" not in b      # geometry only without volumes


def test_length_is_spacing_aware_not_voxel_count():
    """10 voxels along rows at 0.5 mm = 5 mm; the same 10 along slices at 3 mm = 30 mm."""
    rows = np.zeros((20, 5, 20), np.uint8)
    rows[5:15, 2, 4] = 1
    slices = np.zeros((20, 5, 20), np.uint8)
    slices[4, 2, 5:15] = 1
    sp = (0.5, 0.8, 3.0)
    assert case_biomarkers(rows, sp)["length_mm"] == pytest.approx(5.0)
    assert case_biomarkers(slices, sp)["length_mm"] == pytest.approx(30.0)
    one = np.zeros((4, 4, 4), np.uint8)
    one[1, 2, 3] = 1
    assert case_biomarkers(one, sp)["length_mm"] == pytest.approx(3.0)


def test_length_of_largest_component_and_26_connectivity():
    mask = np.zeros((30, 30, 10), np.uint8)
    mask[2:22, 5, 5] = 1               # 20 voxels = 20 mm along rows
    mask[25, 25, 1] = 1                # far-away false-positive voxel
    mask[26, 26, 2] = 1                # touches the previous one only at a corner: same component
    b = case_biomarkers(mask, (1.0, 1.0, 1.0))
    assert b["n_components"] == 2
    assert b["length_mm"] == pytest.approx(20.0)


def test_known_hu_fill_perviousness():
    shape = (10, 10, 6)
    mask = np.zeros(shape, np.uint8)
    mask[2:4, 2:4, 1:3] = 1            # 8 voxels
    ncct = np.full(shape, 30.0, np.float32)
    cta = np.full(shape, 300.0, np.float32)       # bright lumen outside the clot
    ncct[mask > 0] = [50, 50, 50, 50, 50, 50, 70, 70]   # mean 55, median 50
    cta[mask > 0] = 67.0                            # filling defect, 12 HU above the NCCT mean
    b = case_biomarkers(mask, (0.5, 0.5, 1.0), {"CTA": cta, "NCCT": ncct})
    assert b["ncct_mean_hu"] == pytest.approx(55.0)
    assert b["ncct_median_hu"] == pytest.approx(50.0)
    assert b["cta_mean_hu"] == pytest.approx(67.0)
    assert b["perviousness_hu"] == pytest.approx(12.0)
    assert b["pervious"] is True
    assert b["volume_mm3"] == pytest.approx(8 * 0.25)
    cta[mask > 0] = 65.8                            # 10.8 HU: just below the 10.9 HU threshold
    b = case_biomarkers(mask, (0.5, 0.5, 1.0), {"CTA": cta, "NCCT": ncct})
    assert b["perviousness_hu"] == pytest.approx(10.8, abs=1e-4) and b["pervious"] is False
    json.dumps(b)                                   # plain JSON types only


def test_only_what_applies():
    shape = (6, 6, 4)
    mask = np.zeros(shape, np.uint8)
    mask[1:3, 1:3, 1] = 1
    ncct = np.full(shape, 60.0)
    only_ncct = case_biomarkers(mask, (1, 1, 1), {"NCCT": ncct})
    assert only_ncct["ncct_mean_hu"] == 60.0 and "perviousness_hu" not in only_ncct and "cta_mean_hu" not in only_ncct
    only_cta = case_biomarkers(mask, (1, 1, 1), {"CTA": ncct})
    assert "perviousness_hu" not in only_cta and "ncct_mean_hu" not in only_cta
    raw = case_biomarkers(mask, (1, 1, 1), {"XRAY": np.full(shape, 200.0)}, intensity="raw")
    assert not any(k.endswith("_hu") for k in raw) and raw["volume_mm3"] == 4.0
    normalised = case_biomarkers(mask, (1, 1, 1), {"CTA": ncct, "NCCT": ncct}, windows={"CTA": None, "NCCT": (0, 80)})
    assert "cta_mean_hu" not in normalised and "perviousness_hu" not in normalised and "ncct_mean_hu" in normalised
    no_spacing = case_biomarkers(mask, None)
    assert no_spacing["volume_vox"] == 4.0 and no_spacing["area_max_px"] == 4.0 and "length_vox" in no_spacing
    assert not any(k.endswith(("_mm", "_mm3", "_mm2")) for k in no_spacing)


def test_empty_mask_is_explicit():
    shape = (6, 6, 4)
    vols = {"CTA": np.zeros(shape), "NCCT": np.zeros(shape)}
    b = case_biomarkers(np.zeros(shape, np.uint8), (0.5, 0.5, 2.0), vols, affine=np.eye(4))
    assert b["n_voxels"] == 0 and b["n_components"] == 0
    assert b["volume_mm3"] == 0.0 and b["length_mm"] == 0.0 and b["area_max_mm2"] == 0.0 and b["n_slices"] == 0
    for key in ("slice_min", "slice_max", "area_max_slice", "centroid_row_vox", "centroid_row_mm",
                "centroid_x_ras_mm", "ncct_mean_hu", "ncct_median_hu", "cta_mean_hu", "perviousness_hu", "pervious"):
        assert key in b and b[key] is None, key


def test_world_centroid_and_row():
    mask = np.zeros((5, 5, 5), np.uint8)
    mask[1, 2, 3] = 1
    aff = np.array([[-0.5, 0, 0, 10], [0, -0.7, 0, 20], [0, 0, 2.0, -5], [0, 0, 0, 1]])
    b = case_biomarkers(mask, (0.5, 0.7, 2.0), affine=aff)
    assert (b["centroid_x_ras_mm"], b["centroid_y_ras_mm"], b["centroid_z_ras_mm"]) == pytest.approx((9.5, 18.6, 1.0))
    row = biomarker_row(mask, np.zeros_like(mask), (0.5, 0.7, 2.0))
    assert row["pred_volume_mm3"] == pytest.approx(0.7) and row["true_volume_mm3"] == 0.0
    assert unit_of("pred_volume_mm3") == "mm³" and unit_of("true_ncct_mean_hu") == "HU"
    with pytest.raises(ValueError, match="spacing_mm"):
        case_biomarkers(mask, (0.5, 0.0, 1.0))
