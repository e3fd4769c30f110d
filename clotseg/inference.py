"""Volume inference: slice on the fly, predict in batches, rebuild 3D.

Preprocessing is exactly the training one (clotseg.intensity): each modality
windowed to uint8 codes, center-padded to the model input; predictions are
cropped back to the input's in-plane size and restacked along the last axis.
"""

from __future__ import annotations

import numpy as np

from clotseg.helpers import label_components, slice_runs
from clotseg.intensity import center_crop, model_inputs, volume_to_samples



def predict_samples(model, samples: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """Predict (N, H, W, C) uint8 samples -> (N, H, W, K) float32 probabilities.

    Every call sees the same batch shape (the last chunk is zero-padded), so
    XLA/JAX compile the forward pass once instead of once per remainder.
    """
    n = samples.shape[0]
    out = None
    for start in range(0, n, batch_size):
        chunk = samples[start:start + batch_size]
        k = chunk.shape[0]
        if k < batch_size:
            chunk = np.concatenate([chunk, np.zeros((batch_size - k, *chunk.shape[1:]), chunk.dtype)])
        prob = model.predict_on_batch(chunk)
        if isinstance(prob, (list, tuple)):
            prob = prob[0]  # a deep-supervision training model: the full-size output comes first
        prob = np.asarray(prob, dtype=np.float32)[:k]
        if out is None:
            out = np.empty((n, *prob.shape[1:]), dtype=np.float32)
        out[start:start + k] = prob
    return out


def predict_volume_members(model, volumes: list[np.ndarray], windows: list, input_hw: tuple[int, int],
                           batch_size: int = 32, tta_flips: bool = False, context_slices: int = 0,
                           symmetry: bool = False, slice_gaps=None) -> list[np.ndarray]:
    """The ensemble members of one case's prediction: plain, then (with
    `tta_flips`) the un-flipped predictions of the horizontally and the
    vertically flipped slices. Each is float32 (h, w, D, K); see
    `predict_volume` for the arguments. Kept apart so the flip average and
    its spread (uncertainty) come from one set of forward passes.
    """
    h, w, _ = volumes[0].shape
    samples = model_inputs(volume_to_samples(volumes, windows, input_hw), context_slices, symmetry,
                           slice_gaps)  # (D, H, W, C')
    members = [predict_samples(model, samples, batch_size)]
    if tta_flips:
        for axis in (1, 2):
            flipped = np.ascontiguousarray(np.flip(samples, axis=axis))
            members.append(np.flip(predict_samples(model, flipped, batch_size), axis=axis))
    # (D, H, W, K) -> (h, w, D, K), cropped back to the input's in-plane size
    return [np.ascontiguousarray(center_crop(np.moveaxis(p, 0, 2), (h, w))) for p in members]


def predict_volume(model, volumes: list[np.ndarray], windows: list, input_hw: tuple[int, int],
                   batch_size: int = 32, tta_flips: bool = False, context_slices: int = 0,
                   symmetry: bool = False, slice_gaps=None) -> np.ndarray:
    """Probabilities for one case.

    Args:
        volumes: one (h, w, D) HU volume per modality, in channel order.
        windows: the HU window (or None) of each modality, as in training.
        input_hw: the model's (H, W).
        tta_flips: also predict the horizontally and vertically flipped
            slices and average the (un-flipped) probabilities.
        context_slices: the run's CONTEXT_SLICES (2.5D neighbours per side;
            edge slices repeat, as in training).
        symmetry: the run's SYMMETRY_CHANNELS (the planes mirrored about the
            midline appended, as in training).
        slice_gaps: the case's sidecar "slice_gaps" (stack indices after
            which the next slice is not adjacent): 2.5D context never
            reaches across them, as in training.
    Returns:
        float32 (h, w, D, K) probabilities (K = 1 for a sigmoid model).
    """
    members = predict_volume_members(model, volumes, windows, input_hw, batch_size, tta_flips, context_slices,
                                     symmetry, slice_gaps)
    return members[0] if len(members) == 1 else np.mean(members, axis=0, dtype=np.float32)


def to_mask(prob: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """(h, w, D, K) probabilities -> (h, w, D) uint8 labels.

    K = 1: clot where p > threshold. K > 1: argmax over classes.
    """
    if prob.shape[-1] == 1:
        return (prob[..., 0] > threshold).astype(np.uint8)
    return np.argmax(prob, axis=-1).astype(np.uint8)


def postprocess(mask: np.ndarray, min_voxels: int = 0, keep_largest: bool = False,
                slice_gaps=None) -> np.ndarray:
    """Drop 3D components (26-connected) below `min_voxels`; optionally keep
    only the largest. Works per label for multi-class masks; returns uint8.
    `slice_gaps` (sidecar): no component joins slices across a gap.
    """
    if min_voxels <= 0 and not keep_largest:
        return mask
    runs = slice_runs(mask.shape[-1], slice_gaps)
    out = np.zeros_like(mask)
    for label in np.unique(mask):
        if label == 0:
            continue
        comps, n = label_components(mask == label, runs)
        if n == 0:
            continue
        sizes = np.bincount(comps.ravel())[1:]
        keep = sizes >= max(min_voxels, 1)
        if keep_largest and keep.any():
            largest = np.argmax(np.where(keep, sizes, -1))
            keep = np.zeros_like(keep)
            keep[largest] = True
        out[np.isin(comps, np.flatnonzero(keep) + 1)] = label
    return out
