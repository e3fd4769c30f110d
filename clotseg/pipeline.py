"""Runs the data stages in order: find and check cases, split, slice, augment.

Kept free of Keras imports so data preparation starts fast and the
augmentation workers do not inherit a deep-learning runtime.
"""

from __future__ import annotations

from clotseg.cohort import Case, check_cohort, discover_cases
import numpy as np

from clotseg.io import atomic_write_json, fingerprint, load_npy, read_json
from clotseg.settings import Settings
from clotseg.stages.augment import run_augmentation
from clotseg.stages.slicing import TRAIN_COHORTS, run_slicing
from clotseg.stages.split import run_split

CHECK_CACHE = "checked_cases.json"
DEMO_CASES = 20


def ensure_demo_cohort(settings: Settings, log=print) -> bool:
    """Write a synthetic phantom cohort when the input folders are empty.

    Returns True when a cohort was written. Never touches folders that hold
    any .npy file: real data is never mixed with the phantom.
    """
    vol, seg = settings.volume_path, settings.mask_path
    has_data = any(vol.glob("*.npy")) if vol.is_dir() else False
    has_data = has_data or (any(seg.glob("*.npy")) if seg.is_dir() else False)
    if has_data:
        return False
    from clotseg.phantom import write_cohort

    max_hw = min(256, settings.input_shape[0], settings.input_shape[1])
    low = min(96, max_hw)
    log(f"No cases in {vol}: writing a synthetic demo cohort of {DEMO_CASES} phantom CTA/NCCT cases "
        f"({low}-{max_hw} px in-plane) so the pipeline can run. Replace them with your own data "
        "(see README) and delete Processed/ to start over.")
    write_cohort(vol, seg, DEMO_CASES, seed=settings.random_seed, in_plane=(low, max_hw))
    return True


def has_clot(case: Case) -> bool | None:
    """Whether a checked case's mask has any foreground (None: unlabeled)."""
    if case.mask is None:
        return None
    return bool(np.any(load_npy(case.mask, mmap=True)))


def checked_cases(settings: Settings, cases: list[Case], log=print) -> tuple[dict, dict]:
    """Check every case (cached by file name/size/mtime).

    Returns ({case_id: (H, W, D)}, {case_id: has clot}).

    The cache lets a cohort of thousands of cases start in seconds on a
    rerun; any replaced or edited file is checked again.
    """
    path = settings.processed_path / CHECK_CACHE
    settings_key = fingerprint(settings.subset(["modality_patterns", "windows_hu", "input_shape", "num_classes"]))
    cache = {}
    if path.is_file():
        try:
            data = read_json(path)
            if data.get("settings") == settings_key:
                cache = data.get("cases", {})
        except (OSError, ValueError):
            cache = {}
    shapes, clot, todo = {}, {}, []
    for case in cases:
        entry = cache.get(case.case_id)
        if entry and entry.get("signature") == fingerprint(case.signature()) and "has_clot" in entry:
            shapes[case.case_id] = tuple(entry["shape"])
            clot[case.case_id] = entry["has_clot"]
        else:
            todo.append(case)
    if todo:
        shapes.update(check_cohort(todo, settings))
        clot.update({c.case_id: has_clot(c) for c in todo})
        atomic_write_json(path, {"settings": settings_key, "cases": {
            c.case_id: {"signature": fingerprint(c.signature()), "shape": list(shapes[c.case_id]),
                        "has_clot": clot[c.case_id]} for c in cases}})
    return shapes, clot


def prepare_data(settings: Settings, log=print, demo_if_empty: bool = True) -> dict:
    """Stages 1-3. Returns {"cases", "cohorts", "shapes", "sliced", "augmented"}.

    All cases are checked before any stage writes anything, so bad input
    stops the run with every problem listed and nothing on disk changed.
    """
    if demo_if_empty:
        ensure_demo_cohort(settings, log)
    cases = discover_cases(settings, require_masks=True, warn=log)
    shapes, clot = checked_cases(settings, cases, log)
    by_id = {c.case_id: c for c in cases}
    cohorts = run_split(settings, sorted(by_id), log, strata=clot)
    sliced = run_slicing(settings, cohorts, by_id, shapes, log)
    augmented = run_augmentation(settings, sliced, log)
    log(summary_table(cohorts, sliced, augmented))
    return {"cases": cases, "cohorts": cohorts, "shapes": shapes, "sliced": sliced, "augmented": augmented}


def summary_table(cohorts: dict, sliced: dict, augmented: dict) -> str:
    lines = ["", "| cohort | cases | slices (with clot) | augmented samples (with clot) |",
             "| --- | --- | --- | --- |"]
    for name in ("Training", "Validation", "Testing"):
        s = sliced.get(name)
        a = augmented.get(name)
        lines.append(f"| {name} | {len(cohorts[name])} | "
                     + (f"{s['n_samples']} ({s['n_positive']})" if s else "sliced at test time") + " | "
                     + (f"{a['n_samples']} ({a['n_positive']})" if a else "-") + " |")
    return "\n".join(lines) + "\n"


__all__ = ["prepare_data", "ensure_demo_cohort", "checked_cases", "summary_table", "TRAIN_COHORTS"]
