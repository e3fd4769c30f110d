"""Resampling onto a grid of another spacing with SimpleITK.

Images (HU) with linear or B-spline (cubic) interpolation, clipped to the
12-bit CT range afterwards (a B-spline overshoots at edges); masks (labels)
with nearest neighbour or volume-matched partial volumes (`resample_mask`),
so labels stay labels. Voxels of the new grid that
fall outside the source get air (-1024 HU) or label 0. A transform (e.g.
the NCCT-to-CTA registration) maps the new grid's world points to the
source's, so an NCCT goes through the registration and onto the CTA's
target grid in one interpolation.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from clotseg.preprocessing.geometry import Grid, to_array

AIR_HU = -1024.0
HU_RANGE = (-1024.0, 3071.0)
INTERPOLATORS = {"linear": sitk.sitkLinear, "bspline": sitk.sitkBSpline, "nearest": sitk.sitkNearestNeighbor}


def resample_image(array: np.ndarray, source: Grid, target: Grid, transform: sitk.Transform | None = None,
                   interpolation: str = "linear", default: float = AIR_HU) -> np.ndarray:
    """float32 (rows, cols, slices) HU of `array` (on `source`) on the `target` grid."""
    img = source.to_image(np.asarray(array, dtype=np.float32))
    out = sitk.Resample(img, list(target.shape), transform or sitk.Transform(), INTERPOLATORS[interpolation],
                        target.origin, target.spacing, target.direction, float(default), sitk.sitkFloat32)
    arr = to_array(out)
    if interpolation == "bspline":
        np.clip(arr, *HU_RANGE, out=arr)
    return arr.astype(np.float32, copy=False)


def resample_mask(mask: np.ndarray, source: Grid, target: Grid, transform: sitk.Transform | None = None,
                  method: str = "volume") -> np.ndarray:
    """uint8 labels of `mask` (on `source`) on the `target` grid.

    method "nearest": nearest neighbour. "volume": each label's partial-volume
    fraction (its 0/1 indicator, linearly interpolated), and the voxels with
    the largest fractions take the label until it covers the volume (mm^3)
    it had on the source grid, to within one target voxel; a voxel claimed
    by two labels keeps the one with the larger fraction. Both keep labels
    labels; nearest neighbour moves a small object's volume by tens of
    percent (its boundary voxels are kept or dropped whole), "volume" keeps
    it (see the README).
    """
    mask = np.asarray(mask)
    if method == "nearest":
        img = source.to_image(mask.astype(np.uint8))
        out = sitk.Resample(img, list(target.shape), transform or sitk.Transform(), sitk.sitkNearestNeighbor,
                            target.origin, target.spacing, target.direction, 0, sitk.sitkUInt8)
        return to_array(out)
    if method != "volume":
        raise ValueError(f"unknown mask interpolation {method!r}")
    out = np.zeros(target.shape, dtype=np.uint8)
    best = np.zeros(target.shape, dtype=np.float32)
    v_src, v_dst = float(np.prod(source.spacing)), float(np.prod(target.spacing))
    for label in (int(v) for v in np.unique(mask) if v != 0):
        frac = resample_image((mask == label).astype(np.float32), source, target, transform, "linear", 0.0)
        want = int(round(np.count_nonzero(mask == label) * v_src / v_dst))
        idx = np.flatnonzero(frac > 1e-6)
        if want <= 0 or idx.size == 0:
            continue
        if want < idx.size:
            values = frac.ravel()[idx]
            idx = idx[np.argpartition(-values, want - 1)[:want]]
        take = np.zeros(target.shape, dtype=bool)
        take.ravel()[idx] = True
        take &= frac > best
        out[take] = label
        best[take] = frac[take]
    return out


def volume_mm3(mask: np.ndarray, spacing) -> float:
    """Foreground volume of a mask in mm^3."""
    return float(np.count_nonzero(mask)) * float(np.prod(spacing))
