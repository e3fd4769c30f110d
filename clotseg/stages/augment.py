"""Stage 3: albumentations augmentation of the sliced Training/Validation samples.

Produces exactly TARGET_SAMPLE_SIZE_AUG_TRAIN / _VAL samples per cohort.
POSITIVE_FRACTION of them are drawn from slices with clot (clots sit on few
slices, so uniform sampling would starve the model of positives); every
source slice of a group is used once before any is reused. The transform
(HorizontalFlip, VerticalFlip, RandomBrightnessContrast, RandomGamma,
AdvancedBlur, CLAHE; applied as a whole with probability AUG_P) sees all
channels and the mask together, so CTA, NCCT and mask share one geometry,
and the mask stays binary (flips only; intensity transforms skip masks).

Sample i is augmented with its own seed (RANDOM_SEED, cohort, i), so the
output is byte-identical whatever the number of worker processes.
Output: Processed/Augmented/<cohort>/ sample stores (see stages/common.py).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no network check at import

import numpy as np
from numpy.lib.format import open_memmap
from tqdm import tqdm

from clotseg.errors import StageError
from clotseg.io import fingerprint, load_npy, staged_dir, write_manifest
from clotseg.settings import Settings
from clotseg.stages.common import IMAGES, MASKS, SAMPLES, decide, read_samples_csv, write_samples_csv
from clotseg.stages.slicing import TRAIN_COHORTS, sliced_dir

STAGE = "augment"
VERSION = 1
CHUNK = 128  # samples per worker task: large enough to amortise task overhead
# Starting spawned workers costs ~3 s (each imports albumentations/OpenCV);
# one process augments ~1,100 64x64 samples/s on this project's 2-core CI
# machine, so below about this many pixels of work one process is faster.
PARALLEL_MIN_PIXELS = 30_000_000


def augmented_dir(settings: Settings, cohort: str) -> Path:
    return settings.processed_path / "Augmented" / cohort


def build_transform(n_channels: int, p: float):
    """The ClotSeg albumentations pipeline for `n_channels` uint8 (H, W) planes.

    Channel 0 is passed as `image`, the others as `image1`, `image2`, ...
    additional targets of type image, so all get the same parameters.
    """
    import albumentations as A

    return A.Compose(
        [
            A.HorizontalFlip(p=0.5),
            A.VerticalFlip(p=0.5),
            A.RandomBrightnessContrast(brightness_limit=0.1, contrast_limit=0.1, p=0.5),
            A.RandomGamma(gamma_limit=(80, 120), p=0.5),
            A.AdvancedBlur(blur_limit=(3, 5), p=0.2),
            A.CLAHE(clip_limit=2.0, tile_grid_size=(8, 8), p=0.2),
        ],
        p=p,
        additional_targets={f"image{c}": "image" for c in range(1, n_channels)},
    )


def augment_one(transform, image: np.ndarray, mask: np.ndarray, seed) -> tuple[np.ndarray, np.ndarray]:
    """Augment one sample: image (H, W, C) uint8, mask (H, W) uint8 -> same shapes.

    `seed` (an int or a sequence of ints) fully determines the result.
    """
    # Compose.set_random_seed hands the *same* seed to every transform, which
    # would make e.g. HorizontalFlip and VerticalFlip fire together; give
    # each transform its own stream instead.
    states = np.random.SeedSequence(seed).generate_state(1 + len(transform.transforms))
    transform.set_random_seed(int(states[0]))
    for t, state in zip(transform.transforms, states[1:]):
        t.set_random_seed(int(state))
    planes = {"image": np.ascontiguousarray(image[..., 0])}
    planes.update({f"image{c}": np.ascontiguousarray(image[..., c]) for c in range(1, image.shape[-1])})
    out = transform(mask=mask, **planes)
    stacked = np.stack([out["image"]] + [out[f"image{c}"] for c in range(1, image.shape[-1])], axis=-1)
    return stacked, out["mask"]


def choose_sources(clot_pixels: np.ndarray, n: int, positive_fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Pick `n` source slice indices, a `positive_fraction` share with clot.

    Within each group (with / without clot) a fresh permutation is used
    before any slice repeats. Falls back to the other group when one is
    empty. Returns int64 indices in shuffled order.
    """
    pos = np.flatnonzero(clot_pixels > 0)
    neg = np.flatnonzero(clot_pixels == 0)
    n_pos = int(round(n * positive_fraction))
    if pos.size == 0:
        n_pos = 0
    if neg.size == 0:
        n_pos = n
    picks = [_cycle(pos, n_pos, rng), _cycle(neg, n - n_pos, rng)]
    out = np.concatenate(picks)
    return out[rng.permutation(out.size)]


def _cycle(group: np.ndarray, n: int, rng) -> np.ndarray:
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    reps = -(-n // group.size)
    return np.concatenate([group[rng.permutation(group.size)] for _ in range(reps)])[:n].astype(np.int64)


def augment_key(settings: Settings, cohort: str, sliced_manifest: dict) -> str:
    return fingerprint({
        "version": VERSION,
        "sliced": sliced_manifest["fingerprint"],
        "cohort": cohort,
        "settings": settings.subset(["target_sample_size_aug_train", "target_sample_size_aug_val",
                                     "aug_p", "positive_fraction", "random_seed"]),
    })


def run_augmentation(settings: Settings, sliced: dict, log=print) -> dict:
    """Augment Training and Validation; return {cohort: manifest}."""
    out = {}
    for cohort in TRAIN_COHORTS:
        key = augment_key(settings, cohort, sliced[cohort])
        target = augmented_dir(settings, cohort)
        manifest = decide(settings.data_aug, "DATA_AUG", target, key, f"augment {cohort}", log)
        if manifest is None:
            n = settings.target_sample_size_aug_train if cohort == "Training" else settings.target_sample_size_aug_val
            manifest = augment_cohort(settings, cohort, n, target, key)
            log(f"[augment {cohort}] {manifest['n_samples']} samples ({manifest['n_positive']} with clot, "
                f"{manifest['n_augmented']} transformed) with {manifest['workers']} worker(s) -> {target}")
        out[cohort] = manifest
    return out


def augment_cohort(settings: Settings, cohort: str, n: int, target: Path, key: str) -> dict:
    """Write `n` augmented samples of `cohort` atomically; return the manifest."""
    source = sliced_dir(settings, cohort)
    rows = read_samples_csv(source / SAMPLES)
    clot = np.array([int(r["clot_pixels"]) for r in rows], dtype=np.int64)
    cohort_id = TRAIN_COHORTS.index(cohort)
    rng = np.random.default_rng([settings.random_seed, cohort_id, 0])
    picks = choose_sources(clot, n, settings.positive_fraction, rng)
    src_images = load_npy(source / IMAGES, mmap=True)
    workers = settings.num_workers or _auto_workers(n, src_images.shape[1] * src_images.shape[2])
    workers = max(1, min(workers, -(-n // CHUNK)))
    with staged_dir(target) as tmp:
        open_memmap(tmp / IMAGES, mode="w+", dtype=np.uint8, shape=(n, *src_images.shape[1:])).flush()
        open_memmap(tmp / MASKS, mode="w+", dtype=np.uint8, shape=(n, *src_images.shape[1:3])).flush()
        jobs = [(str(source), str(tmp), picks[s:s + CHUNK], s, settings.random_seed, cohort_id, settings.aug_p)
                for s in range(0, n, CHUNK)]
        changed = 0
        bar = tqdm(total=n, desc=f"Augmenting {cohort}", unit="sample")
        if workers == 1:
            for job in jobs:
                changed += _augment_chunk(*job)
                bar.update(len(job[2]))
        else:
            try:
                with ProcessPoolExecutor(workers, mp_context=_pool_context(),
                                         initializer=_single_threaded_worker) as pool:
                    futures = {pool.submit(_augment_chunk, *job): len(job[2]) for job in jobs}
                    for fut in as_completed(futures):
                        changed += fut.result()
                        bar.update(futures[fut])
            except BrokenProcessPool as exc:
                raise StageError(
                    "an augmentation worker process died (out of memory, killed, or a script that calls "
                    "ClotSeg without an `if __name__ == \"__main__\":` guard); set NUM_WORKERS = 1 "
                    "to augment in one process") from exc
        bar.close()
        masks = load_npy(tmp / MASKS, mmap=True)
        out_clot = masks.reshape(n, -1).astype(bool).any(axis=1)
        write_samples_csv(tmp / SAMPLES, ["sample", "source_sample", "case_id", "slice", "clot_pixels"],
                          ([i, int(p), rows[p]["case_id"], rows[p]["slice"], int(masks[i].astype(bool).sum())]
                           for i, p in enumerate(picks)))
        del masks
        manifest = write_manifest(tmp, STAGE, key, cohort=cohort, version=VERSION, n_samples=n,
                                  n_positive=int(out_clot.sum()), n_augmented=int(changed),
                                  n_source_slices=len(rows), workers=workers,
                                  positive_fraction=settings.positive_fraction, aug_p=settings.aug_p)
    return manifest


def _pool_context():
    """fork when no threaded runtime is loaded (fast start, no re-import of
    the caller's script); spawn otherwise: forking a process whose OpenCV,
    TensorFlow, JAX or torch thread pools are running can deadlock."""
    loaded = any(m in sys.modules for m in ("cv2", "tensorflow", "jax", "torch"))
    if sys.platform.startswith("linux") and not loaded:
        return mp.get_context("fork")
    return mp.get_context("spawn")


def _single_threaded_worker():
    """One OpenCV thread per worker: the pool already uses every core."""
    import cv2

    cv2.setNumThreads(1)


def _auto_workers(n: int, pixels_per_sample: int) -> int:
    """NUM_WORKERS = 0: all cores, unless the job is too small to repay the
    worker start-up (see PARALLEL_MIN_PIXELS)."""
    if n * pixels_per_sample < PARALLEL_MIN_PIXELS:
        return 1
    return os.cpu_count() or 1


def _augment_chunk(source: str, out: str, picks: np.ndarray, start: int, seed: int, cohort_id: int, p: float) -> int:
    """Worker: augment samples start..start+len(picks) into the output memmaps.

    Returns how many samples the transform changed.
    """
    src_images = load_npy(Path(source) / IMAGES, mmap=True)
    src_masks = load_npy(Path(source) / MASKS, mmap=True)
    images = np.load(Path(out) / IMAGES, mmap_mode="r+", allow_pickle=False)
    masks = np.load(Path(out) / MASKS, mmap_mode="r+", allow_pickle=False)
    transform = build_transform(src_images.shape[-1], p)
    changed = 0
    for k, src in enumerate(picks):
        img, msk = np.asarray(src_images[src]), np.asarray(src_masks[src])
        aug_img, aug_msk = augment_one(transform, img, msk, [seed, cohort_id, 1, start + k])
        images[start + k] = aug_img
        masks[start + k] = aug_msk
        changed += int(not (np.array_equal(aug_img, img) and np.array_equal(aug_msk, msk)))
    images.flush()
    masks.flush()
    return changed
