"""An atlas-free box around the Circle of Willis, found from the CTA itself.

On the CTA resampled to the target spacing (`find_roi`):

1. bone: HU >= BONE_HU (smoothed by SMOOTH_MM first, against noise);
2. the intracranial space: per axial slice, what a closed ring of bone
   encloses (holes of the bone mask, dilated by RING_CLOSE_MM to close
   partial-volume gaps), less the bone. Slices where the skull is no closed
   ring (the skull base with its foramina, the neck, the vertex cut
   tangentially) enclose nothing, so the box looks above the skull base.
   If no slice encloses anything (a skull cut by the field of view, a
   craniectomy), the head (HU > HEAD_HU, holes filled) eroded by
   FALLBACK_ERODE of its radius stands in, and the record says so;
3. its core: voxels at least CORE_DEPTH of the slice's intracranial
   half-width away from the inner table, which drops the dural sinuses
   and most cortical veins (bright on CTA too) but keeps the circle, the
   carotid termini and the sylvian M2s;
4. contrast-filled vessels: core voxels with HU >= VESSEL_HU;
5. the box of ROI_SIZE_MM holding the most vessel voxels: along the slice
   axis first (window sums of the per-slice vessel counts), then in-plane
   (box sums of the vessel map summed over those slices). Among near-ties
   (within TIE of the best) the box centred nearest the middle of the
   vessels' extent (all but SPAN_TAIL at either end) wins, so a box larger
   than the vessel tree is centred on it. Along an axis
   shorter than the box the whole axis is kept (nothing is padded).

`find_roi` returns the box ([[start, stop) per axis] on the resampled grid)
and what it found; `crop` cuts it; `to_original_grid` puts an array of the
cropped grid (a prediction) back onto the original CTA grid.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from clotseg.preprocessing.geometry import Grid
from clotseg.preprocessing.resampling import resample_image, resample_mask

BONE_HU = 300.0
VESSEL_HU = 100.0
HEAD_HU = -300.0
SMOOTH_MM = 0.5
RING_CLOSE_MM = 1.0
CORE_DEPTH = 0.15
FALLBACK_ERODE = 0.2
TIE = 0.01
SPAN_TAIL = 0.005
MIN_VESSEL_VOXELS = 20


def box_size(roi_size_mm, spacing) -> tuple[int, int, int]:
    """ROI_SIZE_MM in voxels of `spacing` (rounded to the nearest voxel, at least 1)."""
    return tuple(max(1, int(round(float(r) / float(s)))) for r, s in zip(roi_size_mm, spacing))


def _fill_per_slice(mask: np.ndarray) -> np.ndarray:
    plane = np.zeros((3, 3, 1), dtype=bool)
    plane[:, :, 0] = ndimage.generate_binary_structure(2, 1)
    return ndimage.binary_fill_holes(mask, structure=plane)


def _disk(radius_vox_rows: float, radius_vox_cols: float) -> np.ndarray:
    ry, rx = max(0, int(round(radius_vox_rows))), max(0, int(round(radius_vox_cols)))
    y, x = np.ogrid[-ry:ry + 1, -rx:rx + 1]
    disk = (y / max(ry, 0.5)) ** 2 + (x / max(rx, 0.5)) ** 2 <= 1.0
    return disk[:, :, None]


def intracranial(cta: np.ndarray, spacing) -> tuple[np.ndarray, str]:
    """(bool mask of the intracranial space, "skull ring" or "head fallback")."""
    sp = np.asarray(spacing, dtype=np.float64)
    smooth = ndimage.gaussian_filter(cta.astype(np.float32), SMOOTH_MM / sp, mode="nearest")
    bone = smooth >= BONE_HU
    ring = ndimage.binary_dilation(bone, structure=_disk(RING_CLOSE_MM / sp[0], RING_CLOSE_MM / sp[1]))
    inside = _fill_per_slice(ring) & ~ring
    # a slice whose "inside" is tiny is not a closed skull ring (a hole in a bony blob)
    head = _fill_per_slice(smooth > HEAD_HU)
    area_head = head.sum(axis=(0, 1)).astype(np.float64)
    area_in = inside.sum(axis=(0, 1)).astype(np.float64)
    good = area_in >= 0.2 * np.maximum(area_head, 1.0)
    inside[:, :, ~good] = False
    if inside.any():
        return inside, "skull ring"
    # fallback: the head, eroded, less bone
    r = FALLBACK_ERODE * np.sqrt(np.maximum(area_head.max(), 1.0) / np.pi)   # in-plane voxels (rows ~ cols)
    core = ndimage.binary_erosion(head, structure=_disk(r, r * sp[0] / sp[1])) & ~ring
    return core, "head fallback"


def _core(inside: np.ndarray, spacing) -> np.ndarray:
    """Voxels at least CORE_DEPTH of their slice's intracranial half-width from its edge."""
    sp = np.asarray(spacing, dtype=np.float64)
    out = np.zeros_like(inside)
    for k in np.flatnonzero(inside.any(axis=(0, 1))):
        sl = inside[:, :, k]
        depth = ndimage.distance_transform_edt(sl, sampling=sp[:2])
        half_width = float(depth.max())
        out[:, :, k] = depth >= CORE_DEPTH * half_width
    return out


def _best_window(profile: np.ndarray, length: int) -> int:
    """Start of the window of `length` with the largest sum of `profile`
    (near-ties: the one centred nearest the profile's centre of mass)."""
    n = profile.size
    if length >= n:
        return 0
    c = np.concatenate([[0.0], np.cumsum(profile, dtype=np.float64)])
    sums = c[length:] - c[:n - length + 1]
    top = sums.max()
    cands = np.flatnonzero(sums >= top * (1.0 - TIE)) if top > 0 else np.arange(sums.size)
    mid = _span_middle(profile)
    return int(cands[np.argmin(np.abs(cands + (length - 1) / 2.0 - mid))])


def _span_middle(profile: np.ndarray) -> float:
    """Middle of the range holding all but SPAN_TAIL of each end of a non-negative profile."""
    total = float(profile.sum())
    if total <= 0:
        return (profile.size - 1) / 2.0
    c = np.cumsum(profile, dtype=np.float64) / total
    lo = int(np.searchsorted(c, SPAN_TAIL))
    hi = int(np.searchsorted(c, 1.0 - SPAN_TAIL))
    return (lo + min(hi, profile.size - 1)) / 2.0


def _best_box_2d(plane: np.ndarray, size: tuple[int, int]) -> tuple[int, int]:
    """(row, col) start of the size box with the largest sum of `plane` (near-ties: nearest its centre of mass)."""
    h, w = plane.shape
    bh, bw = min(size[0], h), min(size[1], w)
    c = np.zeros((h + 1, w + 1), dtype=np.float64)
    c[1:, 1:] = np.cumsum(np.cumsum(plane, axis=0, dtype=np.float64), axis=1)
    sums = c[bh:, bw:] - c[:h - bh + 1, bw:] - c[bh:, :w - bw + 1] + c[:h - bh + 1, :w - bw + 1]
    top = sums.max()
    rows, cols = np.nonzero(sums >= top * (1.0 - TIE)) if top > 0 else np.nonzero(np.ones_like(sums, bool))
    mid = (_span_middle(plane.sum(axis=1)), _span_middle(plane.sum(axis=0)))
    d = (rows + (bh - 1) / 2.0 - mid[0]) ** 2 + (cols + (bw - 1) / 2.0 - mid[1]) ** 2
    i = int(np.argmin(d))
    return int(rows[i]), int(cols[i])


def find_roi(cta: np.ndarray, spacing, roi_size_mm) -> dict:
    """The Circle-of-Willis box on a CTA (HU, (rows, cols, slices) at `spacing`).

    Returns {"box": [[start, stop] x 3] voxels of this grid, "size_vox",
    "centre_vox", "method" (intracranial mask used), "vessel_voxels",
    "found" (False: too few vessel voxels, the box is centred on the
    intracranial space or the volume instead)}.
    """
    size = box_size(roi_size_mm, spacing)
    inside, method = intracranial(cta, spacing)
    core = _core(inside, spacing)
    vessels = core & (cta >= VESSEL_HU)
    n_vessel = int(vessels.sum())
    found = n_vessel >= MIN_VESSEL_VOXELS
    weight = vessels if found else (core if core.any() else np.ones(cta.shape, dtype=bool))
    z0 = _best_window(weight.sum(axis=(0, 1)).astype(np.float64), size[2])
    z1 = min(cta.shape[2], z0 + size[2])
    r0, c0 = _best_box_2d(weight[:, :, z0:z1].sum(axis=2).astype(np.float64), size[:2])
    box = [[r0, min(cta.shape[0], r0 + size[0])], [c0, min(cta.shape[1], c0 + size[1])], [z0, z1]]
    return {"box": box, "size_vox": list(size), "centre_vox": [round((a + b - 1) / 2.0, 1) for a, b in box],
            "method": method, "vessel_voxels": n_vessel, "found": bool(found)}


def crop(array: np.ndarray, box) -> np.ndarray:
    return np.ascontiguousarray(array[tuple(slice(a, b) for a, b in box)])


def to_original_grid(array: np.ndarray, record: dict, kind: str = "mask") -> np.ndarray:
    """Put an array of a preprocessed case's grid (a prediction, a probability
    map) back onto the case's original CTA grid.

    `record` is the sidecar's "preprocess" entry (grids and box).
    kind "mask": labels (nearest neighbour, or "volume" with the record's
    mask interpolation); "image": linear, outside = 0.
    """
    resampled = Grid.from_json(record["resampled_grid"])
    original = Grid.from_json(record["original_grid"])
    box = record["roi"]["box"]
    arr = np.asarray(array)
    expected = tuple(b - a for a, b in box)
    if arr.shape[:3] != expected:
        raise ValueError(f"the array has shape {arr.shape}, the preprocessed case {expected}")
    full = np.zeros(resampled.shape, dtype=np.float32 if kind == "image" else np.uint8)
    full[tuple(slice(a, b) for a, b in box)] = arr
    if kind == "image":
        return resample_image(full, resampled, original, None, "linear", 0.0)
    return resample_mask(full, resampled, original, None, record.get("mask_interpolation", "nearest"))
