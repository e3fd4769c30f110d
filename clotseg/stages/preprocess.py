"""Stage 0 (PREPROCESS = True): raw CTA + NCCT scans -> the model's input.

For a cohort of raw scans (what CT-ClotSeg's users prepared by hand in 3D
Slicer), before the split, case by case and in three steps, each on disk
with its own manifest (Processed/Preprocessed/<step>/<case>/, see
clotseg.layout):

1. Registration: every other modality (the NCCT) rigidly onto the CTA
   (`clotseg.preprocessing.registration`); the transform and its quality
   (final metric, skull overlap before/after) go to registration.json.
   Suspicious registrations are flagged: listed in the log and in the
   cohort's summary.json, and marked in the case's sidecar.
2. Resampling: the CTA grid at TARGET_SPACING_MM (same field of view); the
   CTA and the mask resampled onto it, every other modality through its
   registration in one interpolation (IMAGE_INTERPOLATION for images,
   MASK_INTERPOLATION for the mask).
3. Region of interest: the box of ROI_SIZE_MM around the Circle of Willis,
   found on the resampled CTA (`clotseg.preprocessing.roi`), cut out of
   every volume and the mask; the sidecar <case>.json records the spacing,
   the registration, both grids and the box, so a prediction can be put
   back on the original grid (`clotseg.preprocessing.roi.to_original_grid`).

Then the prepared cohort (Processed/Preprocessed/Cohort/volumes, masks:
links to the ROI files, summary.json, manifest.json) is what the split,
slicing, training and testing read (`clotseg.layout.preprocessed_inputs`).

Every raw case is checked before anything is written (all problems listed
at once). A step whose inputs and settings did not change is reused, so a
second run does nothing and an interrupted run resumes with the case and
step it was on; a failing case stops the run with one line naming the case
and the step (exit status 2).

Raw inputs: VOLUME_DIR / MASK_DIR with the usual file names; each modality
may have its own shape. Geometry from the <case>.json sidecar: "affines"
{modality: 4x4 voxel -> world mm} (the importers' --unregistered and the
phantom's --unregistered write it), else "modality_spacing_mm"
{modality: [row, col, slice]}, else "spacing_mm", else VOXEL_SPACING_MM.
The mask lies on the CTA's grid.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clotseg.cohort import Case, check_mask, check_memory, listing, load_volume, read_sidecar
from clotseg.errors import ClotSegError, InputDataError, StageError
from clotseg.helpers import jsonable
from clotseg.io import (atomic_save_npy, atomic_write_json, clean_stale_temps, file_signature, fingerprint,
                        load_npy, read_json, read_manifest, staged_dir, write_manifest)
from clotseg.layout import (GRIDS_FILE, PREP_COHORT, PREP_MASKS, PREP_REGISTRATION, PREP_RESAMPLED, PREP_ROI,
                            PREP_VOLUMES, PREPROCESS_SUMMARY, REGISTRATION_FILE, prepared_cohort_dir,
                            preprocess_step_dir, preprocessed_inputs)
from clotseg.settings import Settings

STAGE = "preprocess"
VERSION = 1
REFERENCE = "CTA"
_HU_PLAUSIBLE = (-2048.0, 16384.0)
MIN_SIDE = 4                      # voxels along every axis of a raw volume
# Sidecar fields that describe the raw geometry: kept under "raw" in the prepared sidecar.
_RAW_GEOMETRY = ("spacing_mm", "shape", "affines", "affine_ras", "modality_spacing_mm", "modality_shapes",
                 "orientation", "resized_from", "source_affine", "source_shape", "slice_numbers", "slice_gaps",
                 "importer", "unregistered", "registered")


@dataclass
class RawCase:
    """A checked raw case: its files, the grid of every modality, its sidecar
    and the fingerprint of its inputs (files and sidecar)."""

    case: Case
    grids: dict
    side: dict
    key: str

    @property
    def case_id(self) -> str:
        return self.case.case_id


# ------------------------------------------------------------------- checks
def _spacing(value, what: str):
    ok = (isinstance(value, (list, tuple)) and len(value) == 3
          and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0
                  for v in value))
    if not ok:
        raise InputDataError(f"{what} must be three positive numbers [row, col, slice] in mm, "
                             f"got {json.dumps(value)[:80]}")
    return tuple(float(v) for v in value)


def raw_grids(case: Case, side: dict, shapes: dict, settings: Settings) -> dict:
    """{modality: Grid} of a raw case (see the module docstring for the sources)."""
    from clotseg.preprocessing.geometry import Grid

    where = f"case {case.case_id}: sidecar {case.sidecar}" if case.sidecar else f"case {case.case_id}"
    affines = side.get("affines")
    if affines is not None:
        if not isinstance(affines, dict):
            raise InputDataError(f"{where}: \"affines\" must be an object {{modality: 4x4 matrix}}")
        missing = [m for m in shapes if m not in affines]
        if missing:
            raise InputDataError(f"{where}: \"affines\" has no entry for {missing}; give one for every modality "
                                 f"({list(shapes)}) or none")
        grids = {}
        for m, shape in shapes.items():
            try:
                grids[m] = Grid.from_affine(shape, np.asarray(affines[m], dtype=np.float64))
            except (ValueError, TypeError) as exc:
                raise InputDataError(f"{where}: the {m} affine is not usable: {exc}") from exc
        return grids
    per = side.get("modality_spacing_mm") or {}
    if not isinstance(per, dict):
        raise InputDataError(f"{where}: \"modality_spacing_mm\" must be an object {{modality: [row, col, slice]}}")
    grids = {}
    for m, shape in shapes.items():
        if m in per:
            sp = _spacing(per[m], f"{where}: modality_spacing_mm[{m!r}]")
        elif side.get("spacing_mm") is not None:
            sp = tuple(float(v) for v in side["spacing_mm"])
        elif settings.voxel_spacing_mm is not None:
            sp = tuple(float(v) for v in settings.voxel_spacing_mm)
        else:
            raise InputDataError(f"case {case.case_id}: no voxel spacing for {m}; PREPROCESS resamples in mm, so "
                                 f"give it in the sidecar {case.case_id}.json (\"spacing_mm\" or "
                                 "\"modality_spacing_mm\") or set VOXEL_SPACING_MM")
        grids[m] = Grid.from_spacing(shape, sp)
    return grids


def check_raw_case(case: Case, settings: Settings) -> RawCase:
    """Check one raw case before any work; InputDataError names the case and file."""
    side = read_sidecar(case.sidecar, case.case_id) if case.sidecar is not None else {}
    if side.get("slice_gaps"):
        # resampling in mm interpolates between stacked slices, which across a gap
        # (slices 3, 4, 7 of a 2D slice import) are not neighbours
        raise InputDataError(f"case {case.case_id}: sidecar {case.sidecar.name} records gaps between its slices "
                             f"(slice_gaps {side['slice_gaps'][:5]}); PREPROCESS resamples along the slices, "
                             "which such a stack does not allow: set PREPROCESS = False for this cohort")
    check_memory(case)
    shapes = {}
    for modality, path in case.volumes.items():
        what = f"case {case.case_id} {modality}"
        arr = load_volume(path, what)
        if min(arr.shape) < MIN_SIDE:
            raise InputDataError(f"{what} file {path.name} has shape {arr.shape}; PREPROCESS needs at least "
                                 f"{MIN_SIDE} voxels along every axis")
        data = np.asarray(arr)
        if data.dtype.kind == "f" and not np.isfinite(data).all():
            raise InputDataError(f"{what} file {path.name} has {int((~np.isfinite(data)).sum())} NaN/inf voxel(s)")
        lo, hi = float(data.min()), float(data.max())
        if lo < _HU_PLAUSIBLE[0] or hi > _HU_PLAUSIBLE[1]:
            raise InputDataError(f"{what} file {path.name} has values {lo:g}..{hi:g}, outside any CT range in HU "
                                 f"({_HU_PLAUSIBLE[0]:g}..{_HU_PLAUSIBLE[1]:g}); an integer overflow is likely")
        shapes[modality] = tuple(int(s) for s in arr.shape)
        del arr, data
    grids = raw_grids(case, side, shapes, settings)
    if case.mask is not None:
        check_mask(case, settings, shapes[REFERENCE])
    parts = case.signature() + ([file_signature(case.sidecar)] if case.sidecar is not None else [])
    key = fingerprint({"files": parts, "grids": {m: g.to_json() for m, g in grids.items()}})
    return RawCase(case, grids, side, key)


def check_raw_cohort(cases: list[Case], settings: Settings) -> list[RawCase]:
    """Check every raw case; all problems are listed at once (InputDataError)."""
    out, problems = [], []
    for case in cases:
        try:
            out.append(check_raw_case(case, settings))
        except InputDataError as exc:
            problems.append(str(exc))
    if problems:
        raise InputDataError(listing("input problem(s) in the raw cohort; nothing was written", problems))
    return out


# ------------------------------------------------------------- the steps
def _one_line(exc: BaseException) -> str:
    """SimpleITK's multi-line messages (and any other) as one short line."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    errors = [ln for ln in lines if "ERROR" in ln or "rror:" in ln]
    text = (errors[-1] if errors else lines[-1]) if lines else type(exc).__name__
    text = text.split("ERROR:", 1)[-1].strip()
    return text if len(text) <= 300 else text[:297] + "..."


@contextmanager
def _failing(raw: RawCase, step: str):
    """Any error of a step but ClotSeg's own becomes one StageError line naming the case and the step."""
    try:
        yield
    except ClotSegError:
        raise
    except (RuntimeError, ValueError, ArithmeticError, MemoryError, IndexError, TypeError) as exc:
        raise StageError(f"case {raw.case_id}: preprocessing step {step!r} failed: {_one_line(exc)} "
                         f"(inputs: {', '.join(p.name for p in raw.case.volumes.values())})") from exc


def _up_to_date(folder: Path, key: str) -> dict | None:
    clean_stale_temps(folder)
    manifest = read_manifest(folder, verify=True)
    return manifest if manifest is not None and manifest.get("fingerprint") == key else None


def _threads(settings: Settings) -> int | None:
    return settings.num_workers or None


def _keys(raw: RawCase, settings: Settings) -> dict:
    from clotseg.preprocessing import registration as reg

    k1 = fingerprint({"version": VERSION, "method": reg.VERSION, "input": raw.key, "reference": REFERENCE,
                      "modalities": settings.modalities})
    k2 = fingerprint({"version": VERSION, "registration": k1, "mask": raw.case.mask is not None,
                      **settings.subset(["target_spacing_mm", "image_interpolation", "mask_interpolation"])})
    k3 = fingerprint({"version": VERSION, "resampled": k2, **settings.subset(["roi_size_mm", "modality_patterns",
                                                                              "mask_pattern"])})
    return {PREP_REGISTRATION: k1, PREP_RESAMPLED: k2, PREP_ROI: k3}


def _names(settings: Settings, case_id: str) -> dict:
    """{modality or "mask": file name} of a case, with the configured patterns."""
    number = case_id[len(settings.case_prefix):]
    out = {m: p.replace("<ID>", number) for m, p in settings.modality_patterns.items()}
    out["mask"] = settings.mask_pattern.replace("<ID>", number)
    return out


def step_registration(raw: RawCase, settings: Settings, key: str, log=print) -> dict:
    """Step 1: register every other modality onto the CTA; write registration.json."""
    from clotseg.preprocessing.registration import register

    target = preprocess_step_dir(settings, PREP_REGISTRATION, raw.case_id)
    fixed_grid = raw.grids[REFERENCE]
    records = {}
    with _failing(raw, "registration"):
        fixed = fixed_grid.to_image(load_npy(raw.case.volumes[REFERENCE], what=f"case {raw.case_id} {REFERENCE}"))
        for m, path in raw.case.volumes.items():
            if m == REFERENCE:
                continue
            moving = raw.grids[m].to_image(load_npy(path, what=f"case {raw.case_id} {m}"))
            result = register(fixed, moving, threads=_threads(settings))
            records[m] = result.as_json()
            del moving
    with staged_dir(target) as tmp:
        atomic_write_json(tmp / REGISTRATION_FILE, {"case_id": raw.case_id, "reference": REFERENCE,
                                                    "registrations": records})
        return write_manifest(tmp, f"{STAGE}/{PREP_REGISTRATION.lower()}", key, case_id=raw.case_id,
                              flagged=sorted(m for m, r in records.items() if r["flagged"]))


def step_resampling(raw: RawCase, settings: Settings, key: str, registrations: dict) -> dict:
    """Step 2: every volume and the mask on the CTA grid at TARGET_SPACING_MM."""
    from clotseg.preprocessing.registration import euler_from_matrix
    from clotseg.preprocessing.resampling import resample_image, resample_mask

    target = preprocess_step_dir(settings, PREP_RESAMPLED, raw.case_id)
    ref = raw.grids[REFERENCE]
    grid = ref.resampled(settings.target_spacing_mm)
    names = _names(settings, raw.case_id)
    n_arrays = len(raw.case.volumes) * 4 + (1 if raw.case.mask is not None else 0)
    need = int(np.prod(grid.shape)) * n_arrays + 1_000_000
    with staged_dir(target, need) as tmp:
        with _failing(raw, "resampling"):
            for m, path in raw.case.volumes.items():
                vol = load_npy(path, what=f"case {raw.case_id} {m}")
                transform = None
                if m != REFERENCE:
                    rec = registrations[m]
                    transform = euler_from_matrix(np.asarray(rec["matrix"]), rec["center_mm"])
                out = resample_image(vol, raw.grids[m], grid, transform, settings.image_interpolation)
                atomic_save_npy(tmp / names[m], out)
                del vol, out
            volumes = {}
            if raw.case.mask is not None:
                mask = load_npy(raw.case.mask, what=f"case {raw.case_id} mask")
                mask = (mask > 0).astype(np.uint8) if settings.num_classes == 1 else mask.astype(np.uint8)
                out = resample_mask(mask, ref, grid, None, settings.mask_interpolation)
                atomic_save_npy(tmp / names["mask"], out)
                volumes = {"original": float(np.count_nonzero(mask)) * float(np.prod(ref.spacing)),
                           "resampled": float(np.count_nonzero(out)) * float(np.prod(grid.spacing))}
        atomic_write_json(tmp / GRIDS_FILE, {"original_grid": ref.to_json(), "resampled_grid": grid.to_json(),
                                             "mask_volume_mm3": volumes})
        return write_manifest(tmp, f"{STAGE}/{PREP_RESAMPLED.lower()}", key, case_id=raw.case_id)


def step_roi(raw: RawCase, settings: Settings, key: str, registrations: dict) -> dict:
    """Step 3: the Circle-of-Willis box; the cropped volumes, mask and sidecar."""
    from clotseg.preprocessing.geometry import Grid
    from clotseg.preprocessing.roi import crop, find_roi

    source = preprocess_step_dir(settings, PREP_RESAMPLED, raw.case_id)
    target = preprocess_step_dir(settings, PREP_ROI, raw.case_id)
    names = _names(settings, raw.case_id)
    grids = read_json(source / GRIDS_FILE)
    grid = Grid.from_json(grids["resampled_grid"])
    with _failing(raw, "roi"):
        cta = load_npy(source / names[REFERENCE], what=f"case {raw.case_id} resampled {REFERENCE}")
        roi = find_roi(cta, grid.spacing, settings.roi_size_mm)
        del cta
    box = roi["box"]
    cropped = grid.cropped(box)
    with staged_dir(target) as tmp:
        mask_volume = None
        for name in [names[m] for m in raw.case.volumes] + ([names["mask"]] if raw.case.mask is not None else []):
            arr = crop(load_npy(source / name, what=f"case {raw.case_id} resampled"), box)
            atomic_save_npy(tmp / name, arr)
            if name == names["mask"]:
                mask_volume = float(np.count_nonzero(arr)) * float(np.prod(cropped.spacing))
        volumes = dict(grids.get("mask_volume_mm3") or {})
        if mask_volume is not None:
            volumes["cropped"] = mask_volume
        side = prepared_sidecar(raw, settings, registrations, grids, roi, cropped, volumes)
        atomic_write_json(tmp / f"{raw.case_id}.json", side)
        return write_manifest(tmp, f"{STAGE}/{PREP_ROI.lower()}", key, case_id=raw.case_id, roi=roi,
                              shape=list(cropped.shape))


def prepared_sidecar(raw: RawCase, settings: Settings, registrations: dict, grids: dict, roi: dict, cropped,
                     volumes: dict) -> dict:
    """The <case>.json of a prepared case: the raw sidecar's other fields (e.g.
    "site" for GROUP_BY), the new spacing and shape, and "preprocess"."""
    side = {k: v for k, v in raw.side.items() if k not in _RAW_GEOMETRY}
    side.update({
        "case_id": raw.case_id,
        "spacing_mm": [round(float(v), 6) for v in cropped.spacing],
        "shape": list(cropped.shape),
        "modalities": list(raw.case.volumes),
        "importer": "preprocess",
        "raw": {k: raw.side[k] for k in _RAW_GEOMETRY if k in raw.side},
    })
    if raw.side.get("importer") in ("nifti", "dicom"):
        side["affine_ras"] = [[round(float(v), 6) for v in row] for row in cropped.affine]
    flagged = sorted(m for m, r in registrations.items() if r["flagged"])
    side["preprocess"] = {
        "version": VERSION,
        "reference": REFERENCE,
        "registration": registrations,
        "registration_flagged": flagged,
        "original_grid": grids["original_grid"],
        "resampled_grid": grids["resampled_grid"],
        "cropped_grid": cropped.to_json(),
        "roi": {**roi, "roi_size_mm": list(settings.roi_size_mm)},
        "image_interpolation": settings.image_interpolation,
        "mask_interpolation": settings.mask_interpolation,
        "mask_volume_mm3": {k: round(v, 3) for k, v in volumes.items()},
    }
    return jsonable(side)


# ------------------------------------------------------------- the stage
def preprocess_case(raw: RawCase, settings: Settings, log=print) -> tuple[dict, list]:
    """Bring one case up to date (only the steps that are not); return
    (its ROI manifest, [steps done])."""
    keys = _keys(raw, settings)
    roi_dir = preprocess_step_dir(settings, PREP_ROI, raw.case_id)
    done = _up_to_date(roi_dir, keys[PREP_ROI])
    if done is not None:
        return done, []
    steps = []
    reg_dir = preprocess_step_dir(settings, PREP_REGISTRATION, raw.case_id)
    if _up_to_date(reg_dir, keys[PREP_REGISTRATION]) is None:
        step_registration(raw, settings, keys[PREP_REGISTRATION], log)
        steps.append("registration")
    registrations = read_json(reg_dir / REGISTRATION_FILE)["registrations"]
    res_dir = preprocess_step_dir(settings, PREP_RESAMPLED, raw.case_id)
    if _up_to_date(res_dir, keys[PREP_RESAMPLED]) is None:
        step_resampling(raw, settings, keys[PREP_RESAMPLED], registrations)
        steps.append("resampling")
    manifest = step_roi(raw, settings, keys[PREP_ROI], registrations)
    steps.append("roi")
    return manifest, steps


def _case_line(cid: str, side: dict) -> str:
    pre = side["preprocess"]
    parts = []
    for m, r in pre["registration"].items():
        before, after = r.get("skull_dice_before"), r.get("skull_dice_after")
        fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
        metric = "-" if r["final_metric"] is None else f"{r['final_metric']:.3f}"
        parts.append(f"{m} registered (rotation {r['rotation_deg']:.1f} deg, metric {metric}, skull "
                     f"overlap {fmt(before)} -> {fmt(after)}{', FLAGGED' if r['flagged'] else ''})")
    box = pre["roi"]["box"]
    parts.append(f"ROI {'x'.join(str(b - a) for a, b in box)} at {[a for a, _ in box]}"
                 + ("" if pre["roi"]["found"] else " (no vessels found: centred on the head)"))
    vol = pre["mask_volume_mm3"]
    if vol:
        parts.append(f"mask {vol.get('original', 0):.1f} -> {vol.get('cropped', 0):.1f} mm3")
    return f"[preprocess] {cid}: " + "; ".join(parts)


def assemble_cohort(settings: Settings, raws: list[RawCase], manifests: dict, log=print) -> dict:
    """The prepared cohort folder (links to the ROI files), summary.json, manifest."""
    target = prepared_cohort_dir(settings)
    key = fingerprint({"version": VERSION, "cases": [[r.case_id, manifests[r.case_id]["fingerprint"]] for r in raws],
                       "patterns": settings.subset(["modality_patterns", "mask_pattern"])})
    ready = _up_to_date(target, key)
    if ready is not None:
        return ready
    summary = {"cases": {}, "flagged": []}
    with staged_dir(target) as tmp:
        (tmp / PREP_VOLUMES).mkdir()
        (tmp / PREP_MASKS).mkdir()
        for raw in raws:
            src = preprocess_step_dir(settings, PREP_ROI, raw.case_id)
            names = _names(settings, raw.case_id)
            files = [(names[m], PREP_VOLUMES) for m in raw.case.volumes] + [(f"{raw.case_id}.json", PREP_VOLUMES)]
            if raw.case.mask is not None:
                files.append((names["mask"], PREP_MASKS))
            for name, sub in files:
                _link(src / name, tmp / sub / name)
            side = read_json(src / f"{raw.case_id}.json")
            pre = side["preprocess"]
            summary["cases"][raw.case_id] = {
                "registration": {m: {k: r[k] for k in ("final_metric", "rotation_deg", "translation_mm",
                                                       "skull_dice_before", "skull_dice_after", "flagged",
                                                       "reasons")}
                                 for m, r in pre["registration"].items()},
                "roi": pre["roi"], "shape": side["shape"], "mask_volume_mm3": pre["mask_volume_mm3"]}
            if pre["registration_flagged"]:
                summary["flagged"].append(raw.case_id)
        summary["settings"] = settings.subset(["target_spacing_mm", "roi_size_mm", "image_interpolation",
                                               "mask_interpolation"])
        atomic_write_json(tmp / PREPROCESS_SUMMARY, jsonable(summary))
        return write_manifest(tmp, STAGE, key, version=VERSION, n_cases=len(raws), cases=[r.case_id for r in raws],
                              flagged=summary["flagged"], settings=summary["settings"])


def _link(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:                       # no hard links here: copy
        shutil.copyfile(src, dst)


def run_preprocess(settings: Settings, cases: list[Case], log=print) -> Settings:
    """Stage 0 for the raw cases `cases`; return the settings that read the prepared cohort."""
    raws = check_raw_cohort(cases, settings)
    manifests, counts = {}, {"registration": 0, "resampling": 0, "roi": 0}
    for i, raw in enumerate(raws, 1):
        manifest, steps = preprocess_case(raw, settings, log)
        manifests[raw.case_id] = manifest
        for s in steps:
            counts[s] += 1
        if steps:
            side = read_json(preprocess_step_dir(settings, PREP_ROI, raw.case_id) / f"{raw.case_id}.json")
            log(_case_line(raw.case_id, side) + f" [{i}/{len(raws)}: {', '.join(steps)}]")
    cohort = assemble_cohort(settings, raws, manifests, log)
    if any(counts.values()):
        log(f"[preprocess] {len(raws)} case(s): {counts['registration']} registered, {counts['resampling']} "
            f"resampled, {counts['roi']} cropped, the rest up to date -> {prepared_cohort_dir(settings)}")
    else:
        log(f"[preprocess] up to date: {prepared_cohort_dir(settings)} ({len(raws)} cases)")
    flagged = cohort.get("flagged") or []
    if flagged:
        summary = prepared_cohort_dir(settings) / PREPROCESS_SUMMARY
        log(f"[preprocess] warning: the registration of {len(flagged)} case(s) looks wrong: {', '.join(flagged)}; "
            f"their NCCT may not lie on their CTA. Check them (reasons in {summary}) before trusting the model; "
            "they are kept in the cohort")
    return preprocessed_inputs(settings)


__all__ = ["run_preprocess", "check_raw_cohort", "preprocess_case", "RawCase", "PREP_COHORT"]
