"""How far each predicted component lies from contrast-filled arterial lumen on CTA.

A thrombus sits inside an artery, and the artery upstream of it is filled
with contrast on CTA, so a true clot lies next to (or inside, when it is
pervious) lumen of at least VESSEL_MIN_HU. A component in the parenchyma,
millimetres from any opacified vessel, is not a clot: such specks were most
of the false alarms of a model that had learned that a clot need not be
hyperdense on NCCT (an iso-dense clot looks like brain on both modalities,
and only its place in a vessel tells it apart). The post-processing choice
MAX_VESSEL_DISTANCE_MM (off by default; held at a distance, or with None
chosen on the validation volumes like the others, see
`clotseg.postprocessing`) drops the components farther than that.

The converse holds too: a thrombus is a filling defect, so its CTA
attenuation stays near its NCCT value (45-75 HU, plus 0-30 HU where it is
pervious; ../shared/reference/clinical.md), while opacified lumen is above
150 HU. A component whose median CTA HU is lumen-bright is a piece of patent
artery (or calcified wall), not a clot: MAX_COMPONENT_CTA_HU drops those
(`component_medians`).
"""

from __future__ import annotations

import numpy as np

from clotseg.helpers import component_stat

# Opacified arterial lumen on CTA: 200-500 HU in the large arteries; partial
# volume brings a thin M2/M3 branch down towards 100-150 HU. Brain and
# unenhanced blood stay under 80 HU. Calcified plaque (>= 130 HU) also passes,
# which is right: it sits in the arterial wall.
VESSEL_MIN_HU = 100.0
# The modality whose HU the vessel mask is read from.
VESSEL_MODALITY = "CTA"


def available(modalities, windows_hu: dict) -> bool:
    """Whether the vessel distance can be measured: a modality named CTA
    with an HU window (its volumes are in HU, not already normalised)."""
    return VESSEL_MODALITY in list(modalities) and windows_hu.get(VESSEL_MODALITY) is not None


def vessel_mask(volumes: list[np.ndarray], modalities) -> np.ndarray:
    """(H, W, D) bool: the CTA voxels of at least VESSEL_MIN_HU.

    volumes: one float HU array (H, W, D) per modality, in `modalities` order.
    """
    return np.asarray(volumes[list(modalities).index(VESSEL_MODALITY)]) >= VESSEL_MIN_HU


def case_vessels(case, volumes: list[np.ndarray], modalities, default_spacing=None) -> tuple:
    """(vessel mask (H, W, D) bool, spacing mm or None) of one case, as the
    tuner and testing both measure it: the spacing is the case sidecar's,
    else `default_spacing` (VOXEL_SPACING_MM), else None (1 mm per voxel).
    case: a `clotseg.cohort.Case`; volumes: its HU arrays in `modalities` order."""
    return vessel_mask(volumes, modalities), case.spacing_mm(default_spacing)


def component_distances(labels: np.ndarray, n: int, vessel: np.ndarray, spacing_mm, max_mm: float,
                        offset=(0, 0, 0)) -> np.ndarray:
    """Per component 1..n of `labels` (int, the box of `vessel` (H, W, D)
    bool that starts at `offset`; by default the whole of it), the distance
    in mm from its nearest voxel to the nearest `vessel` voxel (0 when it
    overlaps one); np.inf when none lies within `max_mm`.

    Each component is measured in its own box widened by `max_mm`, so the
    cost follows the components, not the volume. spacing_mm: (row, col,
    slice) mm; None = 1 mm (distances in voxels).
    """
    from scipy import ndimage  # here, not at import: settings imports this module for `available`

    if len(offset) != labels.ndim or vessel.ndim != labels.ndim:
        raise ValueError(f"component_distances: labels {labels.shape}, vessel {vessel.shape} and offset "
                         f"{tuple(offset)} must have the same number of axes")
    out = np.full(n, np.inf)
    if n == 0:
        return out
    spacing = np.asarray(spacing_mm if spacing_mm is not None else (1.0, 1.0, 1.0), dtype=np.float64)
    margin = np.ceil(max_mm / spacing).astype(int) + 1
    for i, box in enumerate(ndimage.find_objects(labels, max_label=n)):
        if box is None:
            continue
        # the component's box in the volume, widened by max_mm (clipped at its edges)
        wide = tuple(slice(max(0, s.start + o - m), min(size, s.stop + o + m))
                     for s, o, m, size in zip(box, offset, margin, vessel.shape))
        near = vessel[wide]
        if not near.any():
            continue
        # distance of every voxel of the widened box to the nearest vessel voxel, in mm
        dist = ndimage.distance_transform_edt(~near, sampling=spacing)
        own = tuple(slice(s.start + o - w.start, s.stop + o - w.start) for s, o, w in zip(box, offset, wide))
        d = float(dist[own][labels[box] == i + 1].min())
        out[i] = d if d <= max_mm else np.inf
    return out


def cta_volume(volumes: list[np.ndarray], modalities) -> np.ndarray:
    """(H, W, D) int16: the CTA in whole HU, for the lumen filter (MAX_COMPONENT_CTA_HU).

    Whole HU are ample for a threshold of about a hundred, and testing keeps
    this array per case while its prediction waits in the queue, so it takes
    half the memory of float32 (a quarter of float64). The tuner and testing
    both read the CTA through here, so they see the same values.
    volumes: one HU array (H, W, D) per modality, in `modalities` order.
    """
    cta = np.asarray(volumes[list(modalities).index(VESSEL_MODALITY)])
    info = np.iinfo(np.int16)
    return np.clip(np.rint(cta), info.min, info.max).astype(np.int16)


def component_medians(labels: np.ndarray, n: int, values: np.ndarray, offset=(0, 0, 0)) -> np.ndarray:
    """Per component 1..n of `labels` (int, the box of `values` that starts
    at `offset`; by default the whole of it), the median of `values` (e.g.
    the CTA in HU) over its voxels; float64 (n,), nan for a label with no
    voxel."""
    if len(offset) != labels.ndim or values.ndim != labels.ndim:
        raise ValueError(f"component_medians: labels {labels.shape}, values {values.shape} and offset "
                         f"{tuple(offset)} must have the same number of axes")
    if n == 0:
        return np.zeros(0)
    from scipy import ndimage  # here, not at import (see component_distances)

    box = tuple(slice(o, o + size) for o, size in zip(offset, labels.shape))
    return component_stat(labels, n, values[box], ndimage.median)
