"""Volume inference: slice on the fly, predict in batches, rebuild 3D.

Preprocessing is exactly the training one (clotseg.intensity): each modality
windowed to uint8 codes, center-padded to the model input; predictions are
cropped back to the input's in-plane size and restacked along the last axis.

Throughput helpers (testing.py keeps a GPU busy with them):
  `prefetch`        runs a producer (loading, windowing) ahead in a thread;
  `predict_stream`  packs the slices of many volumes into fixed full batches;
  `flip_ensemble`   predicts the plain and both flipped members in one model
                    on the device (`split_members` takes them apart).
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from functools import partial

import numpy as np

from clotseg.helpers import component_peaks, label_components, slice_runs
from clotseg.intensity import center_crop, volume_inputs

_ITEM, _ERROR, _END = "item", "error", "end"


def _put(q: queue.Queue, message, stop: threading.Event) -> bool:
    """Put `message` unless the consumer has gone (then False): a short timeout
    loop, so a producer blocked on a full queue notices `stop` instead of
    waiting forever for a reader that closed the generator."""
    while not stop.is_set():
        try:
            q.put(message, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def _produce(iterable, q: queue.Queue, stop: threading.Event) -> None:
    """Thread body of `prefetch`: items, then one end (or error) message."""
    it = iter(iterable)
    try:
        for item in it:
            if not _put(q, (_ITEM, item), stop):
                return
    except BaseException as exc:  # noqa: BLE001  (handed to the consumer, re-raised there)
        _put(q, (_ERROR, exc), stop)
        return
    finally:
        close = getattr(it, "close", None)
        if close is not None:  # a generator producer runs its own finally blocks in this thread
            close()
    _put(q, (_END, None), stop)


def prefetch(iterable, depth: int = 2):
    """Iterate `iterable` in a background daemon thread, `depth` items ahead.

    Yields the producer's items in order. An exception raised by the producer
    is re-raised here, at the position it occurred, with its original type
    (a ClotSegError stays a one-line message). Closing this generator early
    (break, exception, garbage collection) stops the producer at its next
    item; the thread is a daemon, so nothing hangs at interpreter exit.
    The thread starts on the first `next()`.
    """
    q: queue.Queue = queue.Queue(maxsize=max(1, int(depth)))
    stop = threading.Event()
    thread = threading.Thread(target=_produce, args=(iterable, q, stop), name="clotseg-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            kind, payload = q.get()
            if kind == _END:
                return
            if kind == _ERROR:
                raise payload
            yield payload
    finally:
        stop.set()
        while True:  # free queued items now, and a producer blocked in put()
            try:
                q.get_nowait()
            except queue.Empty:
                break


def _forward(model, batch: np.ndarray) -> np.ndarray:
    """One forward pass of a full (B, H, W, C) batch -> float32 (B, H', W', K)."""
    prob = model.predict_on_batch(batch)
    if isinstance(prob, (list, tuple)):
        prob = prob[0]  # a deep-supervision training model: the full-size output comes first
    return np.asarray(prob, dtype=np.float32)


class _Pending:
    """One item of `predict_stream` whose rows are still being predicted."""

    __slots__ = ("key", "n", "out", "done")

    def __init__(self, key, n: int):
        self.key, self.n, self.out, self.done = key, n, None, 0

    def store(self, rows: np.ndarray, offset: int) -> None:
        """Write rows (k, H', W', K) at `offset`; the output is allocated on
        the first rows, because K is only known from the model's answer."""
        if self.out is None:
            self.out = np.empty((self.n, *rows.shape[1:]), np.float32)
        self.out[offset:offset + rows.shape[0]] = rows
        self.done += rows.shape[0]


def _finished(waiting: deque, row_shape):
    """Pop the leading complete items of `waiting` as (key, probs): in input
    order, so a later short item never overtakes an earlier long one."""
    while waiting:
        head = waiting[0]
        if head.n == 0 and row_shape is not None:
            head.out = np.empty((0, *row_shape), np.float32)  # an empty item needs only K
        if head.out is None or head.done < head.n:
            return
        waiting.popleft()
        yield head.key, head.out


def predict_stream(model, items, batch_size: int = 32):
    """Predict a stream of sample stacks through full, fixed-size batches.

    Args:
        model: anything with `predict_on_batch(x)`; it may return a list or
            tuple (deep supervision), whose first element is used.
        items: iterable of (key, samples), samples uint8 (N, H, W, C), every
            item the same (H, W, C); N may be 0 and differ per item.
        batch_size: every model call gets exactly (batch_size, H, W, C).
    Yields:
        (key, probs) in input order, probs float32 (N, H', W', K); an item is
        yielded as soon as its last row is predicted.

    Rows of consecutive items share batches and only the very last batch of
    the stream is zero-padded, so the compiled forward pass sees one shape
    and no batch is half-empty because a volume ended.
    """
    batch_size = int(batch_size)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    waiting: deque[_Pending] = deque()      # items not yet yielded, in input order
    segments: list[tuple[_Pending, int, int]] = []   # the staged batch's rows: (item, offset in item, count)
    batch, fill, row_shape = None, 0, None

    def run(batch, fill):
        """Predict the staged batch, hand each segment its rows; the output's row shape."""
        prob = _forward(model, batch)
        row = 0
        for entry, offset, count in segments:
            entry.store(prob[row:row + count], offset)
            row += count
        segments.clear()
        return prob.shape[1:]

    for key, samples in items:
        samples = np.asarray(samples)
        entry = _Pending(key, samples.shape[0])
        waiting.append(entry)
        if batch is None:  # one staging buffer, reused: no per-batch allocation or concatenation
            batch = np.zeros((batch_size, *samples.shape[1:]), samples.dtype)
        elif samples.shape[1:] != batch.shape[1:]:
            raise ValueError(f"item {key!r}: samples {samples.shape[1:]} differ from the stream's {batch.shape[1:]}")
        start = 0
        while start < entry.n:
            if fill == 0 and entry.n - start >= batch_size and samples[start:start + batch_size].flags.c_contiguous:
                # a whole batch inside one item: predict the view itself, skipping the staging copy
                segments.append((entry, start, batch_size))
                row_shape = run(samples[start:start + batch_size], batch_size)
                start += batch_size
                continue
            count = min(batch_size - fill, entry.n - start)
            batch[fill:fill + count] = samples[start:start + count]
            segments.append((entry, start, count))
            fill += count
            start += count
            if fill == batch_size:
                row_shape = run(batch, fill)
                fill = 0
        yield from _finished(waiting, row_shape)
    if batch is not None and (fill or (waiting and row_shape is None)):
        # the stream's last batch: zero-padded to the fixed shape (also the
        # one pass that tells K when every item so far was empty)
        batch[fill:] = 0
        row_shape = run(batch, fill)
    yield from _finished(waiting, row_shape)


def predict_samples(model, samples: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """Predict (N, H, W, C) uint8 samples -> (N, H, W, K) float32 probabilities.

    Every call sees the same batch shape (the last chunk is zero-padded), so
    XLA/JAX compile the forward pass once instead of once per remainder.
    """
    for _key, probs in predict_stream(model, [(None, samples)], batch_size):
        return probs
    raise AssertionError("predict_stream yields one result per item")  # pragma: no cover


def _full_size(out):
    """A model's full-size output: the first of a deep-supervision model's outputs, else the one."""
    return out[0] if isinstance(out, (list, tuple)) else out


def flip_ensemble(model):
    """The flip-TTA ensemble as one Keras model, computed on the device.

    (B, H, W, C) inputs -> float32 (B, H, W, 3K): along the last axis the
    plain prediction, then the predictions of the horizontally (axis 1) and
    vertically (axis 2) flipped slices, flipped back; the members of
    `member_inputs(tta_flips=True)` + `member_outputs`, without the host
    ever copying a flipped volume or un-flipping a prediction (a third of
    the host-to-device bytes; at GPU speed the host copies were the limit).
    A deep-supervision model contributes its full-size output. The model
    keeps `model`'s jit_compile. Built from layers only (no Lambda), so
    nothing here needs unsafe deserialisation: it is never saved.
    """
    import keras
    from keras import ops

    def main_output(x):
        return _full_size(model(x))

    inputs = keras.Input(shape=tuple(model.input_shape[1:]), name="codes")
    plain = main_output(inputs)
    rows = ops.flip(main_output(ops.flip(inputs, axis=1)), axis=1)
    cols = ops.flip(main_output(ops.flip(inputs, axis=2)), axis=2)
    ensemble = keras.Model(inputs, ops.concatenate([plain, rows, cols], axis=-1), name="flip_ensemble")
    ensemble.jit_compile = getattr(model, "jit_compile", "auto")
    return ensemble


def average_models(models: list):
    """Several runs' models as one Keras model that averages their outputs (an ensemble).

    (B, H, W, C) inputs -> float32 (B, H, W, K): the mean of the members'
    probabilities (a deep-supervision member contributes its full-size
    output). Built from layers only, never saved; keeps the first model's
    jit_compile. `flip_ensemble` wraps it as it wraps one model.
    """
    import keras
    from keras import ops

    inputs = keras.Input(shape=tuple(models[0].input_shape[1:]), name="codes")
    outputs = []
    for i, m in enumerate(models):
        m.name = f"member{i}_{m.name}"   # the runs' models share their builder's name; a model's must differ
        outputs.append(ops.cast(_full_size(m(inputs)), "float32"))
    model = keras.Model(inputs, keras.layers.Average(dtype="float32")(outputs), name="run_ensemble")
    model.jit_compile = getattr(models[0], "jit_compile", "auto")
    return model


def split_members(probs: np.ndarray, n_members: int = 3) -> list[np.ndarray]:
    """(N, H, W, M*K) predictions of `flip_ensemble` -> M views (N, H, W, K)."""
    k = probs.shape[-1] // n_members
    return [probs[..., m * k:(m + 1) * k] for m in range(n_members)]


def member_inputs(volumes: list[np.ndarray], windows: list, input_hw: tuple[int, int], tta_flips: bool = False,
                  context_slices: int = 0, symmetry: bool = False, slice_gaps=None) -> list[np.ndarray]:
    """Model inputs of one case's ensemble members (host work only, no model).

    Returns uint8 (D, H, W, C') C-contiguous arrays: the plain slices, then
    with `tta_flips` the horizontally (axis 1) and vertically (axis 2)
    flipped copies. `member_outputs` undoes the flips on the predictions.
    """
    samples = volume_inputs(volumes, windows, input_hw, context_slices, symmetry, slice_gaps)  # (D, H, W, C')
    inputs = [samples]
    if tta_flips:
        inputs += [np.ascontiguousarray(np.flip(samples, axis=axis)) for axis in (1, 2)]
    return inputs


def member_outputs(probs: list[np.ndarray], in_hw: tuple[int, int]) -> list[np.ndarray]:
    """Predictions of `member_inputs` (float32 (D, H, W, K) each, same order)
    -> the members float32 (h, w, D, K): un-flipped, cropped back to `in_hw`."""
    members = [probs[0]] + [np.flip(p, axis=axis) for p, axis in zip(probs[1:], (1, 2))]
    # (D, H, W, K) -> (h, w, D, K), cropped back to the input's in-plane size
    return [np.ascontiguousarray(center_crop(np.moveaxis(p, 0, 2), in_hw)) for p in members]


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
    inputs = member_inputs(volumes, windows, input_hw, tta_flips, context_slices, symmetry, slice_gaps)
    probs = [p for _, p in predict_stream(model, enumerate(inputs), batch_size)]
    return member_outputs(probs, (h, w))


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
    return members[0] if len(members) == 1 else mean_of(members)


def mean_of(members: list[np.ndarray]) -> np.ndarray:
    """Elementwise float32 mean of equal-shaped arrays, the same bits as
    `np.mean(members, axis=0, dtype=np.float32)` (the members are added in
    order, then divided) without stacking them into one array first."""
    total = np.add(members[0], members[1], dtype=np.float32) if len(members) > 1 else members[0].astype(np.float32)
    for m in members[2:]:
        total += m
    return np.true_divide(total, np.float32(len(members)), out=total)


def to_mask(prob: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """(h, w, D, K) probabilities -> (h, w, D) uint8 labels.

    K = 1: clot where p > threshold. K > 1: argmax over classes.
    """
    if prob.shape[-1] == 1:
        return (prob[..., 0] > threshold).astype(np.uint8)
    return np.argmax(prob, axis=-1).astype(np.uint8)


def postprocess(mask: np.ndarray, min_voxels: int = 0, keep_largest: bool = False,
                slice_gaps=None, prob: np.ndarray | None = None, min_peak: float = 0.0,
                vessel: np.ndarray | None = None, spacing_mm=None, max_vessel_mm: float = 0.0,
                cta: np.ndarray | None = None, max_cta_hu: float = 0.0) -> np.ndarray:
    """Drop 3D components (26-connected) below `min_voxels`, those whose
    highest probability in `prob` stays under `min_peak` (hysteresis: the
    threshold that made `mask` draws the outline, `min_peak` decides which
    components are findings), those farther than `max_vessel_mm` from
    every `vessel` voxel (`clotseg.vessels`: a clot sits in an artery) and
    those whose median `cta` HU is above `max_cta_hu` (lumen, not a filling
    defect); optionally keep only the largest of the rest.
    Works per label for multi-class masks; returns uint8.
    mask: (h, w, D) labels; prob: (h, w, D) foreground probability, or
    (h, w, D, K) per class (label l reads channel l, or channel 0 when
    K = 1), needed when `min_peak` > 0; vessel: (h, w, D) bool
    (`clotseg.vessels.vessel_mask`), needed when `max_vessel_mm` > 0, with
    spacing_mm (row, col, slice; None = 1 mm); cta: (h, w, D) CTA in HU
    (`clotseg.vessels.cta_volume`), needed when `max_cta_hu` > 0.
    `slice_gaps` (sidecar): no component joins slices across a gap.
    """
    if min_voxels <= 0 and not keep_largest and min_peak <= 0 and max_vessel_mm <= 0 and max_cta_hu <= 0:
        return mask
    if min_peak > 0 and prob is None:
        raise ValueError("postprocess: min_peak needs the probabilities (prob)")
    if max_vessel_mm > 0 and vessel is None:
        raise ValueError("postprocess: max_vessel_mm needs the vessel mask (vessel)")
    if max_cta_hu > 0 and cta is None:
        raise ValueError("postprocess: max_cta_hu needs the CTA (cta)")
    # label only the in-plane box around the predicted voxels (usually a few
    # hundred of a volume's millions): components and their order are the same
    rows, cols = np.flatnonzero(mask.any(axis=(1, 2))), np.flatnonzero(mask.any(axis=(0, 2)))
    out = np.zeros_like(mask)
    if rows.size == 0:
        return out
    box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    distances = None
    if max_vessel_mm > 0:
        from clotseg.vessels import component_distances

        # against the whole volume's vessels (one just outside the box still counts): the
        # components are labelled in the box, which starts at (rows[0], cols[0], slice 0)
        distances = partial(component_distances, vessel=vessel, spacing_mm=spacing_mm, max_mm=max_vessel_mm,
                            offset=(int(rows[0]), int(cols[0]), 0))
    medians = None
    if max_cta_hu > 0:
        from clotseg.vessels import component_medians

        medians = partial(component_medians, values=cta, offset=(int(rows[0]), int(cols[0]), 0))
    out[box] = _filter_components(mask[box], min_voxels, keep_largest, slice_gaps,
                                  prob[box] if min_peak > 0 else None, min_peak, distances, medians, max_cta_hu)
    return out


def _filter_components(mask: np.ndarray, min_voxels: int, keep_largest: bool, slice_gaps,
                       prob: np.ndarray | None = None, min_peak: float = 0.0, distances=None, medians=None,
                       max_cta_hu: float = 0.0) -> np.ndarray:
    """`postprocess` on a (h, w, D) mask, over the whole of it. `distances`:
    (labels, n) -> each component's distance to the vessels (inf beyond the
    filter's reach; `clotseg.vessels.component_distances`), or None;
    `medians`: (labels, n) -> each component's median CTA HU
    (`clotseg.vessels.component_medians`), compared with `max_cta_hu`."""
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
        if min_peak > 0:
            p = prob if prob.ndim == mask.ndim else prob[..., label if prob.shape[-1] > 1 else 0]
            keep &= component_peaks(comps, n, p) >= min_peak
        if distances is not None:
            keep &= np.isfinite(distances(comps, n))
        if medians is not None:
            keep &= medians(comps, n) <= max_cta_hu
        if keep_largest and keep.any():
            largest = np.argmax(np.where(keep, sizes, -1))
            keep = np.zeros_like(keep)
            keep[largest] = True
        out[np.isin(comps, np.flatnonzero(keep) + 1)] = label
    return out
