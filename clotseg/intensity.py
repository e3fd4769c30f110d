"""HU windowing, uint8 intensity codes and center padding.

The model sees each modality as a uint8 "intensity code" 0..255:
code = round(255 * clip((HU - low) / (high - low), 0, 1)) for that modality's
window. Storing codes (not floats) makes samples 4x smaller on disk and on
the host-to-GPU link; the model's first layer rescales them to [0, 1].
Training slices, test-time slices and every importer go through these
functions, so preprocessing is identical everywhere.
"""

from __future__ import annotations

import numpy as np

from clotseg.helpers import slice_runs


def window_to_unit(volume: np.ndarray, window: tuple[float, float] | None) -> np.ndarray:
    """Map HU to [0, 1] with a (low, high) window; clip outside.

    Args:
        volume: any-shape array in HU (or already in [0, 1] when window is None).
        window: (low_HU, high_HU) with low < high, or None for pre-normalised data.
    Returns:
        float32 array of the same shape in [0, 1].
    """
    vol = np.asarray(volume, dtype=np.float32)
    if window is None:
        return np.clip(vol, 0.0, 1.0)
    low, high = float(window[0]), float(window[1])
    return np.clip((vol - low) / (high - low), 0.0, 1.0)


def to_codes(unit: np.ndarray) -> np.ndarray:
    """[0, 1] float -> uint8 codes 0..255 (round to nearest)."""
    return np.rint(np.asarray(unit, dtype=np.float32) * 255.0).astype(np.uint8)


def encode(volume: np.ndarray, window: tuple[float, float] | None) -> np.ndarray:
    """HU volume -> uint8 intensity codes through `window` (see module doc).

    The same arithmetic as `to_codes(window_to_unit(volume, window))`, in
    one float32 buffer updated in place: a test-time volume is encoded at
    GPU speed only if it does not allocate (and page-fault) five temporaries.
    """
    if window is None:
        unit = np.clip(np.asarray(volume, dtype=np.float32), 0.0, 1.0)
    else:
        low, high = float(window[0]), float(window[1])
        unit = np.subtract(volume, np.float32(low), dtype=np.float32)
        unit /= np.float32(high - low)
        np.clip(unit, 0.0, 1.0, out=unit)
    unit *= np.float32(255.0)
    np.rint(unit, out=unit)
    return unit.astype(np.uint8)


def pad_offsets(in_hw: tuple[int, int], out_hw: tuple[int, int]) -> tuple[int, int]:
    """Top/left offsets that center an (h, w) plane inside (H, W).

    Raises ValueError when the plane is larger than the target.
    """
    h, w = int(in_hw[0]), int(in_hw[1])
    H, W = int(out_hw[0]), int(out_hw[1])
    if h > H or w > W:
        raise ValueError(f"slice of {h}x{w} pixels is larger than the model input {H}x{W}")
    return (H - h) // 2, (W - w) // 2


def center_pad(arr: np.ndarray, out_hw: tuple[int, int], value=0) -> np.ndarray:
    """Center-pad the first two axes of `arr` (h, w, ...) to (H, W, ...).

    Padding is `value` (0 = the bottom of every window, i.e. "air/black").
    """
    top, left = pad_offsets(arr.shape[:2], out_hw)
    out = np.full((int(out_hw[0]), int(out_hw[1])) + arr.shape[2:], value, dtype=arr.dtype)
    out[top:top + arr.shape[0], left:left + arr.shape[1]] = arr
    return out


def center_crop(arr: np.ndarray, in_hw: tuple[int, int]) -> np.ndarray:
    """Undo `center_pad`: crop the first two axes (H, W, ...) back to (h, w, ...)."""
    top, left = pad_offsets(in_hw, arr.shape[:2])
    return arr[top:top + int(in_hw[0]), left:left + int(in_hw[1])]


def volume_to_samples(volumes: list[np.ndarray], windows: list, out_hw: tuple[int, int]) -> np.ndarray:
    """Stack modality volumes into padded per-slice model inputs.

    Args:
        volumes: one (h, w, D) HU array per modality, all the same shape.
        windows: one (low, high) HU window or None per modality.
        out_hw: model input (H, W) with H >= h, W >= w.
    Returns:
        uint8 codes of shape (D, H, W, C), C = number of modalities,
        slices in the volume's order.
    """
    h, w, d = volumes[0].shape
    top, left = pad_offsets((h, w), out_hw)
    out = np.zeros((d, int(out_hw[0]), int(out_hw[1]), len(volumes)), dtype=np.uint8)
    for c, (vol, win) in enumerate(zip(volumes, windows)):
        # (h, w, D) -> (D, h, w): one transpose per channel, no per-slice loop.
        out[:, top:top + h, left:left + w, c] = np.moveaxis(encode(vol, win), -1, 0)
    return out


def mask_to_samples(mask: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """(h, w, D) mask -> (D, H, W) uint8, center-padded with background."""
    h, w, d = mask.shape
    top, left = pad_offsets((h, w), out_hw)
    out = np.zeros((d, int(out_hw[0]), int(out_hw[1])), dtype=np.uint8)
    out[:, top:top + h, left:left + w] = np.moveaxis(normalise_mask(mask), -1, 0)
    return out


def normalise_mask(mask: np.ndarray) -> np.ndarray:
    """0/1 or 0/255 mask (any dtype) -> uint8 labels; 255 becomes 1.

    Multi-class masks (0..K-1) pass through unchanged. Validity is checked in
    `clotseg.cohort`, before any stage runs.
    """
    m = np.asarray(mask)
    if m.dtype == np.bool_:
        return m.astype(np.uint8)
    m = np.rint(m).astype(np.int64) if m.dtype.kind == "f" else m.astype(np.int64)
    if m.size and m.max() == 255:
        m = (m == 255)
    return m.astype(np.uint8)


# ------------------------------------------------------------ 2.5D context
# With CONTEXT_SLICES = k the network sees, for every modality, the slices
# z-k .. z+k as channels, modality-major: [CTA z-k..z+k, NCCT z-k..z+k].
# At a volume's first and last slices the missing neighbours repeat the edge
# slice (nearest-slice padding), so edge slices look like a locally constant
# volume rather than like air, which would be a strong, false cue. A gap in
# the source's slice numbers (the slice importer's sidecar "slice_gaps", e.g.
# JPG slices 3, 4, 7 of a patient) is an edge too: the slice across it is not
# a neighbour, so each run of adjacent slices is padded on its own.

def context_positions(depth: int, k: int, slice_gaps=None) -> np.ndarray:
    """(depth, 2k+1) int64 slice indices z-k..z+k, clamped to the run of
    adjacent slices that holds z ([0, depth-1] without `slice_gaps`: the
    stack indices after which the next slice is not adjacent)."""
    depth = int(depth)
    z = np.arange(depth)[:, None] + np.arange(-int(k), int(k) + 1)[None, :]
    lo, hi = np.zeros(depth, dtype=np.int64), np.full(depth, max(depth - 1, 0), dtype=np.int64)
    for start, stop in slice_runs(depth, slice_gaps):
        lo[start:stop], hi[start:stop] = start, stop - 1
    return np.clip(z, lo[:, None], hi[:, None]).astype(np.int64)


def stack_context(gathered: np.ndarray) -> np.ndarray:
    """(N, 2k+1, H, W, C) neighbour slices -> (N, H, W, C * (2k+1)), modality-major."""
    n, j, h, w, c = gathered.shape
    return np.ascontiguousarray(np.moveaxis(gathered, 1, -1).reshape(n, h, w, c * j))


def add_context(samples: np.ndarray, k: int, slice_gaps=None) -> np.ndarray:
    """(D, H, W, C) slices of one volume -> (D, H, W, C * (2k+1)) 2.5D inputs
    (neighbours never taken across one of `slice_gaps`)."""
    if k == 0:
        return samples
    positions = context_positions(samples.shape[0], k, slice_gaps)   # (D, 2k+1)
    d, h, w, c = samples.shape
    j = positions.shape[1]
    # channel by channel into the output (the layout of `stack_context`), with
    # no (D, 2k+1, H, W, C) intermediate of the gathered neighbours
    out = np.empty((d, h, w, c * j), dtype=samples.dtype)
    for m in range(c):
        for o in range(j):
            out[..., m * j + o] = samples[positions[:, o], ..., m]
    return out


def store_context_rows(case_ids, slices, k: int, runs=None) -> np.ndarray:
    """(N, 2k+1) store rows of each sample's neighbour slices in a sample store.

    Args:
        case_ids, slices: per store row, its case and slice index (samples.csv).
        k: CONTEXT_SLICES.
        runs: per store row, the index of its run of adjacent slices within
            the case (samples.csv "run", from the sidecar's slice_gaps);
            None = every case is one run.
    Neighbours come from the same case and run only; beyond the run's
    first/last stored slice the edge slice repeats (as `context_positions`).
    """
    case_ids = np.asarray(case_ids)
    slices = np.asarray(slices, dtype=np.int64)
    runs = np.zeros(len(slices), dtype=np.int64) if runs is None else np.asarray(runs, dtype=np.int64)
    out = np.repeat(np.arange(len(slices), dtype=np.int64)[:, None], 2 * k + 1, axis=1)
    if k == 0:
        return out
    groups = {}
    for i, key in enumerate(zip(case_ids.tolist(), runs.tolist())):
        groups.setdefault(key, []).append(i)
    for members in groups.values():
        rows = np.asarray(members, dtype=np.int64)
        rows = rows[np.argsort(slices[rows], kind="stable")]
        out[rows] = rows[context_positions(len(rows), k)]
    return out


def centre_channels(n_modalities: int, k: int) -> list[int]:
    """Channel index of each modality's own (centre) slice in a 2.5D input."""
    return [m * (2 * k + 1) + k for m in range(n_modalities)]


def modality_channels(n_modalities: int, k: int, symmetry: bool = False) -> list[list[int]]:
    """Channel indices of each modality in the model input: its 2 k + 1
    context slices and, with `symmetry`, their mirrored planes (appended
    after all original planes, see below)."""
    span, planes = 2 * k + 1, n_modalities * (2 * k + 1)
    return [[m * span + j + copy * planes for copy in range(2 if symmetry else 1) for j in range(span)]
            for m in range(n_modalities)]


# ------------------------------------------------------ symmetry channels
# With SYMMETRY_CHANNELS the network also sees every input plane mirrored
# left-right about the head's midline, appended after the original planes:
# [CTA ctx, NCCT ctx, CTA mirrored ctx, NCCT mirrored ctx]. Each pixel then
# carries its contralateral counterpart, as a reader compares hemispheres:
# an occluded ICA or M1 that is not hyperdense is a bright vessel on one side
# only (DeepSymNet, Barman et al. 2019, detects large-vessel occlusions from
# exactly this asymmetry on CTA). The mirror is taken before any geometric
# augmentation, so a rotated or shifted sample keeps the pixel <-> counterpart
# pairing of the anatomy.

def midline_column(plane: np.ndarray, min_fraction: float = 0.01) -> float:
    """The head's left-right midline in an (H, W) uint8 plane: the mean
    column of its non-zero (above-window-floor: tissue, not air or padding)
    pixels; the image centre when fewer than `min_fraction` are non-zero."""
    on = np.asarray(plane) > 0
    count = on.sum(axis=0)
    total = int(count.sum())
    if total < min_fraction * on.size:
        return (on.shape[1] - 1) / 2.0
    return float((count * np.arange(on.shape[1])).sum() / total)


def mirror_planes(sample: np.ndarray, midline: float) -> np.ndarray:
    """(H, W, C) planes mirrored about column `midline`: column j takes
    column round(2 * midline - j); columns that fall outside are 0."""
    w = sample.shape[1]
    src = np.rint(2.0 * midline - np.arange(w)).astype(np.int64)
    valid = (src >= 0) & (src < w)
    out = np.zeros_like(sample)
    out[:, valid] = sample[:, src[valid]]
    return out


def add_mirror(samples: np.ndarray, k: int) -> np.ndarray:
    """(N, H, W, C') 2.5D inputs -> (N, H, W, 2C'): the planes, then the same
    planes mirrored about each sample's midline (estimated on the first
    modality's centre slice, channel k, and used for all its planes)."""
    out = np.empty((*samples.shape[:3], 2 * samples.shape[3]), dtype=samples.dtype)
    out[..., :samples.shape[3]] = samples
    for i, sample in enumerate(samples):
        out[i, ..., samples.shape[3]:] = mirror_planes(sample, midline_column(sample[..., k]))
    return out


def model_inputs(samples: np.ndarray, k: int, symmetry: bool = False, slice_gaps=None) -> np.ndarray:
    """(D, H, W, C) slices of one volume -> the model's (D, H, W, C'') inputs:
    2.5D context (`add_context`, not across `slice_gaps`), then with
    `symmetry` the mirrored planes."""
    x = add_context(samples, k, slice_gaps)
    return add_mirror(x, k) if symmetry else x


def volume_inputs(volumes: list[np.ndarray], windows: list, out_hw: tuple[int, int], k: int = 0,
                  symmetry: bool = False, slice_gaps=None) -> np.ndarray:
    """One case's model inputs straight from its HU volumes: uint8 (D, H, W, C'').

    Equal to `model_inputs(volume_to_samples(volumes, windows, out_hw), k,
    symmetry, slice_gaps)`, built with a third of the memory traffic: each
    modality is encoded once into contiguous (D, h, w) planes, and every
    2.5D channel is copied from those planes (whole rows) straight into the
    padded output, without the interleaved (D, H, W, C) intermediate. This
    is test time's host cost per slice, which a GPU otherwise waits for.
    """
    if symmetry:  # the mirror needs the whole padded plane: the general path
        return model_inputs(volume_to_samples(volumes, windows, out_hw), k, symmetry, slice_gaps)
    h, w, d = volumes[0].shape
    top, left = pad_offsets((h, w), out_hw)
    positions = context_positions(d, k, slice_gaps)   # (D, 2k+1)
    j = positions.shape[1]
    out = np.zeros((d, int(out_hw[0]), int(out_hw[1]), len(volumes) * j), dtype=np.uint8)
    for m, (vol, win) in enumerate(zip(volumes, windows)):
        planes = np.ascontiguousarray(np.moveaxis(encode(vol, win), -1, 0))   # (D, h, w)
        for o in range(j):
            out[:, top:top + h, left:left + w, m * j + o] = planes[positions[:, o]]
    return out
