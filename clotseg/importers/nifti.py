"""NIfTI importer: one file per case and modality, paired by file name patterns.

Patterns are paths relative to the source folder with a `{case}` placeholder
and optional `*`/`?` wildcards, e.g. '{case}_cta.nii.gz' or
'{case}/ncct.nii.gz'. Every volume is reoriented to the closest canonical
orientation (RAS: array axes point to Right, Anterior, Superior, so axial
slices lie along the last axis); values keep their HU (scl_slope/scl_inter
applied); spacing comes from the reoriented header. Modalities and mask of a
case must share one voxel grid (same shape, affines equal within a tolerance).
"""

from __future__ import annotations

import re
from pathlib import Path

import nibabel as nib
import numpy as np

from clotseg.errors import InputDataError
from clotseg.helpers import pattern_regex as _pattern_regex
from clotseg.importers.common import (CaseSource, ImportOptions, ImportReport, LoadedCase, mask_to_labels,
                                      natural_key, raw_geometry, run_import)

DEFAULT_AFFINE_TOL_MM = 1e-3


# --------------------------------------------------------------- patterns
def pattern_regex(pattern: str) -> re.Pattern:
    """'{case}_cta.nii.gz' -> regex matching relative paths, group 'case'."""
    if pattern.count("{case}") != 1:
        raise InputDataError(f"file pattern {pattern!r} must contain {{case}} exactly once")
    return _pattern_regex(pattern, "{case}", "case", r"[^/]*?", wildcards=True, ignore_case=False)


def _literal_length(pattern: str) -> int:
    return len(pattern.replace("{case}", "").replace("*", "").replace("?", ""))


def find_pattern_files(root: Path, patterns: dict) -> tuple[dict, list]:
    """Files under `root` matching {key: pattern}: ({key: {case: [paths]}}, problems).

    A file matching several patterns (e.g. 'a_seg.nii.gz' matches both
    '{case}.nii.gz' and '{case}_seg.nii.gz') belongs to the most specific
    one, the pattern with the most literal characters.
    """
    root = Path(root)
    hits: dict = {}
    for key, pattern in patterns.items():
        rx = pattern_regex(pattern)
        for path in root.glob(pattern.replace("{case}", "*")):
            if not path.is_file() or any(part.startswith(".") for part in path.relative_to(root).parts):
                continue
            m = rx.fullmatch(path.relative_to(root).as_posix())
            if m:
                hits.setdefault(path, []).append((key, m.group("case")))
    found = {key: {} for key in patterns}
    problems = []
    for path, matches in sorted(hits.items()):
        ranked = sorted(matches, key=lambda km: -_literal_length(patterns[km[0]]))
        if len(ranked) > 1 and _literal_length(patterns[ranked[0][0]]) == _literal_length(patterns[ranked[1][0]]):
            problems.append(f"{path} matches both patterns {patterns[ranked[0][0]]!r} and "
                            f"{patterns[ranked[1][0]]!r}; make them more specific")
            continue
        key, case = ranked[0]
        if not case.strip():
            problems.append(f"{path} gives an empty case name with pattern {patterns[key]!r} "
                            "(nothing where {case} should be); rename or remove it")
            continue
        found[key].setdefault(case, []).append(path)
    return found, problems


# ------------------------------------------------------------------ reading
def load_nifti(path: Path, what: str = "") -> tuple[np.ndarray, np.ndarray, list, str]:
    """Read a 3D NIfTI in closest-canonical (RAS) orientation.

    Returns (data float32 (X, Y, Z) with scl_slope/scl_inter applied, i.e. HU
    for CT; affine 4x4 voxel -> RAS mm; spacing [mm, mm, mm] along the three
    array axes from the reoriented header zooms; orientation code "RAS").
    A trailing singleton 4th dimension is dropped. Raises InputDataError
    naming the file when it is unreadable or not 3D.
    """
    path = Path(path)
    label = f"{what} file {path}" if what else f"file {path}"
    try:
        img = nib.load(str(path))
        if len(img.shape) == 4 and img.shape[3] == 1:
            img = img.slicer[..., 0]
        if len(img.shape) != 3:
            raise InputDataError(f"{label} has shape {img.shape}; expected a 3D volume")
        canon = nib.as_closest_canonical(img)
        data = canon.get_fdata(dtype=np.float32)
    except InputDataError:
        raise
    except Exception as exc:   # nibabel raises many types for broken files
        raise InputDataError(f"{label} is not a readable NIfTI image: {exc}") from exc
    zooms = [float(z) for z in canon.header.get_zooms()[:3]]
    orientation = "".join(nib.aff2axcodes(canon.affine))
    return data, np.asarray(canon.affine, dtype=np.float64), zooms, orientation


def check_same_grid(ref_path, ref_shape, ref_affine, path, shape, affine, tol_mm: float, what: str) -> None:
    """Raise InputDataError unless two images share shape and affine (within tol_mm)."""
    if tuple(shape) != tuple(ref_shape):
        raise InputDataError(f"{what}: {path} has shape {tuple(shape)} but {ref_path} has {tuple(ref_shape)}; "
                             "they must share one voxel grid (register/resample them first)")
    diff = float(np.abs(np.asarray(affine) - np.asarray(ref_affine)).max())
    if diff > tol_mm:
        raise InputDataError(f"{what}: the affines of {path} and {ref_path} differ by up to {diff:.4g} mm "
                             f"(tolerance {tol_mm:g} mm): the images are not on one voxel grid; register/resample "
                             "them first or raise --affine-tol if the difference is rounding")


def load_nifti_case(files: dict, mask_path: Path | None, multiclass: bool = False,
                    tol_mm: float = DEFAULT_AFFINE_TOL_MM, what: str = "case", same_grid: bool = True) -> LoadedCase:
    """Read one case: {modality: NIfTI path} (+ optional mask NIfTI) -> LoadedCase.

    Volumes float32 HU (X, Y, Z) in RAS orientation; mask uint8 labels.
    Raises InputDataError naming the files whose grids disagree. Without
    `same_grid` (raw scans for the PREPROCESS stage) each modality keeps its
    own grid, recorded in the sidecar; the mask must lie on the first one's.
    """
    volumes, ref = {}, None
    spacing = orientation = affine = None
    affines, spacings = {}, {}
    for modality, path in files.items():
        data, aff, zooms, orient = load_nifti(path, f"{what} {modality}")
        if ref is None:
            ref = (path, data.shape, aff)
            spacing, orientation, affine = zooms, orient, aff
        elif same_grid:
            check_same_grid(ref[0], ref[1], ref[2], path, data.shape, aff, tol_mm, what)
        volumes[modality] = data
        affines[modality], spacings[modality] = aff, zooms
    mask = None
    if mask_path is not None:
        data, aff, _, _ = load_nifti(mask_path, f"{what} mask")
        check_same_grid(ref[0], ref[1], ref[2], mask_path, data.shape, aff, tol_mm, what)
        mask = mask_to_labels(data, multiclass, f"{what} mask {mask_path}")
    sources = {m: str(Path(p).resolve()) for m, p in files.items()}
    sources["mask"] = None if mask_path is None else str(Path(mask_path).resolve())
    extra = {} if same_grid else raw_geometry(volumes, affines, spacings)
    return LoadedCase(volumes, mask, spacing, orientation, sources, affine=affine, intensity="HU", extra=extra)


# ----------------------------------------------------------------- import
def discover_nifti_cases(source: Path, modalities: dict, mask: str | None = None,
                         mask_root: Path | None = None, log=print) -> list[CaseSource]:
    """Pair files into cases. CaseSource.files = {modality: Path, 'mask': Path or None}.

    Every case found by any modality pattern must have exactly one file per
    modality (else CaseSource.problem says what is missing). Raises
    InputDataError when no case is found or a file matches two patterns.
    """
    source = Path(source)
    if not source.is_dir():
        raise InputDataError(f"NIfTI source folder {source} does not exist")
    mask_root = Path(mask_root) if mask_root is not None else source
    if not modalities:
        raise InputDataError("give at least one --modality NAME='{case}_....nii.gz'")
    patterns = dict(modalities)
    same_root = mask_root.resolve() == source.resolve()
    if mask and same_root:
        patterns["\0mask"] = mask
    found, problems = find_pattern_files(source, patterns)
    if mask and not same_root:
        if not mask_root.is_dir():
            raise InputDataError(f"mask folder {mask_root} does not exist")
        masks, more = find_pattern_files(mask_root, {"\0mask": mask})
        found.update(masks)
        problems += more
    if problems:
        raise InputDataError(f"{len(problems)} file(s) cannot be assigned to a case; nothing was written:\n"
                             + "\n".join(f"  - {p}" for p in problems))
    mask_files = found.pop("\0mask", {})
    names = sorted({c for hits in found.values() for c in hits}, key=natural_key)
    if not names:
        raise InputDataError(f"no NIfTI files in {source} match {list(modalities.values())}")
    cases = []
    for name in names:
        files, issues = {}, []
        for modality, pattern in modalities.items():
            paths = found[modality].get(name, [])
            if not paths:
                issues.append(f"no {modality} file {pattern.replace('{case}', name)!r} in {source}")
            elif len(paths) > 1:
                issues.append(f"several {modality} files: {', '.join(map(str, paths))}")
            else:
                files[modality] = paths[0]
        mpaths = mask_files.get(name, [])
        if len(mpaths) > 1:
            issues.append(f"several mask files: {', '.join(map(str, mpaths))}")
        files["mask"] = mpaths[0] if len(mpaths) == 1 else None
        cases.append(CaseSource(name, files, "; ".join(issues) or None))
    if mask and not mask_files:
        log(f"warning: no file under {mask_root} matches the mask pattern {mask!r}; all cases are unlabelled")
    orphans = sorted(set(mask_files) - set(names), key=natural_key)
    if orphans:
        log(f"warning: mask(s) without images ignored for case(s) {orphans[:10]}"
              f"{' ...' if len(orphans) > 10 else ''}")
    return cases


def import_nifti(source: Path | str, modalities: dict, options: ImportOptions, mask: str | None = None,
                 mask_root: Path | str | None = None, affine_tol_mm: float = DEFAULT_AFFINE_TOL_MM) -> ImportReport:
    """Import a folder of NIfTI files into the CT-ClotSeg layout.

    Args:
        source: folder holding the files.
        modalities: {name: pattern}, e.g. {"CTA": "{case}_cta.nii.gz"}, in
            channel order.
        mask: pattern of the mask files (optional; cases without one are
            imported unlabelled).
        mask_root: folder the mask pattern is relative to (default `source`).
        affine_tol_mm: largest allowed difference between the affines of a
            case's files (mm).
    Returns the ImportReport; raises InputDataError naming the bad files.
    """
    cases = discover_nifti_cases(Path(source), modalities, mask, None if mask_root is None else Path(mask_root),
                                 log=options.log)

    def loader(src: CaseSource) -> LoadedCase:
        files = {m: src.files[m] for m in modalities}
        return load_nifti_case(files, src.files.get("mask"), options.multiclass, affine_tol_mm, f"case {src.name}",
                               same_grid=not options.unregistered)

    return run_import("nifti", cases, loader, list(modalities), options)
