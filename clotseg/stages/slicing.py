"""Stage 2: 3D volumes -> 2D multi-channel samples for Training and Validation.

Each slice (last axis of the (H, W, D) volumes) becomes one sample: every
modality windowed to uint8 codes as a channel (CTA, NCCT by default),
center-padded to INPUT_SHAPE[:2], with its mask slice. The Testing cohort is
not sliced here: testing.py slices it on the fly.
Output: Processed/Sliced/<cohort>/ sample stores (see stages/common.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm import tqdm

from clotseg.cohort import Case, load_case
from clotseg.helpers import slice_runs
from clotseg.intensity import mask_to_samples, volume_to_samples
from clotseg.io import create_npy, fingerprint, staged_dir, write_manifest
from clotseg.settings import Settings
from clotseg.layout import TRAIN_COHORTS, sliced_dir  # noqa: F401  (names kept importable from here)
from clotseg.stages.common import IMAGES, MASKS, SAMPLES, decide, store_bytes, write_samples_csv

STAGE = "slice"
VERSION = 1


def slice_key(settings: Settings, cases: list[Case]) -> str:
    """Fingerprint of everything the sliced output depends on (the sidecars'
    slice gaps only where a case has some, so gap-free cohorts keep their key)."""
    gaps = {c.case_id: c.slice_gaps() for c in cases}
    return fingerprint({
        "version": VERSION,
        "cases": [c.signature() for c in cases],
        "settings": settings.subset(["modality_patterns", "windows_hu", "input_shape", "num_classes"]),
        **({"slice_gaps": {k: v for k, v in gaps.items() if v}} if any(gaps.values()) else {}),
    })


def run_slicing(settings: Settings, cohorts: dict, cases_by_id: dict, shapes: dict, log=print) -> dict:
    """Slice the Training and Validation cohorts; return {cohort: manifest}."""
    out = {}
    for cohort in TRAIN_COHORTS:
        cases = [cases_by_id[cid] for cid in cohorts[cohort]]
        key = slice_key(settings, cases)
        target = sliced_dir(settings, cohort)
        manifest = decide(settings.slice_extract, "SLICE_EXTRACT", target, key, f"slice {cohort}", log)
        if manifest is None:
            manifest = slice_cohort(settings, cases, shapes, target, key, cohort)
            log(f"[slice {cohort}] {manifest['n_samples']} slices from {manifest['n_cases']} cases "
                f"({manifest['n_positive']} with {settings.target_name}) -> {target}")
        out[cohort] = manifest
    return out


def slice_cohort(settings: Settings, cases: list[Case], shapes: dict, target: Path, key: str,
                 cohort: str = "") -> dict:
    """Write one cohort's sample store atomically; return its manifest.

    Memory: one case at a time; the output arrays are written through
    memory maps, so cohorts larger than RAM slice fine. Disk: the store's
    size is known in advance; it is checked against the free space and
    reserved before any sample is written, so a full disk stops the stage
    with DiskFullError (not SIGBUS) and the previous store stays in place.
    """
    hw = settings.input_shape[:2]
    windows = [settings.windows_hu[m] for m in settings.modalities]
    n_total = sum(shapes[c.case_id][2] for c in cases)
    rows = []
    with staged_dir(target, store_bytes(n_total, hw, len(windows))) as tmp:
        what = f"the {cohort or target.name} sample store"
        images = create_npy(tmp / IMAGES, np.uint8, (n_total, *hw, len(windows)), what)
        masks = create_npy(tmp / MASKS, np.uint8, (n_total, *hw), what)
        pos = 0
        for case in tqdm(cases, desc=f"Slicing {cohort}", unit="case"):
            vols, mask = load_case(case)
            d = vols[0].shape[2]
            images[pos:pos + d] = volume_to_samples(vols, windows, hw)
            masks[pos:pos + d] = mask_to_samples(mask, hw)
            clot = masks[pos:pos + d].reshape(d, -1).astype(bool).sum(axis=1)
            # runs of adjacent slices: 2.5D context never reaches across a gap
            run = np.zeros(d, dtype=np.int64)
            for r, (start, stop) in enumerate(slice_runs(d, case.slice_gaps())):
                run[start:stop] = r
            rows.extend([pos + k, case.case_id, k, int(clot[k]), int(run[k])] for k in range(d))
            pos += d
        images.flush()
        masks.flush()
        del images, masks
        write_samples_csv(tmp / SAMPLES, ["sample", "case_id", "slice", "clot_pixels", "run"], rows)
        n_pos = sum(1 for r in rows if r[3] > 0)
        manifest = write_manifest(tmp, STAGE, key, cohort=cohort, version=VERSION, n_cases=len(cases),
                                  n_samples=n_total, n_positive=n_pos, cases=[c.case_id for c in cases],
                                  image_shape=[n_total, *hw, len(windows)], channels=settings.modalities,
                                  windows_hu=settings.subset(["windows_hu"])["WINDOWS_HU"])
    return manifest
