"""Runs the data stages in order: find and check cases, split, slice, augment.

Kept free of Keras imports so data preparation starts fast and the
augmentation workers do not inherit a deep-learning runtime.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from clotseg.cohort import Case, cohort_problems, discover_cases, listing, sidecar_problems
from clotseg.errors import InputDataError
from clotseg.io import atomic_write_json, check_output_folder, fingerprint, load_npy, read_json
from clotseg.layout import CHECK_CACHE, COHORTS, TRAIN_COHORTS, TRAINING, VALIDATION, check_cache_path  # noqa: F401
from clotseg.locking import project_lock
from clotseg.settings import Settings
from clotseg.stages.augment import run_augmentation
from clotseg.stages.preprocess import run_preprocess
from clotseg.stages.slicing import run_slicing
from clotseg.stages.split import case_groups, run_split

# 40 cases: 8 Validation volumes with clot so the post-processing gets tuned
# (it needs 5), and 8 test cases; the phantom writes them in seconds and
# the sample counts of the later stages do not depend on it.
DEMO_CASES = 40


# Placeholders that keep an empty folder in git; they are not data.
PLACEHOLDERS = {".gitkeep", ".keep"}


def _holds_files(folder: Path) -> bool:
    """Whether `folder` exists as anything but an empty folder tree (any file,
    hidden or not, any case of suffix, at any depth; a non-folder counts).
    The placeholders git needs for an empty folder (`.gitkeep`, `.keep`) do
    not count, so a fresh clone gets the demo cohort."""
    if not os.path.lexists(folder):
        return False
    if not folder.is_dir():
        return True
    for _root, _dirs, files in os.walk(folder):
        if any(f not in PLACEHOLDERS for f in files):
            return True
    return False


def _link_no_clobber(src: Path, dst: Path) -> None:
    """Put `src` at `dst` without ever replacing an existing `dst`."""
    try:
        os.link(src, dst)                     # fails with FileExistsError if dst exists
    except FileExistsError:
        raise
    except OSError:                           # no hard links here: exclusive create + copy
        with open(src, "rb") as fin, open(dst, "xb") as fout:
            shutil.copyfileobj(fin, fout)


def ensure_demo_cohort(settings: Settings, log=print) -> bool:
    """Write a synthetic phantom cohort when the input folders hold no files.

    Returns True when a cohort was written. Folders holding any file at all
    (whatever its name or case: `*.NPY`, a sidecar, a note) are never
    touched, and no existing file is ever replaced: the cohort is written
    into a temporary folder and each file is linked into place only if
    nothing of that name exists (else the run stops with a message).
    """
    vol, seg = settings.volume_path, settings.mask_path
    if _holds_files(vol) or _holds_files(seg):
        return False
    from clotseg.phantom import write_cohort

    max_hw = min(256, settings.input_shape[0], settings.input_shape[1])
    low = min(96, max_hw)
    raw = " as raw, unregistered scans (PREPROCESS = True)" if settings.preprocess else ""
    log(f"No cases in {vol}: writing a synthetic demo cohort of {DEMO_CASES} phantom CTA/NCCT cases "
        f"({low}-{max_hw} px in-plane){raw} so the pipeline can run. Replace them with your own data "
        "(see README) and delete Processed/ to start over.")
    vol.mkdir(parents=True, exist_ok=True)
    seg.mkdir(parents=True, exist_ok=True)
    stage_vol = Path(tempfile.mkdtemp(dir=vol.parent, prefix=f".{vol.name}.demo-{os.getpid()}-"))
    stage_seg = stage_vol if seg == vol else Path(tempfile.mkdtemp(dir=seg.parent, prefix=f".{seg.name}.demo-{os.getpid()}-"))
    try:
        write_cohort(stage_vol, stage_seg, DEMO_CASES, seed=settings.random_seed, in_plane=(low, max_hw),
                     unregistered=settings.preprocess)
        moves = [(p, vol / p.name) for p in sorted(stage_vol.iterdir())]
        if stage_seg != stage_vol:
            moves += [(p, seg / p.name) for p in sorted(stage_seg.iterdir())]
        clash = [str(dst) for _src, dst in moves if os.path.lexists(dst)]
        if clash:
            raise InputDataError(f"not writing the demo cohort: {clash[0]} appeared meanwhile; "
                                 "nothing was replaced")
        # masks first: a volume folder with files is what marks the cohort as present
        for src, dst in sorted(moves, key=lambda m: m[1].parent != seg):
            try:
                _link_no_clobber(src, dst)
            except FileExistsError as exc:
                raise InputDataError(f"not writing the demo cohort: {dst} appeared meanwhile; "
                                     "it was left as it is") from exc
    finally:
        shutil.rmtree(stage_vol, ignore_errors=True)
        if stage_seg != stage_vol:
            shutil.rmtree(stage_seg, ignore_errors=True)
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
    path = check_cache_path(settings)
    settings_key = fingerprint(settings.subset(["modality_patterns", "windows_hu", "input_shape", "num_classes"]))
    cache = {}
    if path.is_file():
        try:
            data = read_json(path)
            if data.get("settings") == settings_key:
                cache = data.get("cases", {})
        except (OSError, ValueError):
            cache = {}
    shapes, clot, todo, cached = {}, {}, [], []
    for case in cases:
        entry = cache.get(case.case_id)
        if entry and entry.get("signature") == fingerprint(case.signature()) and "has_clot" in entry:
            shapes[case.case_id] = tuple(entry["shape"])
            clot[case.case_id] = entry["has_clot"]
            cached.append(case)
        else:
            todo.append(case)
    # sidecars are not part of a case's cached signature: check them every time (cheap)
    problems = sidecar_problems(cached)
    if todo:
        new_shapes, more = cohort_problems(todo, settings)
        problems += more
        if problems:
            raise InputDataError(listing("input problem(s); nothing was written", problems))
        shapes.update(new_shapes)
        clot.update({c.case_id: has_clot(c) for c in todo})
        atomic_write_json(path, {"settings": settings_key, "cases": {
            c.case_id: {"signature": fingerprint(c.signature()), "shape": list(shapes[c.case_id]),
                        "has_clot": clot[c.case_id]} for c in cases}})
    elif problems:
        raise InputDataError(listing("input problem(s); nothing was written", problems))
    return shapes, clot


def check_any_clot(clot: dict, settings: Settings) -> None:
    """Refuse a cohort whose masks are all empty: training would learn to
    predict nothing and report a meaningless validation Dice of 1.0."""
    labelled = [c for c, v in clot.items() if v is not None]
    if labelled and not any(clot[c] for c in labelled):
        raise InputDataError(
            f"every mask of the cohort is empty: none of the {len(labelled)} case(s) in {settings.mask_path} "
            f"marks a {settings.target_name} voxel, so there is nothing to learn (and a validation Dice of 1.0 would mean nothing); "
            "check MASK_DIR / MASK_PATTERN and that the masks are not blank")


def check_labels(cohorts: dict, clot: dict, settings: Settings, log=print) -> None:
    """Refuse a split whose Training cohort has no clot at all; warn when
    Validation has none (its Dice then only measures false alarms)."""
    training = cohorts.get(TRAINING, [])
    if training and not any(clot.get(c) for c in training):
        raise InputDataError(
            f"no Training case has a {settings.target_name} (all {len(training)} Training masks are empty), so "
            f"there is nothing to learn; add {settings.target_name} cases or set STRATIFY_SPLIT = True so "
            f"{settings.target_name} cases reach every cohort")
    validation = cohorts.get(VALIDATION, [])
    if validation and not any(clot.get(c) for c in validation):
        log(f"warning: no Validation case has a {settings.target_name} ({len(validation)} case(s)); the validation Dice only "
            "measures false alarms and reads 1.0 for an empty prediction")


def prepare_data(settings: Settings, log=print, demo_if_empty: bool = True, lock_wait_s: float | None = None) -> dict:
    """Stages 0-3. Returns {"cases", "cohorts", "shapes", "sliced", "augmented", "settings"}.

    With PREPROCESS, stage 0 turns the raw cohort of VOLUME_DIR / MASK_DIR
    into the prepared cohort under PROCESSED_DIR first; "settings" are then
    the settings that read it (VOLUME_DIR / MASK_DIR replaced), which
    training must use too; otherwise "settings" is `settings`.

    All cases are checked before any stage writes anything, so bad input
    stops the run with every problem listed and nothing on disk changed.
    The stages run under the project lock (`clotseg.locking`, a lock file in
    PROCESSED_DIR): a second run waits up to `lock_wait_s` seconds (default:
    CLOTSEG_LOCK_WAIT_S or 10 s) and then stops with a message naming the
    run that holds it.
    """
    check_output_folder(settings.processed_path, "PROCESSED_DIR")
    with project_lock(settings.processed_path, lock_wait_s, log):
        if demo_if_empty:
            ensure_demo_cohort(settings, log)
        if settings.preprocess:
            raw = discover_cases(settings, require_masks=True, warn=log)
            settings = run_preprocess(settings, raw, log)
        cases = discover_cases(settings, require_masks=True, warn=log)
        shapes, clot = checked_cases(settings, cases, log)
        check_any_clot(clot, settings)
        by_id = {c.case_id: c for c in cases}
        groups = case_groups(cases, settings.group_by) if settings.group_by else None
        cohorts = run_split(settings, sorted(by_id), log, strata=clot, groups=groups)
        check_labels(cohorts, clot, settings, log)
        sliced = run_slicing(settings, cohorts, by_id, shapes, log)
        augmented = run_augmentation(settings, sliced, log)
    log(summary_table(cohorts, sliced, augmented, settings.target_name))
    return {"cases": cases, "cohorts": cohorts, "shapes": shapes, "sliced": sliced, "augmented": augmented,
            "settings": settings}


def summary_table(cohorts: dict, sliced: dict, augmented: dict, target_name: str = "clot") -> str:
    lines = ["", f"| cohort | cases | slices (with {target_name}) | augmented samples (with {target_name}) |",
             "| --- | --- | --- | --- |"]
    for name in COHORTS:
        s = sliced.get(name)
        a = augmented.get(name)
        lines.append(f"| {name} | {len(cohorts[name])} | "
                     + (f"{s['n_samples']} ({s['n_positive']})" if s else "sliced at test time") + " | "
                     + (f"{a['n_samples']} ({a['n_positive']})" if a else "-") + " |")
    return "\n".join(lines) + "\n"


__all__ = ["prepare_data", "ensure_demo_cohort", "checked_cases", "summary_table", "TRAIN_COHORTS"]
