"""DICOM importer: one folder per case, one subfolder per modality (series).

Slices are stacked in the order of their position along the slice normal
(normal = row cosine x column cosine of ImageOrientationPatient, position =
ImagePositionPatient . normal), never by file name or InstanceNumber, which
scanners and anonymisers do not keep in anatomical order. Pixel values become
HU with RescaleSlope/RescaleIntercept. A series is refused when it mixes
SeriesInstanceUIDs, misses slices (a gap above 1.5x the median spacing), has
non-uniform spacing or a gantry tilt (slice positions not stepping along the
normal); a 3D array would then misrepresent the anatomy.

Arrays keep the DICOM pixel layout: (rows, cols, slices), where rows run
along the column cosine and cols along the row cosine; the sidecar records
the resulting axis codes (e.g. "PLS" for a standard axial head scan) and the
voxel -> RAS affine.
"""

from __future__ import annotations

import glob
import math
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from clotseg.errors import InputDataError
from clotseg.importers.common import (CaseSource, ImportOptions, ImportReport, LoadedCase, mask_to_labels,
                                      natural_key, raw_geometry, run_import)
from clotseg.io import load_npy

DEFAULT_AFFINE_TOL_MM = 1e-3
GAP_FACTOR = 1.5            # a step above 1.5x the median spacing means missing slices
SPACING_REL_TOL = 0.01      # steps may differ from the median by 1% (DS rounding) ...
SPACING_ABS_TOL_MM = 1e-3   # ... or 1 micrometre
TILT_MAX_DEG = 0.1          # sideways drift of slice positions allowed, as an angle ...
TILT_ABS_TOL_MM = 0.02      # ... once it exceeds 20 micrometres (DS rounding)
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass
class DicomSeries:
    """A checked, stacked DICOM series.

    Attributes:
        volume: float32 (rows, cols, D) in HU, slices in ascending position.
        spacing_mm: [row_mm, col_mm, slice_mm] (PixelSpacing, median step).
        affine: 4x4 voxel -> RAS mm (NIfTI convention).
        orientation: axis codes of the three array axes, e.g. "PLS".
        folder: the series folder; files: the DICOM files in slice order.
        series_uid: SeriesInstanceUID.
    """

    volume: np.ndarray
    spacing_mm: list
    affine: np.ndarray
    orientation: str
    folder: Path
    files: list
    series_uid: str


def _read_datasets(folder: Path) -> tuple[list, int]:
    """[(path, dataset)] of the image files in `folder`, and how many were skipped."""
    items, skipped = [], 0
    for path in sorted(folder.iterdir(), key=lambda p: natural_key(p.name)):
        if not path.is_file() or path.name.startswith("."):
            continue
        try:
            ds = pydicom.dcmread(path)
        except InvalidDicomError:
            skipped += 1       # not DICOM (README, thumbnails, ...): ignore
            continue
        except Exception as exc:
            raise InputDataError(f"DICOM file {path} cannot be read (truncated or corrupt?): {exc}") from exc
        if "PixelData" not in ds:
            skipped += 1       # DICOMDIR, structured reports, presentation states
            continue
        items.append((path, ds))
    return items, skipped


def _floats(ds, tag: str, n: int, path: Path) -> np.ndarray:
    value = ds.get(tag)
    try:
        arr = np.array([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        arr = None
    if arr is None or arr.size != n or not np.isfinite(arr).all():
        raise InputDataError(f"DICOM file {path} has no valid {tag} (got {value!r}); "
                             "the slice geometry cannot be known")
    return arr


def _axis_codes(affine: np.ndarray) -> str:
    return "".join(nib.aff2axcodes(affine))


def read_dicom_series(folder: Path | str, allow_single_slice: bool = False) -> DicomSeries:
    """Read, check and stack the DICOM series in one folder.

    Raises InputDataError naming the folder (and files) for: no image files,
    a single image file (a one-slice "series" is usually a scout, a key image
    or a folder of the wrong level; accepted only with `allow_single_slice`),
    mixed SeriesInstanceUIDs, multi-frame files, missing geometry tags,
    changing orientation/size/pixel spacing, duplicate positions, gantry tilt,
    missing slices and non-uniform slice spacing.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputDataError(f"DICOM series folder {folder} does not exist")
    items, skipped = _read_datasets(folder)
    if not items:
        raise InputDataError(f"series folder {folder} holds no DICOM image files ({skipped} file(s) skipped as "
                             "not DICOM or without pixel data)")
    if len(items) == 1 and not allow_single_slice:
        raise InputDataError(f"series folder {folder} holds a single DICOM image ({items[0][0].name}); a CT series "
                             "has many slices, so this is probably a scout/key image or the wrong folder level. "
                             "Pass --allow-single-slice to import it as a one-slice volume")
    uids: dict = {}
    for path, ds in items:
        uids.setdefault(str(ds.get("SeriesInstanceUID", "<none>")), []).append(path.name)
    if len(uids) > 1:
        listing = "; ".join(f"{uid}: {len(names)} file(s), e.g. {names[0]}" for uid, names in uids.items())
        raise InputDataError(f"series folder {folder} mixes {len(uids)} series (SeriesInstanceUID {listing}); "
                             "put each series in its own folder")
    for path, ds in items:
        if int(ds.get("NumberOfFrames", 1) or 1) > 1:
            raise InputDataError(f"DICOM file {path} is multi-frame (enhanced CT); export the series as "
                                 "single-frame files or convert it to NIfTI (dcm2niix) and use the nifti importer")

    first_path, first = items[0]
    iop = _floats(first, "ImageOrientationPatient", 6, first_path)
    spacing_px = _floats(first, "PixelSpacing", 2, first_path)
    rows, cols = int(first.Rows), int(first.Columns)
    for path, ds in items[1:]:
        if np.abs(_floats(ds, "ImageOrientationPatient", 6, path) - iop).max() > 1e-4:
            raise InputDataError(f"series folder {folder}: ImageOrientationPatient of {path.name} differs from "
                                 f"{first_path.name}; the slices are not parallel")
        if np.abs(_floats(ds, "PixelSpacing", 2, path) - spacing_px).max() > 1e-4:
            raise InputDataError(f"series folder {folder}: PixelSpacing of {path.name} differs from {first_path.name}")
        if (int(ds.Rows), int(ds.Columns)) != (rows, cols):
            raise InputDataError(f"series folder {folder}: {path.name} is {ds.Rows}x{ds.Columns} pixels but "
                                 f"{first_path.name} is {rows}x{cols}")
    row_cos, col_cos = iop[:3] / np.linalg.norm(iop[:3]), iop[3:] / np.linalg.norm(iop[3:])
    if abs(float(row_cos @ col_cos)) > 1e-3:
        raise InputDataError(f"series folder {folder}: ImageOrientationPatient {iop.tolist()} has non-orthogonal "
                             "row and column directions")
    normal = np.cross(row_cos, col_cos)
    ipp = np.array([_floats(ds, "ImagePositionPatient", 3, p) for p, ds in items])
    order = np.argsort(ipp @ normal, kind="stable")
    items = [items[i] for i in order]
    ipp = ipp[order]
    pos = ipp @ normal
    names = [p.name for p, _ in items]

    steps = np.diff(pos)
    if steps.size and steps.min() < SPACING_ABS_TOL_MM:
        k = int(np.argmin(steps))
        raise InputDataError(f"series folder {folder}: {names[k]} and {names[k + 1]} lie at the same position "
                             f"({pos[k]:.3f} mm along the normal); the folder holds repeated or overlapping "
                             "acquisitions, keep one")
    if len(items) > 1:
        delta = ipp - ipp[0]
        along = delta @ normal
        sideways = np.linalg.norm(delta - np.outer(along, normal), axis=1)
        limit = np.maximum(TILT_ABS_TOL_MM, np.abs(along) * math.tan(math.radians(TILT_MAX_DEG)))
        if (sideways > limit).any():
            k = int(np.argmax(sideways - limit))
            angle = math.degrees(math.atan2(sideways[k], abs(along[k])))
            raise InputDataError(f"series folder {folder} has a gantry tilt (or sheared geometry): slice positions "
                                 f"drift {sideways[k]:.2f} mm sideways over {abs(along[k]):.2f} mm along the normal "
                                 f"of ImageOrientationPatient (about {angle:.1f} deg, {names[k]}); resample it to an "
                                 "untilted grid first (e.g. dcm2niix corrects tilt) and import the NIfTI")
        median = float(np.median(steps))
        if (steps > GAP_FACTOR * median).any():
            k = int(np.argmax(steps))
            raise InputDataError(f"series folder {folder} misses slice(s): a gap of {steps[k]:.3f} mm between "
                                 f"{names[k]} and {names[k + 1]} (median spacing {median:.3f} mm); "
                                 "restore the missing files")
        tol = max(SPACING_ABS_TOL_MM, SPACING_REL_TOL * median)
        if (np.abs(steps - median) > tol).any():
            k = int(np.argmax(np.abs(steps - median)))
            raise InputDataError(f"series folder {folder} has non-uniform slice spacing: {steps[k]:.3f} mm between "
                                 f"{names[k]} and {names[k + 1]} vs median {median:.3f} mm; resample it first")
        slice_mm = median
    else:
        thick = first.get("SpacingBetweenSlices") or first.get("SliceThickness")
        slice_mm = float(thick) if thick else float("nan")

    volume = np.empty((rows, cols, len(items)), dtype=np.float32)
    for k, (path, ds) in enumerate(items):
        try:
            pixels = ds.pixel_array
        except Exception as exc:
            raise InputDataError(f"DICOM file {path}: pixel data cannot be decoded ({exc}); compressed transfer "
                                 "syntaxes need pylibjpeg / python-gdcm installed") from exc
        if pixels.shape != (rows, cols):
            raise InputDataError(f"DICOM file {path}: pixel array is {pixels.shape}, expected ({rows}, {cols})")
        slope = float(ds.get("RescaleSlope", 1) or 1)
        intercept = float(ds.get("RescaleIntercept", 0) or 0)
        volume[:, :, k] = pixels.astype(np.float32) * np.float32(slope) + np.float32(intercept)

    step = normal * (slice_mm if math.isfinite(slice_mm) else 1.0)
    lps = np.eye(4)
    lps[:3, 0] = col_cos * spacing_px[0]     # moving down one row follows the column cosine
    lps[:3, 1] = row_cos * spacing_px[1]
    lps[:3, 2] = step
    lps[:3, 3] = ipp[0]
    affine = _LPS_TO_RAS @ lps
    spacing = [float(spacing_px[0]), float(spacing_px[1]), slice_mm]
    return DicomSeries(volume, spacing if math.isfinite(slice_mm) else None, affine, _axis_codes(affine),
                       folder, [p for p, _ in items], str(first.get("SeriesInstanceUID", "")))


# --------------------------------------------------------------------- masks
def load_mask_on_grid(path: Path, shape, affine: np.ndarray, multiclass: bool, tol_mm: float,
                      what: str) -> np.ndarray:
    """Read a mask (.npy or NIfTI) onto a series' grid; return uint8 (rows, cols, D).

    A .npy mask must already be in the series' array layout. A NIfTI mask is
    reoriented to the series' axis order/directions using both affines and
    must then match shape and affine (within tol_mm). Raises InputDataError
    naming the file otherwise.
    """
    path = Path(path)
    if path.suffix.lower() == ".npy":
        data = load_npy(path, what=what)
        if data.shape != tuple(shape):
            raise InputDataError(f"{what} {path} has shape {data.shape} but the series is {tuple(shape)} "
                                 "(a .npy mask must be in the (rows, cols, slices) layout of the imported series)")
        return mask_to_labels(data, multiclass, f"{what} {path}")
    try:
        img = nib.load(str(path))
        if len(img.shape) == 4 and img.shape[3] == 1:
            img = img.slicer[..., 0]
        if len(img.shape) != 3:
            raise InputDataError(f"{what} {path} has shape {img.shape}; expected 3D")
        target = nib.orientations.io_orientation(affine)
        current = nib.orientations.io_orientation(img.affine)
        img = img.as_reoriented(nib.orientations.ornt_transform(current, target))
        data = img.get_fdata(dtype=np.float32)
    except InputDataError:
        raise
    except Exception as exc:
        raise InputDataError(f"{what} {path} is not a readable NIfTI image: {exc}") from exc
    if data.shape != tuple(shape):
        raise InputDataError(f"{what} {path} is {data.shape} after reorientation but the series is {tuple(shape)}")
    diff = float(np.abs(np.asarray(img.affine) - affine).max())
    if diff > tol_mm:
        raise InputDataError(f"{what} {path}: its affine differs from the DICOM series geometry by up to "
                             f"{diff:.4g} mm (tolerance {tol_mm:g} mm); it was not drawn on this series "
                             "(or raise --affine-tol if the difference is rounding)")
    return mask_to_labels(data, multiclass, f"{what} {path}")


def find_case_file(root: Path, pattern: str, case: str) -> tuple[Path | None, str | None]:
    """The one file matching `pattern` ({case} replaced) under root: (path, problem)."""
    if pattern.count("{case}") != 1:
        raise InputDataError(f"mask pattern {pattern!r} must contain {{case}} exactly once")
    hits = sorted(p for p in Path(root).glob(pattern.replace("{case}", glob.escape(case))) if p.is_file())
    if len(hits) > 1:
        return None, f"several mask files match: {', '.join(map(str, hits))}"
    return (hits[0] if hits else None), None


def read_series_list(path: Path) -> list[str]:
    """Case folder names from a text file: one per line, '#' comments and blanks ignored."""
    path = Path(path)
    if not path.is_file():
        raise InputDataError(f"series list {path} does not exist")
    names = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.append(Path(line).name)
    if not names:
        raise InputDataError(f"series list {path} names no case folders")
    return names


# -------------------------------------------------------------------- import
def discover_dicom_cases(source: Path, modalities: dict, mask: str | None = None, mask_root: Path | None = None,
                         series_list: list[str] | None = None, log=print) -> list[CaseSource]:
    """Case folders under `source`: CaseSource.files = {modality: series folder, 'mask': path or None}."""
    source = Path(source)
    if not source.is_dir():
        raise InputDataError(f"DICOM source folder {source} does not exist")
    if not modalities:
        raise InputDataError("give at least one --modality NAME=SUBFOLDER (use NAME=. when the case folder "
                             "itself holds the series)")
    if series_list is not None:
        missing = [n for n in series_list if not (source / n).is_dir()]
        if missing:
            raise InputDataError(f"series list names {len(missing)} folder(s) not in {source}: {missing[:10]}")
        folders = [source / n for n in dict.fromkeys(series_list)]
    else:
        folders = sorted((p for p in source.iterdir() if p.is_dir() and not p.name.startswith(".")),
                         key=lambda p: natural_key(p.name))
    if not folders:
        raise InputDataError(f"no case folders in {source} (expected one folder per case with subfolders "
                             f"{list(modalities.values())})")
    mask_root = Path(mask_root) if mask_root is not None else source
    if mask and not mask_root.is_dir():
        raise InputDataError(f"mask folder {mask_root} does not exist")
    cases = []
    for folder in folders:
        files, issues = {}, []
        for modality, sub in modalities.items():
            series = (folder / sub) if sub not in ("", ".") else folder
            if not series.is_dir():
                issues.append(f"no {modality} series folder {series}")
            files[modality] = series
        files["mask"] = None
        if mask:
            files["mask"], problem = find_case_file(mask_root, mask, folder.name)
            if problem:
                issues.append(problem)
        cases.append(CaseSource(folder.name, files, "; ".join(issues) or None))
    if mask and not any(c.files["mask"] for c in cases):
        log(f"warning: no file under {mask_root} matches the mask pattern {mask!r}; all cases are unlabelled")
    return cases


def import_dicom(source: Path | str, modalities: dict, options: ImportOptions, mask: str | None = None,
                 mask_root: Path | str | None = None, series_list: Path | str | None = None,
                 affine_tol_mm: float = DEFAULT_AFFINE_TOL_MM, allow_single_slice: bool = False) -> ImportReport:
    """Import DICOM series into the CT-ClotSeg layout.

    Args:
        source: folder with one subfolder per case.
        modalities: {name: subfolder of a case}, e.g. {"CTA": "cta", "NCCT": "ncct"}.
        mask: optional pattern of a NIfTI or .npy mask per case, relative to
            `mask_root` (default `source`), e.g. '{case}/seg.nii.gz'.
        series_list: optional text file naming the case folders to import.
        affine_tol_mm: largest allowed geometry difference between the
            modalities / the mask of a case (mm).
        allow_single_slice: accept series of one image file (refused by default).
    Returns the ImportReport; raises InputDataError naming the bad series.
    """
    names = read_series_list(Path(series_list)) if series_list is not None else None
    cases = discover_dicom_cases(Path(source), modalities, mask, None if mask_root is None else Path(mask_root),
                                 names, log=options.log)

    def loader(src: CaseSource) -> LoadedCase:
        what = f"case {src.name}"
        volumes, ref, info = {}, None, {}
        affines, spacings = {}, {}
        for modality in modalities:
            series = read_dicom_series(src.files[modality], allow_single_slice)
            affines[modality], spacings[modality] = series.affine, series.spacing_mm
            if ref is None:
                ref = series
            elif not options.unregistered:
                diff = (float(np.abs(series.affine - ref.affine).max())
                        if series.volume.shape == ref.volume.shape else math.inf)
                if diff > affine_tol_mm:
                    raise InputDataError(
                        f"{what}: series {series.folder} ({series.volume.shape}) and {ref.folder} "
                        f"({ref.volume.shape}) are not on one voxel grid (geometry differs by up to {diff:.4g} mm); "
                        "register/resample them first (e.g. NCCT onto CTA) and import the result as NIfTI")
            volumes[modality] = series.volume
            info[modality] = {"series_instance_uid": series.series_uid, "n_slices": len(series.files)}
        mask_arr = None
        if src.files.get("mask") is not None:
            mask_arr = load_mask_on_grid(src.files["mask"], ref.volume.shape, ref.affine, options.multiclass,
                                         affine_tol_mm, f"{what} mask")
        sources = {m: str(Path(src.files[m]).resolve()) for m in modalities}
        sources["mask"] = None if src.files.get("mask") is None else str(Path(src.files["mask"]).resolve())
        extra = {"dicom": info}
        if options.unregistered:
            extra.update(raw_geometry(volumes, affines, spacings))
        return LoadedCase(volumes, mask_arr, ref.spacing_mm, ref.orientation, sources, affine=ref.affine,
                          intensity="HU", extra=extra)

    return run_import("dicom", cases, loader, list(modalities), options)
