"""What every data stage shares: deciding to reuse or (re)build its output,
and the on-disk layout of a sample store.

A sample store is a folder with
    images.npy    (N, H, W, C) uint8 intensity codes (see clotseg.intensity)
    masks.npy     (N, H, W)    uint8 labels (0/1, or 0..K-1)
    samples.csv   one row per sample: provenance (case id, slice index, run of
                  adjacent slices, ...)
    manifest.json written last; its presence marks the store complete
Whole-cohort arrays (not one file per slice) let the generator memory-map
them and read a batch with one fancy-indexing call.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from clotseg.errors import StageError
from clotseg.io import atomic_write_text, clean_stale_temps, load_npy, manifest_problems, read_manifest
from clotseg.layout import IMAGES, MASKS, SAMPLES  # noqa: F401  (the store's file names; imported from here too)


def decide(flag: bool, flag_name: str, stage_dir: Path, key: str, label: str, log=print,
           required=(IMAGES, MASKS, SAMPLES)) -> dict | None:
    """Return the manifest to reuse, or None when the stage must be built.

    A stage output counts only when every file its manifest lists is there
    with its recorded size (`required` must exist for manifests without a
    file list). flag True: reuse only such an output built from the same
    inputs and settings (same fingerprint `key`), else rebuild. flag False:
    reuse whatever complete output exists (warning when stale); none or an
    incomplete one -> StageError naming the flag to set.
    """
    # A run killed mid-swap may have left only the previous output under a
    # temporary name: put it back (and drop half-built temp folders) first.
    clean_stale_temps(stage_dir)
    manifest = read_manifest(stage_dir, verify=False)
    problems = manifest_problems(stage_dir, manifest, required) if manifest is not None else []
    if flag:
        if problems:
            log(f"[{label}] {stage_dir} is incomplete ({'; '.join(problems[:3])}): rebuilding it")
            return None
        if manifest is not None and manifest.get("fingerprint") == key:
            log(f"[{label}] up to date: {stage_dir} ({manifest.get('n_samples', '?')} samples)")
            return manifest
        return None
    if manifest is None:
        raise StageError(f"{flag_name} is False but {stage_dir} holds no complete output; "
                         f"set {flag_name} = True in config.py to build it")
    if problems:
        raise StageError(f"{flag_name} is False but {stage_dir} is incomplete ({'; '.join(problems[:3])}); "
                         f"set {flag_name} = True in config.py to rebuild it")
    if manifest.get("fingerprint") != key:
        log(f"[{label}] warning: reusing {stage_dir}, built from other inputs or settings "
            f"(set {flag_name} = True to rebuild)")
    else:
        log(f"[{label}] reusing {stage_dir}")
    return manifest


def store_bytes(n: int, hw, channels: int) -> int:
    """Disk space of a sample store of n samples: N*H*W*C image bytes +
    N*H*W mask bytes, plus headers, samples.csv and manifest (generous)."""
    h, w = hw
    return n * h * w * channels + n * h * w + n * 64 + 64 * 1024


def write_samples_csv(path: Path, header: list[str], rows) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def read_samples_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def store_runs(rows: list[dict]) -> list[int]:
    """Per samples.csv row, the index of its run of adjacent slices within
    its case (the sliced store's "run" column; 0 for a store without it)."""
    return [int(r.get("run") or 0) for r in rows]


def open_store(store_dir: Path, mmap: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(images, masks) of a complete sample store, memory-mapped by default."""
    store_dir = Path(store_dir)
    manifest = read_manifest(store_dir, verify=False)
    if manifest is None:
        raise StageError(f"{store_dir} is not a complete sample store (no manifest); rerun the stage that builds it")
    problems = manifest_problems(store_dir, manifest, (IMAGES, MASKS, SAMPLES))
    if problems:
        raise StageError(f"{store_dir} is not a complete sample store ({'; '.join(problems[:3])}); "
                         "rerun the stage that builds it")
    images = load_npy(store_dir / IMAGES, mmap=mmap, what=f"sample store {store_dir.name}")
    masks = load_npy(store_dir / MASKS, mmap=mmap, what=f"sample store {store_dir.name}")
    return images, masks
