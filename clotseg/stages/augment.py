"""Stage 3: albumentations augmentation of the sliced Training/Validation samples.

Produces exactly TARGET_SAMPLE_SIZE_AUG_TRAIN / _VAL samples per cohort.
POSITIVE_FRACTION of them are drawn from slices with clot (clots sit on few
slices, so uniform sampling would starve the model of positives), and
HARD_NEGATIVE_FRACTION of the clot-free ones from hard negatives (see
`hard_negatives`); every source slice of a group is used once before any is
reused. The transform (AUGMENTATION "standard": HorizontalFlip, VerticalFlip,
RandomBrightnessContrast, RandomGamma, AdvancedBlur, CLAHE; "strong" adds
Affine rotation/scaling/shift, GaussNoise and a per-modality intensity
shift; "domain" draws these from wider ranges and adds sharpening and a
low-resolution simulation; applied as a whole with probability AUG_P) sees all channels and the
mask together (CLOT_APPEARANCE_AUG first moves a clot's own intensity inside
its mask, by default on the NCCT alone; see `clot_appearance`;
SYNTHETIC_CLOT_AUG first draws a clot into an artery of that share of the
Training clot samples, taken from clot-free slices instead, see
`clotseg.synthetic_clots`), so every
modality, every 2.5D context slice and the mask
share one geometry, and the mask stays binary (nearest-neighbour warps;
intensity transforms skip masks).

With CONTEXT_SLICES = k each sample is (H, W, C * (2k+1)): the neighbour
slices are gathered from the sliced store (same case, edge slices repeated;
see clotseg.intensity) before augmentation.

Sample i is augmented with its own seed (RANDOM_SEED, cohort, i), so the
output is byte-identical whatever the number of worker processes. The
stage's fingerprint holds the transform's serialised form (albumentations
`to_dict`), so changing a transform rebuilds stale samples.
Output: Processed/Augmented/<cohort>/ sample stores (see stages/common.py).
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no network check at import

import numpy as np
from tqdm import tqdm

from clotseg.errors import StageError
from clotseg.intensity import add_mirror, stack_context, store_context_rows
from clotseg.io import create_npy, fingerprint, load_npy, staged_dir, write_manifest
from clotseg.settings import AUGMENTATIONS, Settings
from clotseg import synthetic_clots
from clotseg.layout import TRAIN_COHORTS, TRAINING, augmented_dir, sliced_dir  # noqa: F401  (augmented_dir kept here)
from clotseg.stages.common import (IMAGES, MASKS, SAMPLES, decide, read_samples_csv, store_bytes, store_runs,
                                   write_samples_csv)

STAGE = "augment"
CHUNK = 128  # samples per worker task: large enough to amortise task overhead
# Starting spawned workers costs ~3 s (each imports albumentations/OpenCV);
# one process augments ~1,100 64x64 samples/s on this project's 2-core CI
# machine, so below about this many pixels of work one process is faster.
PARALLEL_MIN_PIXELS = 30_000_000


# "strong": per-modality intensity shift of the codes, code -> a * code + b,
# a in 1 +- GAIN, b in +- OFFSET codes: scanners and protocols calibrate HU
# and contrast timing differently per modality, which a shared brightness
# change cannot imitate. "domain" widens it (a hot or a poor bolus moves the
# CTA's vessels by 100+ HU; an NCCT calibration by 5-10 HU).
MODALITY_SHIFT = {"strong": {"p": 0.5, "gain": 0.12, "offset": 15.0},
                  "domain": {"p": 0.6, "gain": 0.25, "offset": 25.0}}


def clot_appearance_codes(modalities, windows_hu: dict, offsets_hu: dict) -> list:
    """Per modality, its CLOT_APPEARANCE_HU range (low, high) of HU offsets
    converted to uint8 codes of its window: None where the modality is not
    named in `offsets_hu` or has no HU window (it is left alone)."""
    out = []
    for m in modalities:
        hu, window = offsets_hu.get(m), windows_hu.get(m)
        if hu is None or window is None:
            out.append(None)
            continue
        per_hu = 255.0 / (float(window[1]) - float(window[0]))
        out.append((float(hu[0]) * per_hu, float(hu[1]) * per_hu))
    return out


def clot_appearance(image: np.ndarray, masks: np.ndarray, codes: list, seed) -> np.ndarray:
    """Move the clot's intensity, separately per modality, inside the mask.

    image: (H, W, C) uint8, modality-major with C = len(codes) * planes
    (2.5D context planes); masks: (planes, H, W) uint8, the mask of each
    context plane (centre in the middle), or (H, W) for a one-plane sample.
    Each modality with a range in `codes` (uint8 codes, see
    `clot_appearance_codes`) gets, with probability 1/2, one offset drawn
    from that range and applied to every plane through that plane's own
    mask: the clot runs through the neighbouring slices, and a hyperdense
    clot left in the context planes would still give its density away.
    Each plane's mask is blurred by a Gaussian of 0.7 pixels and scaled to
    peak 1, so the clot's edge stays as soft as the scanner made it rather
    than a step that traces the label. Returns a new array; a sample
    without clot in any plane comes back unchanged.
    """
    from scipy.ndimage import gaussian_filter

    masks = np.asarray(masks)
    if masks.ndim == 2:
        masks = masks[None]
    planes = image.shape[-1] // len(codes)
    if masks.shape != (planes, *image.shape[:2]):
        raise ValueError(f"clot_appearance: masks of shape {masks.shape} for {planes} plane(s) of "
                         f"{image.shape[:2]} pixels; give one mask per context plane")
    if not masks.any():
        return image.copy()
    rng = np.random.default_rng(seed)
    weights = []
    for plane in masks:
        w = gaussian_filter(plane.astype(np.float32), 0.7)
        weights.append(w / max(float(w.max()), 1e-6))
    out = image.astype(np.float32)
    for m, rng_codes in enumerate(codes):
        # both draws every time, so one modality's draws never depend on another's range
        draw = rng.random()
        offset = rng.uniform(*rng_codes) if rng_codes is not None else 0.0
        if rng_codes is None or draw >= 0.5:
            continue
        for p, weight in enumerate(weights):
            out[..., m * planes + p] += offset * weight
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def build_transform(n_channels: int, p: float, strength: str = "standard"):
    """The ClotSeg albumentations pipeline for `n_channels` uint8 (H, W) planes.

    Channel 0 is passed as `image`, the others as `image1`, `image2`, ...
    additional targets of type image, so all get the same parameters.
    strength "strong" adds a small rotation/scaling/shift (Affine, mask
    nearest-neighbour) and Gaussian noise. "domain" (domain randomisation,
    the nnU-Net set widened for other scanners and protocols) draws the
    same kinds from wider ranges: scaling 0.7-1.4 (vessel calibre), any
    in-plane rotation up to 30 degrees, stronger blur and noise, gamma
    0.7-1.5, and adds a sharpening kernel (edge overshoot of sharp
    reconstruction kernels) and a low-resolution simulation (thick slices,
    a coarser matrix: nnU-Net's SimulateLowResolution).
    """
    import albumentations as A
    import cv2

    if strength not in AUGMENTATIONS:
        raise ValueError(f"augmentation strength must be one of {AUGMENTATIONS}, got {strength!r}")
    wide = strength == "domain"
    extra = strength != "standard"      # "strong" and "domain": geometry and noise too
    transforms = [
        A.HorizontalFlip(p=0.5),
        A.VerticalFlip(p=0.5),
    ]
    if extra:
        transforms.append(A.Affine(rotate=(-30, 30) if wide else (-20, 20),
                                   scale=(0.7, 1.4) if wide else (0.85, 1.2),
                                   translate_percent=(-0.06, 0.06),
                                   interpolation=cv2.INTER_LINEAR, mask_interpolation=cv2.INTER_NEAREST,
                                   border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=0, p=0.5))
    transforms += [
        A.RandomBrightnessContrast(brightness_limit=0.15 if wide else 0.1,
                                   contrast_limit=0.25 if wide else 0.1, p=0.5),
        A.RandomGamma(gamma_limit=(70, 150) if wide else (80, 120), p=0.5),
        A.AdvancedBlur(blur_limit=(3, 7) if wide else (3, 5), p=0.3 if wide else 0.2),
        A.CLAHE(clip_limit=2.0, tile_grid_size=(8, 8), p=0.2),
    ]
    if wide:
        transforms += [
            A.Sharpen(alpha=(0.1, 0.4), lightness=(1.0, 1.0), p=0.15),
            A.Downscale(scale_range=(0.5, 0.9),
                        interpolation_pair={"downscale": cv2.INTER_AREA, "upscale": cv2.INTER_LINEAR}, p=0.2),
        ]
    if extra:
        transforms.append(A.GaussNoise(std_range=(0.01, 0.08) if wide else (0.01, 0.05), p=0.4 if wide else 0.3))
    return A.Compose(transforms, p=p,
                     additional_targets={f"image{c}": "image" for c in range(1, n_channels)})


def transform_description(n_channels: int, p: float, strength: str) -> dict:
    """What the augmentation does, for the stage fingerprint: the pipeline's
    albumentations `to_dict` plus ClotSeg's own per-modality shift."""
    import albumentations as A

    desc = {"albumentations": A.to_dict(build_transform(n_channels, p, strength))}
    if strength in MODALITY_SHIFT:
        desc["modality_shift"] = MODALITY_SHIFT[strength]
    return desc


def modality_shift(image: np.ndarray, n_modalities: int, seed, strength: str = "strong",
                   mirrored: bool = False) -> np.ndarray:
    """Shift each modality's codes by its own random gain and offset.

    image: (H, W, C) uint8 with C = n_modalities * context planes,
    modality-major; every plane of one modality gets the same shift. With
    `mirrored` (SYMMETRY_CHANNELS) the second half of the channels is the
    first half mirrored, and each mirrored modality gets its source's shift
    (a hemisphere and its counterpart come from one scan).
    """
    params = MODALITY_SHIFT[strength]
    rng = np.random.default_rng(seed)
    copies = 2 if mirrored else 1
    planes = image.shape[-1] // (n_modalities * copies)
    out = image.astype(np.float32)
    for m in range(n_modalities):
        if rng.random() >= params["p"]:
            continue
        gain = 1.0 + rng.uniform(-params["gain"], params["gain"])
        offset = rng.uniform(-params["offset"], params["offset"])
        for copy in range(copies):
            start = copy * n_modalities * planes + m * planes
            out[..., start:start + planes] = out[..., start:start + planes] * gain + offset
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def augment_one(transform, image: np.ndarray, mask: np.ndarray, seed,
                n_modalities: int | None = None, strength: str = "strong",
                clot_look: tuple | None = None, mirror_k: int | None = None,
                plane_masks: np.ndarray | None = None,
                synthetic: tuple | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Augment one sample: image (H, W, C) uint8, mask (H, W) uint8 -> same shapes.

    `seed` (an int or a sequence of ints) fully determines the result.
    `n_modalities` given: also apply the per-modality shift of `strength`
    ("strong" or "domain") when the sample is augmented (probability
    transform.p). `clot_look` = (probability, per-modality code ranges):
    first, with that probability and whether or not the rest fires, move
    the clot's own intensity (`clot_appearance`), before the geometry so
    that it moves with the mask; `plane_masks` (planes, H, W) uint8 are
    then the masks of the 2.5D context planes (centre in the middle; None
    = `mask` of a one-plane sample). `synthetic` = (windows, CTA index, NCCT
    index or None) given (SYNTHETIC_CLOT_AUG): before all that, a clot is
    drawn into an artery of this clot-free sample and `mask` and
    `plane_masks` become its masks (`clotseg.synthetic_clots.insert_clot`).
    `mirror_k` given (SYMMETRY_CHANNELS, the
    CONTEXT_SLICES k): the planes mirrored about the midline are appended
    after that and before the geometry (`clotseg.intensity.add_mirror`), so
    the output has twice the input's channels.
    """
    if synthetic is not None:
        # its own stream (the second child), so the draws below stay as they were without it
        image, plane_masks = synthetic_clots.insert_clot(image, *synthetic, np.random.SeedSequence(seed).spawn(2)[1])
        mask = plane_masks[plane_masks.shape[0] // 2]
    look_masks = mask if plane_masks is None else plane_masks
    if clot_look is not None and clot_look[0] > 0 and look_masks.any():
        # its own stream (a spawned child), so the draws below stay as they were without it
        look_rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(1)[0])
        if look_rng.random() < clot_look[0]:
            image = clot_appearance(image, look_masks, clot_look[1], look_rng.integers(2**63))
    if mirror_k is not None:
        image = add_mirror(image[None], mirror_k)[0]
    # Compose.set_random_seed hands the *same* seed to every transform, which
    # would make e.g. HorizontalFlip and VerticalFlip fire together; give
    # each transform its own stream instead. Whether the sample is augmented
    # at all (probability transform.p = AUG_P) is drawn here, so that the
    # per-modality shift goes with the albumentations pipeline.
    states = np.random.SeedSequence(seed).generate_state(3 + len(transform.transforms))
    if np.random.default_rng(int(states[1])).random() >= transform.p:
        return image.copy(), mask.copy()
    transform.set_random_seed(int(states[0]))
    for t, state in zip(transform.transforms, states[3:]):
        t.set_random_seed(int(state))
    planes = {"image": np.ascontiguousarray(image[..., 0])}
    planes.update({f"image{c}": np.ascontiguousarray(image[..., c]) for c in range(1, image.shape[-1])})
    out = transform(mask=mask, force_apply=True, **planes)
    stacked = np.stack([out["image"]] + [out[f"image{c}"] for c in range(1, image.shape[-1])], axis=-1)
    if n_modalities:
        stacked = modality_shift(stacked, n_modalities, int(states[2]), strength, mirrored=mirror_k is not None)
    return stacked, out["mask"]


def choose_sources(clot_pixels: np.ndarray, n: int, positive_fraction: float, rng: np.random.Generator,
                   hard: np.ndarray | None = None, hard_fraction: float = 0.0,
                   cases: np.ndarray | None = None) -> np.ndarray:
    """Pick `n` source slice indices, a `positive_fraction` share with clot.

    Of the clot-free picks, a `hard_fraction` share comes from the slices
    flagged in `hard` (bool per slice; see `hard_negatives`), the rest from
    all clot-free slices. Within each group a fresh permutation is used
    before any slice repeats. Falls back to the other group when one is
    empty. With `cases` (a case id per slice; POSITIVE_SAMPLING = "case")
    the clot picks are split evenly between the cases, each cycling through
    its own clot slices, instead of spread evenly over all clot slices
    (which gives a long clot as many more samples as it has slices).
    Returns int64 indices in shuffled order.
    """
    pos = np.flatnonzero(clot_pixels > 0)
    neg = np.flatnonzero(clot_pixels == 0)
    n_pos = int(round(n * positive_fraction))
    if pos.size == 0:
        n_pos = 0
    if neg.size == 0:
        n_pos = n
    n_neg = n - n_pos
    hard_neg = np.flatnonzero((clot_pixels == 0) & hard) if hard is not None else np.zeros(0, np.int64)
    n_hard = int(round(n_neg * hard_fraction)) if hard_neg.size else 0
    if cases is None:
        pos_picks = _cycle(pos, n_pos, rng)
    else:
        pos_picks = _cycle_per_case(pos, np.asarray(cases)[pos], n_pos, rng)
    picks = [pos_picks, _cycle(hard_neg, n_hard, rng), _cycle(neg, n_neg - n_hard, rng)]
    out = np.concatenate(picks)
    return out[rng.permutation(out.size)]


def hard_negatives(images: np.ndarray, rows: list[dict], radius: int = 3, bright_code: int = 200,
                   top_share: float = 0.25) -> np.ndarray:
    """Flag clot-free slices that look most like clot slices (bool per slice).

    Two kinds, both without clot: (1) slices within `radius` slices of a
    clot in the same case and run of adjacent slices (a slice import's gap
    separates runs): the same occluded artery segment, its vessels
    and the clot's partial-volume edge; (2) the `top_share` of clot-free
    slices with the most bright pixels (code >= `bright_code` in any
    channel: contrast-filled arteries, veins, calcifications), where false
    alarms start. images: the (N, H, W, C) uint8 sliced store.
    """
    clot = np.array([int(r["clot_pixels"]) for r in rows], dtype=np.int64)
    case = np.array([f'{r["case_id"]}/{run}' for r, run in zip(rows, store_runs(rows))])
    sl = np.array([int(r["slice"]) for r in rows], dtype=np.int64)
    neg = clot == 0
    near = np.zeros(len(rows), dtype=bool)
    for cid in np.unique(case[~neg]):
        in_case = case == cid
        z_clot = sl[in_case & ~neg]
        near |= in_case & (np.abs(sl[:, None] - z_clot[None, :]).min(axis=1) <= radius)
    bright = np.zeros(len(rows), dtype=np.int64)
    for start in range(0, len(rows), 256):  # a memmap read in chunks: bounded memory
        chunk = np.asarray(images[start:start + 256])
        bright[start:start + len(chunk)] = (chunk >= bright_code).any(axis=-1).reshape(len(chunk), -1).sum(axis=1)
    top = np.zeros(len(rows), dtype=bool)
    if neg.any():
        cut = np.quantile(bright[neg], 1.0 - top_share)
        top = neg & (bright >= max(cut, 1))
    return neg & (near | top)


def _cycle(group: np.ndarray, n: int, rng) -> np.ndarray:
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    reps = -(-n // group.size)
    return np.concatenate([group[rng.permutation(group.size)] for _ in range(reps)])[:n].astype(np.int64)


def _cycle_per_case(slices: np.ndarray, cases: np.ndarray, n: int, rng) -> np.ndarray:
    """`n` picks of `slices`, split as evenly as possible between their `cases`
    (the cases that get one more are drawn at random), each cycled on its own."""
    if n == 0 or slices.size == 0:
        return np.zeros(0, dtype=np.int64)
    names = np.unique(cases)
    quota = np.full(names.size, n // names.size)
    quota[rng.permutation(names.size)[:n % names.size]] += 1
    return np.concatenate([_cycle(slices[cases == name], q, rng) for name, q in zip(names, quota)])


def _synthetic_on(settings: Settings, cohort: str) -> bool:
    """Whether `cohort`'s samples get synthetic clots: Training only (validation keeps real clots)."""
    return settings.synthetic_clot_aug > 0 and cohort == TRAINING


def _synthetic_picks(settings: Settings, picks: np.ndarray, clot: np.ndarray, src_images,
                     rng: np.random.Generator) -> tuple[np.ndarray, tuple | None]:
    """SYNTHETIC_CLOT_AUG: turn that share of the clot picks into clot-free
    slices with lumen (`clotseg.synthetic_clots.lumen_slices`), which get a
    clot drawn in. Changes `picks` in place; returns the (n,) bool flags of
    those samples and the insertion's (windows, CTA index, NCCT index or
    None), or no flags and None where the cohort has no such slice."""
    mods = list(settings.modalities)
    windows = [settings.windows_hu.get(m) for m in mods]
    cta, ncct = mods.index("CTA"), (mods.index("NCCT") if "NCCT" in mods and windows[mods.index("NCCT")] else None)
    sources = np.flatnonzero(synthetic_clots.lumen_slices(src_images, clot, windows, cta, ncct))
    flags = np.zeros(len(picks), dtype=bool)
    clot_slots = np.flatnonzero(clot[picks] > 0)           # already in shuffled order
    n_synth = int(round(len(clot_slots) * settings.synthetic_clot_aug))
    if sources.size == 0 or n_synth == 0:
        return flags, None
    slots = clot_slots[:n_synth]
    picks[slots] = _cycle(sources, n_synth, rng)
    flags[slots] = True
    return flags, (windows, cta, ncct)


def augment_key(settings: Settings, cohort: str, sliced_manifest: dict) -> str:
    n_channels = settings.model_channels
    return fingerprint({
        "sliced": sliced_manifest["fingerprint"],
        "cohort": cohort,
        "transform": transform_description(n_channels, settings.aug_p, settings.augmentation),
        "settings": settings.subset(["target_sample_size_aug_train", "target_sample_size_aug_val",
                                     "aug_p", "augmentation", "positive_fraction", "hard_negative_fraction",
                                     "context_slices", "random_seed", "clot_appearance_aug", "symmetry_channels"]),
        # "planes": since the change reaches every 2.5D context plane, not the centre one only
        **({"clot_appearance_hu": settings.clot_appearance_hu, "windows_hu": settings.windows_hu,
            "clot_appearance_planes": "each context plane through its own mask"}
           if settings.clot_appearance_aug > 0 else {}),
        # only when set: the stores of every run before the setting existed stay valid
        **({"positive_sampling": settings.positive_sampling} if settings.positive_sampling != "slice" else {}),
        **({"synthetic_clot_aug": settings.synthetic_clot_aug, "windows_hu": settings.windows_hu,
            "synthetic_clots": synthetic_clots.constants()}
           if _synthetic_on(settings, cohort) else {}),
    })


def run_augmentation(settings: Settings, sliced: dict, log=print) -> dict:
    """Augment Training and Validation; return {cohort: manifest}."""
    out = {}
    for cohort in TRAIN_COHORTS:
        key = augment_key(settings, cohort, sliced[cohort])
        target = augmented_dir(settings, cohort)
        manifest = decide(settings.data_aug, "DATA_AUG", target, key, f"augment {cohort}", log)
        if manifest is None:
            n = settings.target_sample_size_aug_train if cohort == TRAINING else settings.target_sample_size_aug_val
            manifest = augment_cohort(settings, cohort, n, target, key)
            synthetic = (f", {manifest['n_synthetic']} of them synthetic (SYNTHETIC_CLOT_AUG"
                         f"{'' if manifest['n_synthetic'] else ': no clot-free slice shows opacified lumen'})"
                         if _synthetic_on(settings, cohort) else "")
            log(f"[augment {cohort}] {manifest['n_samples']} samples of {manifest['channels']} channels "
                f"({manifest['n_positive']} with {settings.target_name}{synthetic}, {manifest['n_augmented']} "
                f"transformed) with {manifest['workers']} worker(s) -> {target}")
        out[cohort] = manifest
    return out


def augment_cohort(settings: Settings, cohort: str, n: int, target: Path, key: str) -> dict:
    """Write `n` augmented samples of `cohort` atomically; return the manifest."""
    source = sliced_dir(settings, cohort)
    rows = read_samples_csv(source / SAMPLES)
    clot = np.array([int(r["clot_pixels"]) for r in rows], dtype=np.int64)
    cohort_id = TRAIN_COHORTS.index(cohort)
    rng = np.random.default_rng([settings.random_seed, cohort_id, 0])
    src_images = load_npy(source / IMAGES, mmap=True)
    hard = hard_negatives(src_images, rows) if settings.hard_negative_fraction > 0 else None
    case_ids = [r["case_id"] for r in rows]
    cases = np.array(case_ids) if settings.positive_sampling == "case" else None
    picks = choose_sources(clot, n, settings.positive_fraction, rng, hard, settings.hard_negative_fraction, cases)
    synthetic, synth_spec = np.zeros(n, dtype=bool), None
    if _synthetic_on(settings, cohort):
        synthetic, synth_spec = _synthetic_picks(settings, picks, clot, src_images, rng)
    context = store_context_rows(case_ids, [int(r["slice"]) for r in rows],
                                 settings.context_slices, store_runs(rows))
    n_channels = settings.model_channels      # modalities x context planes (x 2 with SYMMETRY_CHANNELS)
    workers = settings.num_workers or _auto_workers(n, src_images.shape[1] * src_images.shape[2] * context.shape[1])
    workers = max(1, min(workers, -(-n // CHUNK)))
    hw = tuple(src_images.shape[1:3])
    # the store's size is known: free space checked, blocks reserved before the workers write
    # through memory maps (a full disk is then a message, not SIGBUS in a worker)
    with staged_dir(target, store_bytes(n, hw, n_channels)) as tmp:
        what = f"the augmented {cohort} sample store"
        for name, shape in ((IMAGES, (n, *hw, n_channels)), (MASKS, (n, *hw))):
            store = create_npy(tmp / name, np.uint8, shape, what)
            store.flush()
            del store
        shift = src_images.shape[-1] if settings.augmentation in MODALITY_SHIFT else None
        look = None
        if settings.clot_appearance_aug > 0:
            look = (float(settings.clot_appearance_aug),
                    clot_appearance_codes(settings.modalities, settings.windows_hu, settings.clot_appearance_hu))
        jobs = [(str(source), str(tmp), context[picks[s:s + CHUNK]], s, settings.random_seed, cohort_id,
                 settings.aug_p, settings.augmentation, shift, look,
                 settings.context_slices if settings.symmetry_channels else None,
                 synth_spec, synthetic[s:s + CHUNK] if synth_spec is not None else None)
                for s in range(0, n, CHUNK)]
        changed = 0
        bar = tqdm(total=n, desc=f"Augmenting {cohort}", unit="sample")
        try:
            if workers == 1:
                for job in jobs:
                    changed += _augment_chunk(*job)
                    bar.update(len(job[2]))
            else:
                changed += _run_pool(workers, jobs, bar)
        except BrokenProcessPool as exc:
            raise StageError(
                "an augmentation worker process died (out of memory, killed, or a script that calls "
                "ClotSeg without an `if __name__ == \"__main__\":` guard); set NUM_WORKERS = 1 "
                "to augment in one process") from exc
        finally:
            bar.close()
        masks = load_npy(tmp / MASKS, mmap=True)
        out_clot = masks.reshape(n, -1).astype(bool).any(axis=1)
        write_samples_csv(tmp / SAMPLES, ["sample", "source_sample", "case_id", "slice", "clot_pixels"],
                          ([i, int(p), rows[p]["case_id"], rows[p]["slice"], int(masks[i].astype(bool).sum())]
                           for i, p in enumerate(picks)))
        del masks
        manifest = write_manifest(tmp, STAGE, key, cohort=cohort, n_samples=n,
                                  n_positive=int(out_clot.sum()), n_augmented=int(changed),
                                  n_synthetic=int(synthetic.sum()),
                                  n_source_slices=len(rows), workers=workers,
                                  n_hard_negative_sources=int(hard.sum()) if hard is not None else 0,
                                  positive_fraction=settings.positive_fraction,
                                  positive_sampling=settings.positive_sampling, aug_p=settings.aug_p,
                                  channels=n_channels, context_slices=settings.context_slices,
                                  symmetry_channels=settings.symmetry_channels)
    return manifest


def _run_pool(workers: int, jobs: list, bar) -> int:
    """Run `jobs` through `_augment_chunk` in `workers` processes; return
    the number of changed samples.

    On any exception, Ctrl-C (KeyboardInterrupt) included, queued chunks are
    cancelled and the worker processes terminated and reaped before the
    exception propagates, so the caller removes its temporary store within
    about a second and no worker outlives the run or keeps writing into it.
    (Leaving the pool's `with` block instead would wait for every queued
    chunk to finish.) The workers ignore SIGINT: a Ctrl-C in the terminal
    reaches the whole process group, and only the main process handles it.
    The pool starts its workers while submitting, and a spawned worker
    re-imports the caller's script before its initializer runs, so SIGINT
    stays blocked in this thread while submitting: the workers start with it
    blocked (no KeyboardInterrupt traceback from a worker still importing).
    The main process still gets a Ctrl-C of those milliseconds: on unblocking,
    or at once where another thread of it (TensorFlow's) takes the signal.
    """
    pool = ProcessPoolExecutor(workers, mp_context=_pool_context(), initializer=_init_worker)
    futures = {}
    try:
        with _sigint_blocked():
            futures = {pool.submit(_augment_chunk, *job): len(job[2]) for job in jobs}
        changed = 0
        for fut in as_completed(futures):
            changed += fut.result()
            bar.update(futures[fut])
    except BaseException:
        _stop_pool(pool, futures)
        raise
    pool.shutdown(wait=True)
    return changed


def _stop_pool(pool: ProcessPoolExecutor, futures, grace_s: float = 1.0) -> None:
    """Cancel what is queued, terminate the workers and reap them (SIGKILL
    after `grace_s` seconds for any that ignores SIGTERM)."""
    for fut in futures:
        fut.cancel()
    processes = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in processes:
        try:
            proc.terminate()
        except (OSError, ValueError, AttributeError):
            pass
    deadline = time.monotonic() + grace_s
    for proc in processes:
        try:
            proc.join(max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                proc.kill()
                proc.join(1.0)
        except (OSError, ValueError, AssertionError, AttributeError):
            pass


def _pool_context():
    """fork when no threaded runtime is loaded (fast start, no re-import of
    the caller's script); spawn otherwise: forking a process whose OpenCV,
    TensorFlow, JAX or torch thread pools are running can deadlock."""
    loaded = any(m in sys.modules for m in ("cv2", "tensorflow", "jax", "torch"))
    if sys.platform.startswith("linux") and not loaded:
        return mp.get_context("fork")
    return mp.get_context("spawn")


@contextlib.contextmanager
def _sigint_blocked():
    """Block SIGINT in this thread (processes started meanwhile inherit the
    mask, through exec too); a SIGINT sent to this thread meanwhile is
    delivered on leaving. One sent to the process may be taken at once by
    another thread that does not block it (TensorFlow's), and Python then
    raises KeyboardInterrupt here at once: the mask is for the children.
    A no-op where signal masks do not exist (Windows)."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _init_worker():
    """Worker start-up: Ctrl-C is the main process's to handle (it stops the
    pool, see `_run_pool`); one OpenCV thread per worker, as the pool
    already uses every core. The worker starts with SIGINT blocked
    (`_sigint_blocked`): ignoring it first discards one already pending."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    _single_threaded_worker()


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


def _augment_chunk(source: str, out: str, picks: np.ndarray, start: int, seed: int, cohort_id: int, p: float,
                   strength: str = "standard", n_modalities: int | None = None,
                   clot_look: tuple | None = None, mirror_k: int | None = None,
                   synthetic: tuple | None = None, synth_flags: np.ndarray | None = None) -> int:
    """Worker: augment samples start..start+len(picks) into the output memmaps.

    picks: (n, 2k+1) store rows of each sample's context slices (centre in
    the middle column); synth_flags: (n,) bool, the samples that get a
    synthetic clot (`synthetic`: see `augment_one`). Returns how many
    samples the transform changed.
    """
    src_images = load_npy(Path(source) / IMAGES, mmap=True)
    src_masks = load_npy(Path(source) / MASKS, mmap=True)
    images = np.load(Path(out) / IMAGES, mmap_mode="r+", allow_pickle=False)
    masks = np.load(Path(out) / MASKS, mmap_mode="r+", allow_pickle=False)
    transform = build_transform(images.shape[-1], p, strength)
    centre = picks.shape[1] // 2
    changed = 0
    for k, rows in enumerate(picks):
        img = stack_context(np.asarray(src_images[rows])[None])[0]
        # every context plane's own mask for the clot-appearance change (read only when it is on)
        plane_msks = np.asarray(src_masks[rows]) if clot_look is not None else None
        msk = plane_msks[centre] if plane_msks is not None else np.asarray(src_masks[rows[centre]])
        synth = synthetic if synth_flags is not None and synth_flags[k] else None
        aug_img, aug_msk = augment_one(transform, img, msk, [seed, cohort_id, 1, start + k], n_modalities,
                                       strength, clot_look, mirror_k, plane_msks, synth)
        images[start + k] = aug_img
        masks[start + k] = aug_msk
        # the mirrored half (SYMMETRY_CHANNELS) follows from the first: comparing that suffices
        changed += int(not (np.array_equal(aug_img[..., :img.shape[-1]], img) and np.array_equal(aug_msk, msk)))
    images.flush()
    masks.flush()
    return changed
