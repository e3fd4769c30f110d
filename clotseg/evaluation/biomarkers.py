"""Clot biomarkers of one 3D mask: size, shape, position and attenuation.

`case_biomarkers(mask, spacing_mm, volumes)` measures what stroke research
reads off a clot segmentation (see shared/reference/clinical.md):

  geometry (always)
    n_voxels                  clot voxels (mask > 0)
    n_components              3D connected components, 26-connectivity
    volume_mm3                n_voxels x voxel volume
    length_mm                 principal-axis extent of the largest component (below)
    area_max_mm2              largest clot area in one axial slice (last axis)
    area_max_slice            the slice where it lies
    slice_min, slice_max      first and last slice holding clot (indices along the last axis)
    n_slices                  slice_max - slice_min + 1
    centroid_{row,col,slice}_vox   centre of mass, voxel indices
    centroid_{row,col,slice}_mm    the same in mm along the array axes (index x spacing)
    centroid_{x,y,z}_ras_mm   world (RAS) position, when the voxel -> RAS affine is given

  attenuation (CT modalities only: `intensity == "HU"` and a HU window for the modality)
    <mod>_mean_hu, <mod>_median_hu   mean / median of the modality inside the clot
                                     (<mod> = lower-case modality name: cta_mean_hu, ncct_median_hu)
    perviousness_hu           cta_mean_hu - ncct_mean_hu, the thrombus attenuation
                              increase (Santos, Stroke 2016); only with both CTA and NCCT
    pervious                  perviousness_hu >= 10.9 HU (PERVIOUS_THRESHOLD_HU)

Units are in the key names. Without a voxel spacing the size keys are in
voxels instead and named so (volume_vox, length_vox, area_max_px,
centroid_*_vox only): a volume in voxels is never labelled mm^3.

Empty mask: counts, volume, area and length are 0, everything positional or
attenuation-related is None (the keys stay, so a table has the same columns
for every case of a cohort).

Length: principal axis, not a skeleton
--------------------------------------
`length_mm` is the extent of the clot along its first principal axis: the
voxel centres of the largest 26-connected component are placed in mm (index
x spacing, so anisotropic voxels count correctly), the axis is the
eigenvector of their covariance with the largest eigenvalue, and the length
is the spread of the centres along it plus the width of one voxel box seen
along that axis (sum_i |u_i| spacing_i), i.e. the extent of the union of
voxel boxes. A one-voxel clot is as long as its longest voxel side.

Why not skeletonise: clots are short (a few mm to a few cm) and thick
relative to their length, and skeletonisation (a) shortens them by about one
radius at each end, (b) works on the voxel grid, so at the usual anisotropic
CT spacing (0.4 mm in-plane, 1-5 mm slices) the skeleton is biased towards
the in-plane axes, and (c) sprouts spurious branches from bumpy predicted
surfaces; each of these can shift a length by millimetres, the scale of
the 8 mm threshold that matters clinically. The principal axis is exact for straight
clots at any spacing and stable under surface noise; it underestimates a
clot that curves around a vessel bend (the chord, not the arc). Only the
largest component is measured so that a small false-positive blob far away
does not add centimetres of "length"; the component count is reported next
to it.
"""

from __future__ import annotations

import re

import numpy as np

from clotseg.evaluation.metrics import check_spacing
from clotseg.helpers import label_components

PERVIOUS_THRESHOLD_HU = 10.9

# unit of each biomarker key (for tables, plots and the HTML report)
BIOMARKER_UNITS = {
    "n_voxels": "voxels", "n_components": "", "volume_mm3": "mm³", "volume_vox": "voxels",
    "length_mm": "mm", "length_vox": "voxels", "area_max_mm2": "mm²", "area_max_px": "pixels",
    "area_max_slice": "slice", "slice_min": "slice", "slice_max": "slice", "n_slices": "slices",
    "perviousness_hu": "HU", "pervious": "",
}


def modality_key(name: str) -> str:
    """'CTA' -> 'cta', 'T1 post' -> 't1_post': the prefix of a modality's HU keys."""
    return re.sub(r"[^0-9a-z]+", "_", str(name).lower()).strip("_") or "modality"


def unit_of(key: str) -> str:
    """Unit of a biomarker key, also with a pred_/true_ prefix ('' if none)."""
    base = re.sub(r"^(pred|true)_", "", key)
    if base in BIOMARKER_UNITS:
        return BIOMARKER_UNITS[base]
    if base.endswith("_hu"):
        return "HU"
    if base.endswith("_mm"):
        return "mm"
    if base.endswith("_vox"):
        return "voxels"
    return ""


def principal_axis_length(coords_mm: np.ndarray, spacing: tuple[float, float, float]) -> float:
    """Extent of points (N, 3) in mm along their first principal axis, plus one voxel box.

    See the module docstring. N = 0 gives 0.0; N = 1 gives max(spacing).
    """
    if coords_mm.shape[0] == 0:
        return 0.0
    if coords_mm.shape[0] == 1:
        return float(max(spacing))
    centred = coords_mm - coords_mm.mean(axis=0)
    cov = centred.T @ centred / coords_mm.shape[0]
    _, vecs = np.linalg.eigh(cov)          # ascending eigenvalues
    axis = vecs[:, -1]
    proj = centred @ axis
    box = float(np.sum(np.abs(axis) * np.asarray(spacing)))
    return float(proj.max() - proj.min()) + box


def applicable_hu_modalities(volumes: dict | None, windows: dict | None = None, intensity: str = "HU") -> list[str]:
    """Modalities whose values are HU and so get attenuation biomarkers.

    None when `intensity` is not "HU" (8-bit PNG/JPG imports, X-ray); a
    modality whose window is None (already normalised, per WINDOWS_HU) is
    left out too.
    """
    if not volumes or str(intensity).upper() != "HU":
        return []
    return [m for m in volumes if windows is None or windows.get(m) is not None]


def case_biomarkers(mask, spacing_mm=None, volumes: dict | None = None, windows: dict | None = None,
                    intensity: str = "HU", affine=None,
                    pervious_threshold_hu: float = PERVIOUS_THRESHOLD_HU) -> dict:
    """Biomarkers of one clot mask (see the module docstring for every key).

    Args:
        mask: (H, W, D) array; voxels > 0 are clot.
        spacing_mm: (row, col, slice) voxel size in mm, or None (sizes in voxels).
        volumes: {modality: (H, W, D) float array in HU}, e.g. {"CTA": cta, "NCCT": ncct};
            None for geometry only.
        windows: {modality: (low, high) or None} as in config WINDOWS_HU; a
            modality with None is not taken as HU. None: every modality is.
        intensity: "HU" or "raw" (the import sidecar's `intensity`); "raw"
            gives geometry only.
        affine: optional 4x4 voxel -> RAS mm matrix (sidecar `affine_ras`)
            for the world-coordinate centroid.
        pervious_threshold_hu: perviousness at or above it counts as pervious.
    Returns a flat dict of JSON-able scalars (int, float, bool or None).
    """
    m = np.asarray(mask) > 0
    if m.ndim != 3:
        raise ValueError(f"mask must be 3D (H, W, D), got shape {m.shape}")
    sp = check_spacing(spacing_mm)
    mods = applicable_hu_modalities(volumes, windows, intensity)
    for name in mods:
        if np.shape(volumes[name]) != m.shape:
            raise ValueError(f"{name} volume has shape {np.shape(volumes[name])} but the mask is {m.shape}")
    vol_key, len_key, area_key = (("volume_mm3", "length_mm", "area_max_mm2") if sp is not None
                                  else ("volume_vox", "length_vox", "area_max_px"))
    voxel_mm3 = sp[0] * sp[1] * sp[2] if sp is not None else 1.0
    pixel_mm2 = sp[0] * sp[1] if sp is not None else 1.0
    n = int(m.sum())
    out: dict = {"n_voxels": n}

    labels, n_comp = label_components(m) if n else (None, 0)
    out["n_components"] = int(n_comp)
    out[vol_key] = float(n * voxel_mm3)
    if n:
        sizes = np.bincount(labels.ravel())[1:]
        largest = np.argwhere(labels == int(np.argmax(sizes)) + 1).astype(np.float64)
        scale = np.asarray(sp if sp is not None else (1.0, 1.0, 1.0))
        out[len_key] = principal_axis_length(largest * scale, tuple(scale))
        per_slice = m.sum(axis=(0, 1))
        k = int(np.argmax(per_slice))
        out[area_key] = float(per_slice[k] * pixel_mm2)
        out["area_max_slice"] = k
        present = np.flatnonzero(per_slice)
        out["slice_min"], out["slice_max"] = int(present[0]), int(present[-1])
        out["n_slices"] = int(present[-1] - present[0] + 1)
        centroid = np.argwhere(m).mean(axis=0)
    else:
        out[len_key] = 0.0
        out[area_key] = 0.0
        out["area_max_slice"] = out["slice_min"] = out["slice_max"] = None
        out["n_slices"] = 0
        centroid = None
    for i, axis in enumerate(("row", "col", "slice")):
        out[f"centroid_{axis}_vox"] = None if centroid is None else float(centroid[i])
    if sp is not None:
        for i, axis in enumerate(("row", "col", "slice")):
            out[f"centroid_{axis}_mm"] = None if centroid is None else float(centroid[i] * sp[i])
    if affine is not None:
        aff = np.asarray(affine, dtype=np.float64)
        world = None if centroid is None else aff[:3, :3] @ centroid + aff[:3, 3]
        for i, axis in enumerate("xyz"):
            out[f"centroid_{axis}_ras_mm"] = None if world is None else float(world[i])

    means = {}
    for name in mods:
        key = modality_key(name)
        if n:
            values = np.asarray(volumes[name])[m].astype(np.float64)
            means[key] = float(values.mean())
            out[f"{key}_mean_hu"] = means[key]
            out[f"{key}_median_hu"] = float(np.median(values))
        else:
            means[key] = None
            out[f"{key}_mean_hu"] = out[f"{key}_median_hu"] = None
    if "cta" in means and "ncct" in means:
        if n:
            out["perviousness_hu"] = means["cta"] - means["ncct"]
            out["pervious"] = bool(out["perviousness_hu"] >= pervious_threshold_hu)
        else:
            out["perviousness_hu"] = out["pervious"] = None
    return out


def biomarker_row(pred, truth=None, spacing_mm=None, volumes: dict | None = None, windows: dict | None = None,
                  intensity: str = "HU", affine=None) -> dict:
    """Biomarkers of the prediction ("pred_" keys) and, if given, the truth ("true_" keys).

    One flat dict to merge into a case's metrics row; the agreement module
    pairs pred_<key> with true_<key> across cases.
    """
    row = {f"pred_{k}": v for k, v in case_biomarkers(pred, spacing_mm, volumes, windows, intensity,
                                                        affine).items()}
    if truth is not None:
        row.update({f"true_{k}": v for k, v in case_biomarkers(truth, spacing_mm, volumes, windows, intensity,
                                                                 affine).items()})
    return row
