"""Batches of 2D slices for the ClotSeg U-Net, read from memory-mapped .npy files.

A cohort folder holds `images.npy` (N, H, W, C) uint8 intensity codes and
`masks.npy` (N, H, W) uint8. The files are memory-mapped, so only the rows of
the current batch are ever read into RAM.
"""

from __future__ import annotations

import math
import os

import keras
import numpy as np

IMAGE_DTYPES = ("float32", "uint8")


def _open(source, what: str):
    """(array, path or None): a read-only memmap of a .npy path, or the array itself."""
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{what} file {path} does not exist")
        try:
            # Never unpickle: a .npy holding Python objects is refused.
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise ValueError(f"{what} file {path} is not a readable numeric .npy array: {exc}") from exc
        return array, path
    if isinstance(source, np.ndarray):
        return source, None
    raise ValueError(f"{what} must be a path to a .npy file or a numpy array, got {type(source).__name__}")


class DataGeneratorUNet2D(keras.utils.PyDataset):
    """Keras PyDataset of (images, masks) batches for `model.fit` / `predict`.

    Args:
        images: path to an .npy file of shape (N, H, W, C) uint8 intensity
            codes 0..255 (opened memory-mapped) or such an array.
        masks: path to an .npy file of shape (N, H, W) uint8 (0 background,
            1 clot; class ids 0..K-1 when num_classes = K > 1) or such an array.
        batch_size: samples per batch; the last batch keeps the remainder.
        shuffle: reshuffle the sample order every epoch.
        seed: epoch counter e uses the permutation of
            `np.random.default_rng(seed + e)`, so the sequence of epochs is
            reproducible. Note that Keras also calls `on_epoch_end` once when
            fit()/evaluate() start, so fit epoch k (0-based) of a fresh
            generator is served with e = k + 1; to resume at `initial_epoch`,
            call `set_epoch(initial_epoch)` before fit() to get the same orders.
            An endless stream (below) serves fit epoch k with e = start + k.
        indices: optional 1-D integer sample indices to draw from (default:
            all N); repeated indices are served repeatedly (oversampling).
        num_classes: 1 -> y is the binary mask; K > 1 -> y is one-hot.
        image_dtype: "float32" (default) or "uint8"; values stay the 0..255
            codes (the model rescales). "uint8" ships 4x fewer bytes to a GPU.
        patch_size: None (whole slices) or (rows, cols): serve a random
            patch of each slice instead (nnU-Net style patch training). A
            slice holding foreground is cropped around one of its
            foreground pixels, chosen at random and placed at a random
            position inside the patch (so the clot is never always
            centred); a slice without foreground is cropped at a random
            position. Crops are drawn from `default_rng([seed, epoch,
            batch])`, so epochs are reproducible and differ from each other.
        num_outputs: outputs of the model fed (deep supervision: DEPTH);
            y is repeated for each.
        modality_dropout: probability (0..1) that a sample has one of its
            modalities blanked: every channel of that modality (its 2.5D
            context slices, its mirrored planes) set to code 0, the modality
            drawn uniformly (ModDrop, Neverova et al. 2016). A network that
            must also find the clot from CTA alone and from NCCT alone
            learns both signs, not only the easiest one (a hyperdense clot on
            NCCT). Drawn from `default_rng([seed, epoch, batch, 1])`; the mask
            is unchanged. Needs `modality_channels`.
        modality_channels: one list of channel indices per modality (see
            `clotseg.intensity.modality_channels`); at least two modalities.
        endless: serve one endless stream instead of one epoch at a time
            (for training): Keras sees no length (`num_batches` None) and
            fit() needs `steps_per_epoch=len(generator)`; stream batch i is
            batch i % len of epoch e = (the `set_epoch` value) + i // len,
            exactly the batch the epoch-by-epoch generator serves for e.
            Why: under TensorFlow, Keras wraps a PyDataset in
            `tf.data.Dataset.from_generator(...).prefetch(AUTOTUNE)` and, for a
            dataset with a length, builds a new iterator every epoch; tearing
            the old one down waits for its prefetch thread, which stalled the
            first step of some epochs by 5-25 s on a 2-core CPU (a
            5-minute demo lost about 20 s). With no length Keras keeps one
            iterator for the whole fit(). `on_epoch_end` then does nothing.
        **kwargs: workers, use_multiprocessing, max_queue_size (PyDataset).

    Batches: x (B, H, W, C) of `image_dtype`; y float32 (B, H, W, 1) in {0, 1}
    for num_classes = 1 (any mask value > 0 counts as clot), or one-hot
    (B, H, W, K) for K > 1. With num_outputs = n > 1 (a deep-supervision
    model's outputs) y is a tuple of n references to that same array.

    Raises:
        FileNotFoundError: a path does not exist.
        ValueError: unreadable or pickled files, wrong ndim, non-uint8 data,
            N/H/W mismatch between images and masks, bad indices or arguments;
            the message names the files.
    """

    def __init__(
        self,
        images,
        masks,
        batch_size=16,
        shuffle=True,
        seed=0,
        indices=None,
        num_classes=1,
        image_dtype="float32",
        patch_size=None,
        num_outputs=1,
        modality_dropout=0.0,
        modality_channels=None,
        endless=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.images, self.images_path = _open(images, "images")
        self.masks, self.masks_path = _open(masks, "masks")
        self._validate_arrays()
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if int(num_outputs) < 1:
            raise ValueError(f"num_outputs must be >= 1, got {num_outputs}")
        try:
            dtype_name = np.dtype(image_dtype).name
        except TypeError:
            dtype_name = None
        if dtype_name not in IMAGE_DTYPES:
            raise ValueError(f"image_dtype must be one of {IMAGE_DTYPES}, got {image_dtype!r}")
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.num_classes = int(num_classes)
        self.num_outputs = int(num_outputs)
        self.image_dtype = np.dtype(dtype_name)
        self.indices = self._validate_indices(indices)
        self.patch_size = self._validate_patch(patch_size)
        self.modality_dropout, self.modality_channels = self._validate_dropout(modality_dropout, modality_channels)
        self.endless = bool(endless)
        self.epoch = 0
        self._kept_order = None  # (epoch, its sample order): the last one asked for

    # ------------------------------------------------------------ validation
    def _describe(self) -> str:
        img = self.images_path or "images array"
        msk = self.masks_path or "masks array"
        return f"images {img} {tuple(self.images.shape)} {self.images.dtype}, masks {msk} {tuple(self.masks.shape)} {self.masks.dtype}"

    def _validate_arrays(self):
        problems = []
        if self.images.ndim != 4:
            problems.append("images must have 4 dimensions (N, H, W, C)")
        if self.masks.ndim != 3:
            problems.append("masks must have 3 dimensions (N, H, W)")
        if self.images.dtype != np.uint8:
            problems.append("images must be uint8 intensity codes")
        if self.masks.dtype != np.uint8:
            problems.append("masks must be uint8")
        if self.images.shape[:1] != self.masks.shape[:1]:
            problems.append("images and masks hold different numbers of samples N")
        elif self.images.ndim == 4 and self.masks.ndim == 3 and self.images.shape[1:3] != self.masks.shape[1:3]:
            problems.append("images and masks differ in H, W")
        if not problems and self.images.shape[0] == 0:
            problems.append("there are no samples (N = 0)")
        if problems:
            raise ValueError("; ".join(problems) + f" ({self._describe()})")

    def _validate_indices(self, indices) -> np.ndarray:
        n = self.images.shape[0]
        if indices is None:
            return np.arange(n, dtype=np.int64)
        indices = np.asarray(indices)
        if indices.ndim != 1 or indices.size == 0 or not np.issubdtype(indices.dtype, np.integer):
            raise ValueError(f"indices must be a non-empty 1-D integer array ({self._describe()})")
        if indices.min() < 0 or indices.max() >= n:
            raise ValueError(f"indices must lie in [0, {n - 1}] ({self._describe()})")
        return indices.astype(np.int64)

    def _validate_patch(self, patch_size):
        if patch_size is None:
            return None
        try:
            rows, cols = (int(v) for v in patch_size)
        except (TypeError, ValueError):
            raise ValueError(f"patch_size must be None or (rows, cols), got {patch_size!r}") from None
        height, width = self.images.shape[1:3]
        if not (0 < rows <= height and 0 < cols <= width):
            raise ValueError(f"patch_size {(rows, cols)} must fit inside the slices ({self._describe()})")
        return None if (rows, cols) == (height, width) else (rows, cols)

    def _validate_dropout(self, probability, groups):
        try:
            probability = float(probability)
        except (TypeError, ValueError):
            raise ValueError(f"modality_dropout must be a number in [0, 1], got {probability!r}") from None
        if not 0.0 <= probability <= 1.0:
            raise ValueError(f"modality_dropout must be in [0, 1], got {probability}")
        if probability == 0.0:
            return 0.0, None
        channels = self.images.shape[-1]
        try:
            groups = [np.asarray(group, dtype=np.int64).ravel() for group in groups]
        except TypeError:
            raise ValueError("modality_dropout needs modality_channels, one channel list per modality") from None
        if len(groups) < 2:
            raise ValueError("modality_dropout needs at least two modalities (one would blank the whole input)")
        if any(g.size == 0 or g.min() < 0 or g.max() >= channels for g in groups):
            raise ValueError(f"modality_channels must hold channel indices below {channels} ({self._describe()})")
        return probability, groups

    # ------------------------------------------------------------ ordering
    def _order_of(self, epoch: int) -> np.ndarray:
        """The sample order of `epoch`; the last one is kept, since batches
        (and an endless stream's epochs) are asked for in order."""
        kept = self._kept_order
        if kept is None or kept[0] != epoch:
            order = self.indices
            if self.shuffle:
                order = order[np.random.default_rng(self.seed + epoch).permutation(len(order))]
            self._kept_order = kept = (epoch, order)
        return kept[1]

    @property
    def order(self) -> np.ndarray:
        """The sample order of the current epoch (an endless stream's first)."""
        return self._order_of(self.epoch)

    def set_epoch(self, epoch: int):
        """Jump to the sample order of `epoch` (0-based), e.g. when resuming training."""
        self.epoch = int(epoch)

    def on_epoch_end(self):
        if self.endless:
            return  # the stream's batch index says the epoch
        # Reshuffle here, not in on_epoch_begin: Keras stops its worker queue
        # before on_epoch_end but starts it before on_epoch_begin, so only
        # here can the order change without racing the workers.
        self.set_epoch(self.epoch + 1)

    # ------------------------------------------------------------ batches
    def __len__(self) -> int:
        return math.ceil(len(self.indices) / self.batch_size)

    @property
    def num_batches(self):
        """Batches Keras should expect: None (endless) or one epoch's."""
        return None if self.endless else len(self)

    def __getitem__(self, idx):
        """Batch `idx`: (x, y) as described in the class docstring."""
        if self.endless:
            if idx < 0:
                raise IndexError(f"batch {idx} out of range [0, infinity)")
            offset, idx = divmod(int(idx), len(self))
            epoch = self.epoch + offset
        else:
            if not 0 <= idx < len(self):
                raise IndexError(f"batch {idx} out of range [0, {len(self)})")
            epoch = self.epoch
        return self._batch(epoch, int(idx))

    def _batch(self, epoch: int, idx: int):
        """Batch `idx` of `epoch`."""
        wanted = self._order_of(epoch)[idx * self.batch_size : (idx + 1) * self.batch_size]
        # Memmap rows are read fastest in ascending file order; the stable sort
        # lets `inverse` put them back into the shuffled order afterwards.
        ascending = np.argsort(wanted, kind="stable")
        rows = wanted[ascending]
        inverse = np.empty_like(ascending)
        inverse[ascending] = np.arange(len(ascending))
        x = np.asarray(self.images[rows])[inverse]
        masks = np.asarray(self.masks[rows])[inverse]
        if self.patch_size is not None:
            x, masks = self._crop(x, masks, np.random.default_rng([self.seed, epoch, idx]))
        if self.modality_dropout > 0.0:
            x = self._drop_modalities(x, np.random.default_rng([self.seed, epoch, idx, 1]))
        y = self._targets(masks)
        # deep supervision: every output gets the same full-size target (its loss pools it)
        return x.astype(self.image_dtype, copy=False), (y if self.num_outputs == 1 else (y,) * self.num_outputs)

    def _crop(self, x: np.ndarray, masks: np.ndarray, rng: np.random.Generator):
        """(B, H, W, C), (B, H, W) -> (B, rows, cols, C), (B, rows, cols) patches."""
        rows, cols = self.patch_size
        height, width = masks.shape[1:]
        out_x = np.empty((len(x), rows, cols, x.shape[-1]), x.dtype)
        out_m = np.empty((len(x), rows, cols), masks.dtype)
        for i in range(len(x)):
            fg = np.flatnonzero(masks[i])
            if fg.size:
                r, c = divmod(int(fg[rng.integers(fg.size)]), width)
                # the chosen pixel lands anywhere inside the patch, the patch inside the slice
                top = int(np.clip(r - rng.integers(rows), 0, height - rows))
                left = int(np.clip(c - rng.integers(cols), 0, width - cols))
            else:
                top, left = int(rng.integers(height - rows + 1)), int(rng.integers(width - cols + 1))
            out_x[i] = x[i, top:top + rows, left:left + cols]
            out_m[i] = masks[i, top:top + rows, left:left + cols]
        return out_x, out_m

    def _drop_modalities(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """(B, H, W, C) -> the same with one modality's channels set to 0 in a
        `modality_dropout` share of the samples (a copy; memmap rows stay)."""
        dropped = rng.random(len(x)) < self.modality_dropout
        which = rng.integers(len(self.modality_channels), size=len(x))
        if not dropped.any():
            return x
        x = np.array(x, copy=True)
        for i in np.flatnonzero(dropped):
            x[i][..., self.modality_channels[which[i]]] = 0
        return x

    def _targets(self, masks: np.ndarray) -> np.ndarray:
        """(B, H, W) uint8 masks -> float32 (B, H, W, 1) binary or (B, H, W, K) one-hot."""
        if self.num_classes == 1:
            return (masks > 0).astype(np.float32)[..., None]
        if masks.max() >= self.num_classes:
            raise ValueError(
                f"mask value {int(masks.max())} is not a class id below num_classes={self.num_classes} "
                f"({self._describe()})"
            )
        return np.eye(self.num_classes, dtype=np.float32)[masks]

    # ------------------------------------------------------------ pickling
    def __getstate__(self):
        # Pickling a memmap copies the whole file; worker processes reopen the
        # path instead, so the cohort is never duplicated in RAM.
        state = self.__dict__.copy()
        if self.images_path is not None:
            state["images"] = None
        if self.masks_path is not None:
            state["masks"] = None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        if self.images is None:
            self.images = np.load(self.images_path, mmap_mode="r", allow_pickle=False)
        if self.masks is None:
            self.masks = np.load(self.masks_path, mmap_mode="r", allow_pickle=False)
