"""Synthetic clots: a clot drawn into an opacified artery of a clot-free slice.

SYNTHETIC_CLOT_AUG (stage 3) turns a share of the clot samples into
clot-free training slices with a clot inserted here, so the network sees
clots at sites, calibres and densities its few training clots do not
have. A thrombus on CTA is a filling defect: where the lumen was bright
(above 150 HU) it has the clot's own attenuation, its NCCT value plus
0-30 HU; on the NCCT the clot is 45-75 HU against flowing blood's 38-45,
and about 30% of clots are not hyperdense (../shared/reference/clinical.md).
The inserted clot therefore fills a short piece of one artery's lumen, in
the centre slice and, where the lumen runs on, in the 2.5D context slices,
and it is drawn from those ranges: an iso-dense one shows itself only as
the gap in the lumen, as the faint clots the `cpu` preset misses do.

Everything works on the uint8 codes of the sliced store (see
clotseg.intensity): a modality's HU window converts HU to codes.
"""

from __future__ import annotations

import numpy as np

# Opacified arterial lumen on CTA (HU): above 150 counts as well opacified;
# the upper bound leaves out bone and dense calcium (130 HU and up on both
# scans, so the NCCT bound below takes calcium of lower CTA HU).
LUMEN_CTA_HU = (150.0, 550.0)
LUMEN_NCCT_MAX_HU = 100.0          # flowing blood 38-45 HU on NCCT; calcium and bone far above
BLOOD_NCCT_HU = 41.0               # mean flowing arterial blood on NCCT
CLOT_NCCT_OFFSET_HU = (-5.0, 30.0)  # clot minus blood on NCCT: iso-dense (~30% of clots) to 71 HU
PERVIOUS_HU = (0.0, 30.0)          # clot CTA minus clot NCCT (perviousness)
CTA_NOISE_HU = (4.0, 12.0)         # standard deviation of the noise drawn into the clot on CTA
RADIUS_PX = (1.5, 4.0)             # the clot covers the lumen within this radius of its seed pixel
RIM_CTA_HU = 90.0                  # and the lumen's blurred rim around it (pixels next to it above this)
CONTEXT_P = 0.7                    # probability that the clot runs on into each context slice
MIN_PIXELS = 3                     # smallest clot in the centre slice (else another seed is tried)
TRIES = 8
MIN_LUMEN_PIXELS = 8               # a source slice needs this much lumen in its centre plane


def constants() -> dict:
    """The module's UPPER_CASE ranges by name (the augmentation stage's
    fingerprint holds them, so a changed range rebuilds the augmented
    samples; one added later is held without being listed here)."""
    return {name: value for name, value in globals().items() if name.isupper()}


def _codes(hu: float, window) -> float:
    """HU -> (unrounded) uint8 code of `window` (low, high)."""
    low, high = float(window[0]), float(window[1])
    return (hu - low) * 255.0 / (high - low)


def lumen_mask(cta: np.ndarray, cta_window, ncct: np.ndarray | None = None, ncct_window=None) -> np.ndarray:
    """Opacified lumen of one plane (or a stack of them): bool, cta's shape.

    cta (and ncct) are uint8 (..., H, W) codes of their HU windows; lumen is CTA
    within LUMEN_CTA_HU and, with an NCCT, NCCT below LUMEN_NCCT_MAX_HU
    (bone and calcium are bright on both scans, contrast only on the CTA).
    """
    lo, hi = (_codes(h, cta_window) for h in LUMEN_CTA_HU)
    lumen = (cta >= lo) & (cta <= min(hi, 254.5))
    if ncct is not None and ncct_window is not None:
        lumen &= ncct < _codes(LUMEN_NCCT_MAX_HU, ncct_window)
    return lumen


def insert_clot(image: np.ndarray, windows: list, cta: int, ncct: int | None, seed) -> tuple[np.ndarray, np.ndarray]:
    """Draw one clot into an artery of a clot-free sample.

    Args:
        image: (H, W, C) uint8, modality-major, C = len(windows) x planes
            (the 2.5D context planes, centre in the middle).
        windows: per modality its HU window (low, high); the CTA's and
            (if any) the NCCT's must be given.
        cta, ncct: the modality indices of the CTA and the NCCT (None: no
            NCCT; then the clot changes the CTA only).
        seed: anything numpy's default_rng takes.
    Returns:
        (image, masks): a new (H, W, C) uint8 image and (planes, H, W) uint8
        clot masks, one per context plane (centre in the middle). Without
        enough lumen in the centre plane the image comes back unchanged
        and the masks empty.
    """
    from scipy.ndimage import binary_dilation, gaussian_filter, label

    rng = np.random.default_rng(seed)
    planes = image.shape[-1] // len(windows)
    centre = planes // 2
    h, w = image.shape[:2]
    lumens = [lumen_mask(image[..., cta * planes + p], windows[cta],
                         image[..., ncct * planes + p] if ncct is not None else None,
                         windows[ncct] if ncct is not None else None) for p in range(planes)]
    masks = np.zeros((planes, h, w), dtype=np.uint8)
    seeds = np.argwhere(lumens[centre])
    if len(seeds) < MIN_LUMEN_PIXELS:
        return image.copy(), masks
    rows, cols = np.ogrid[:h, :w]
    for _ in range(TRIES):
        r0, c0 = seeds[rng.integers(len(seeds))]
        disk = (rows - r0) ** 2 + (cols - c0) ** 2 <= rng.uniform(*RADIUS_PX) ** 2
        parts, _ = label(lumens[centre] & disk)
        region = parts == parts[r0, c0]
        if region.sum() >= MIN_PIXELS:
            break
    else:
        return image.copy(), masks
    rim = _codes(RIM_CTA_HU, windows[cta])

    def with_rim(core, p):
        # an occluding clot fills the whole cross-section: the lumen's partial-volume rim too, or a
        # bright ring would remain around it
        return binary_dilation(core) & (core | (image[..., cta * planes + p] >= rim))

    masks[centre] = with_rim(region, centre)
    for p in range(planes):
        if p != centre and rng.random() < CONTEXT_P:
            # the clot runs on where the artery does: the lumen of that plane within the same disk
            masks[p] = with_rim(lumens[p] & disk, p)
    # the clot's attenuation (HU): NCCT relative to blood, CTA = its NCCT + perviousness + noise
    ncct_offset = rng.uniform(*CLOT_NCCT_OFFSET_HU)
    cta_hu = BLOOD_NCCT_HU + ncct_offset + rng.uniform(*PERVIOUS_HU)
    noise_hu = rng.uniform(*CTA_NOISE_HU)
    per_hu_cta = 255.0 / (float(windows[cta][1]) - float(windows[cta][0]))
    target_code = _codes(cta_hu, windows[cta])
    ncct_span = float(windows[ncct][1]) - float(windows[ncct][0]) if ncct is not None else None
    out = image.astype(np.float32)
    for p in range(planes):
        if not masks[p].any():
            continue
        # the clot replaces the lumen inside its mask; outside, a soft edge (the scanner's blur)
        blur = gaussian_filter(masks[p].astype(np.float32), 0.7)
        weight = np.maximum(masks[p], blur / max(float(blur.max()), 1e-6))
        noise = gaussian_filter(rng.normal(0.0, 1.0, (h, w)).astype(np.float32), 0.6)
        noise *= noise_hu * per_hu_cta / max(float(noise.std()), 1e-6)
        target = target_code + noise
        k = cta * planes + p
        out[..., k] += weight * (target - out[..., k])
        if ncct is not None:
            out[..., ncct * planes + p] += weight * ncct_offset * 255.0 / ncct_span
    return np.clip(np.rint(out), 0, 255).astype(np.uint8), masks


def lumen_slices(images: np.ndarray, clot_pixels: np.ndarray, windows: list, cta: int,
                 ncct: int | None) -> np.ndarray:
    """Clot-free store slices with at least MIN_LUMEN_PIXELS of lumen (bool
    per slice): the sources a synthetic clot can be drawn into. images: the
    (N, H, W, M) uint8 sliced store (one plane per modality)."""
    counts = np.zeros(len(images), dtype=np.int64)
    for start in range(0, len(images), 256):  # a memmap read in chunks: bounded memory
        chunk = np.asarray(images[start:start + 256])
        lumen = lumen_mask(chunk[..., cta], windows[cta], chunk[..., ncct] if ncct is not None else None,
                           windows[ncct] if ncct is not None else None)
        counts[start:start + len(chunk)] = lumen.reshape(len(chunk), -1).sum(axis=1)
    return (np.asarray(clot_pixels) == 0) & (counts >= MIN_LUMEN_PIXELS)
