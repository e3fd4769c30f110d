"""Predictions in the formats viewers open: NIfTI on the source grid and DICOM-SEG.

ClotSeg predicts on the imported grid: the `.npy` layout that
`python -m clotseg.importers` wrote, described by the case's sidecar
`<volume_dir>/<case>.json` (clotseg/importers/common.py build_sidecar):

  importer       "nifti", "dicom" or "slices"
  shape          [H, W, D] of the imported arrays (after any resize)
  affine_ras     4x4 voxel -> RAS mm of the imported arrays (after any resize)
  orientation    axis codes of the imported arrays ("RAS" for NIfTI imports,
                 the DICOM layout such as "PLS" for DICOM imports)
  resized_from   [H, W] before the in-plane downsampling of --resize (absent if none)
  source_files   {modality: NIfTI file or DICOM series folder, "mask": ...}
  modalities     modality names in channel order (the first defines the grid)

`save_nifti_prediction` undoes what the importer did, in reverse order:
  1. the in-plane resize (nearest neighbour: each source pixel takes the
     value of the imported pixel whose footprint holds its centre; the
     affine is rebuilt exactly as common.fit_in_plane changed it);
  2. for NIfTI imports, the reorientation to RAS (nibabel
     as_closest_canonical): the array is permuted/flipped back into the
     source file's axis order and saved with the source file's affine and
     qform/sform codes, so it lies voxel for voxel on the source image.
The source affine and shape come from the sidecar's `source_affine` /
`source_shape` if an importer records them, otherwise from the header of
the source file named in `source_files` (only the header is read). If
neither is available, the prediction is written on the imported (RAS) grid
with `affine_ras`: still aligned in world space in 3D Slicer / ITK-SNAP,
but not stored voxel for voxel like the source; a UserWarning says so.
DICOM imports keep the DICOM array layout, so their NIfTI is written with
`affine_ras` after step 1. Slice-folder imports have no geometry: refused.

`save_dicom_seg` writes a DICOM Segmentation (highdicom) whose frames
reference the source CT images one by one, in the importer's slice order.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np

AFFINE_TOL_MM = 1e-3


class ExportError(ValueError):
    """A prediction cannot be put back on its source grid (the message says why)."""


# ------------------------------------------------------------------ helpers
def read_sidecar(sidecar) -> dict:
    """The sidecar as a dict (accepts the dict itself or the path of `<case>.json`)."""
    if isinstance(sidecar, dict):
        return sidecar
    path = Path(sidecar)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ExportError(f"cannot read the import sidecar {path}: {exc}") from exc


def _check_shape(arr: np.ndarray, side: dict, what: str) -> None:
    shape = side.get("shape")
    if shape is not None and tuple(arr.shape[:3]) != tuple(shape):
        raise ExportError(f"{what} has shape {tuple(arr.shape)} but the case was imported as {tuple(shape)} "
                          f"(sidecar of {side.get('case_id', '?')})")


def undo_resize(arr: np.ndarray, resized_from) -> np.ndarray:
    """Back from the imported in-plane size to `resized_from` = [H, W], nearest neighbour.

    Source pixel i (centre at i + 0.5 in source pixel units) lies in imported
    pixel floor((i + 0.5) * n_imported / n_source), the inverse of the
    importer's area / nearest-exact downsampling. Works on (h, w, ...).
    """
    h, w = (int(v) for v in resized_from)
    nh, nw = arr.shape[:2]
    rows = np.minimum(((np.arange(h) + 0.5) * nh / h).astype(np.int64), nh - 1)
    cols = np.minimum(((np.arange(w) + 0.5) * nw / w).astype(np.int64), nw - 1)
    return np.ascontiguousarray(arr[rows][:, cols])


def imported_affine(side: dict, resized: bool = True) -> np.ndarray | None:
    """The sidecar's voxel -> RAS affine; with `resized=False`, that of the grid before the resize.

    Inverts common.fit_in_plane: columns 0/1 were multiplied by fh = H/nh,
    fw = W/nw and the origin moved by old_col0 (fh - 1)/2 + old_col1 (fw - 1)/2.
    """
    if side.get("affine_ras") is None:
        return None
    aff = np.array(side["affine_ras"], dtype=np.float64)
    if resized or not side.get("resized_from"):
        return aff
    h, w = (int(v) for v in side["resized_from"])
    nh, nw = int(side["shape"][0]), int(side["shape"][1])
    fh, fw = h / nh, w / nw
    old = aff.copy()
    old[:3, 0] = aff[:3, 0] / fh
    old[:3, 1] = aff[:3, 1] / fw
    old[:3, 3] = aff[:3, 3] - old[:3, 0] * (fh - 1) / 2 - old[:3, 1] * (fw - 1) / 2
    return old


def _source_nifti(side: dict, source_path=None):
    """(affine, 3D shape, header or None) of the source NIfTI, or None if unknown."""
    if side.get("source_affine") is not None and side.get("source_shape") is not None:
        return np.array(side["source_affine"], dtype=np.float64), tuple(int(s) for s in side["source_shape"][:3]), None
    if source_path is None:
        files = side.get("source_files") or {}
        mods = side.get("modalities") or [k for k in files if k != "mask"]
        source_path = next((files[m] for m in mods if files.get(m)), None)
    if source_path is None or not Path(source_path).is_file():
        return None
    img = nib.load(str(source_path))
    return np.asarray(img.affine, dtype=np.float64), tuple(int(s) for s in img.shape[:3]), img.header


def to_source_grid(arr: np.ndarray, sidecar, source_path=None) -> tuple[np.ndarray, np.ndarray, object, str]:
    """Move an imported-grid array back onto the source grid.

    Args:
        arr: (H, W, D) array on the imported grid (a mask or probabilities).
        sidecar: the case's import sidecar (dict or path).
        source_path: the source NIfTI, when it has moved since the import
            (default: the first modality's file in the sidecar).
    Returns (data, affine, source header or None, grid) where grid is
    "source" (voxel for voxel on the source image) or "imported" (fallback,
    see the module docstring). Raises ExportError when the case has no
    geometry or the source does not match the sidecar.
    """
    side = read_sidecar(sidecar)
    arr = np.asarray(arr)
    _check_shape(arr, side, "the prediction")
    importer = side.get("importer")
    if side.get("affine_ras") is None:
        raise ExportError(f"case {side.get('case_id', '?')} was imported by the {importer!r} importer without "
                          "a voxel -> world affine (slice folders have none); a NIfTI in world space cannot be made")
    if side.get("resized_from"):
        arr = undo_resize(arr, side["resized_from"])
    affine = imported_affine(side, resized=False)
    if importer != "nifti":
        return arr, affine, None, "source"
    src = _source_nifti(side, source_path)
    if src is None:
        warnings.warn(f"case {side.get('case_id', '?')}: the source NIfTI is not available and the sidecar has no "
                      "source_affine/source_shape; writing the prediction on the imported RAS grid (aligned in "
                      "world space, stored in RAS order)", UserWarning, stacklevel=3)
        return arr, affine, None, "imported"
    src_affine, src_shape, header = src
    ras = nib.orientations.axcodes2ornt("RAS")
    back = nib.orientations.ornt_transform(ras, nib.orientations.io_orientation(src_affine))
    data = nib.orientations.apply_orientation(arr, back)
    got_affine = affine @ nib.orientations.inv_ornt_aff(back, arr.shape[:3])
    if tuple(data.shape[:3]) != src_shape:
        raise ExportError(f"case {side.get('case_id', '?')}: back in source order the prediction is "
                          f"{tuple(data.shape[:3])} but the source image is {src_shape}; the source file changed "
                          "since the import")
    diff = float(np.abs(got_affine - src_affine).max())
    if diff > AFFINE_TOL_MM:
        raise ExportError(f"case {side.get('case_id', '?')}: the imported geometry differs from the source image's "
                          f"affine by {diff:.4g} mm; the source file changed since the import")
    return np.ascontiguousarray(data), src_affine, header, "source"


def save_nifti_prediction(pred: np.ndarray, sidecar, out_path, source_path=None) -> Path:
    """Write a prediction of the imported grid as NIfTI on the source grid; returns the path.

    Args:
        pred: (H, W, D) uint8 labels (saved as uint8) or float probabilities
            (saved as float32), on the imported grid.
        sidecar: the case's import sidecar (dict or path of `<case>.json`).
        out_path: e.g. `Testing/predictions/<case>_pred.nii.gz`.
        source_path: the source NIfTI if it has moved since the import.
    The file has the source image's shape, affine and qform/sform codes
    (NIfTI imports), or the DICOM series' geometry (DICOM imports); see the
    module docstring for the fallback when the source is gone.
    """
    pred = np.asarray(pred)
    data, affine, header, _ = to_source_grid(pred, sidecar, source_path)
    if data.dtype.kind == "f":
        data = data.astype(np.float32)
    elif data.dtype != np.uint8:
        if data.size and (data.min() < 0 or data.max() > 255):
            raise ExportError(f"label values {int(data.min())}..{int(data.max())} do not fit uint8")
        data = data.astype(np.uint8)
    img = nib.Nifti1Image(data, affine)
    if header is not None:
        img.set_qform(header.get_qform(), code=int(header["qform_code"]))
        img.set_sform(header.get_sform(), code=int(header["sform_code"]))
        img.header.set_xyzt_units(*header.get_xyzt_units())
    else:
        img.set_qform(affine, code=1)
        img.set_sform(affine, code=1)
        img.header.set_xyzt_units("mm")
    img.header["descrip"] = b"ClotSeg prediction"
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    ext = ".nii.gz" if out.name.lower().endswith(".gz") else ".nii"
    tmp = out.with_name(f".{out.name}.tmp{ext}")
    try:
        nib.save(img, str(tmp))
        tmp.replace(out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out


# ------------------------------------------------------------------- DICOM
def save_dicom_seg(pred: np.ndarray, source_series_dir, out_path, sidecar=None, segment_labels: dict | None = None,
                   series_number: int = 900, series_description: str = "ClotSeg clot segmentation") -> Path:
    """Write a binary DICOM Segmentation referencing the source CT series; returns the path.

    Args:
        pred: (rows, cols, D) uint8 labels on the imported grid of a DICOM
            import: rows/cols as in the DICOM images, slices in the
            importer's order (ascending along the slice normal).
        source_series_dir: the series folder the case was imported from (the
            sidecar's source_files[<first modality>]).
        out_path: e.g. `Testing/predictions/<case>_seg.dcm`.
        sidecar: the case's import sidecar, needed when the import resized
            the slices (`resized_from`).
        segment_labels: {label value: name}, default {1: "Clot"}; label
            values must be 1..K. Each becomes one segment (SNOMED CT
            "Thrombus" unless named otherwise).
    The series is read with the importer's own reader, so the slice order
    and checks are the import's. Frames without any label are omitted
    (highdicom's default); at least one frame is kept for an empty prediction.
    """
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes

    import clotseg
    from clotseg.importers.dicom import read_dicom_series

    pred = np.asarray(pred)
    if sidecar is not None:
        side = read_sidecar(sidecar)
        _check_shape(pred, side, "the prediction")
        if side.get("resized_from"):
            pred = undo_resize(pred, side["resized_from"])
    series = read_dicom_series(source_series_dir)
    if tuple(pred.shape) != tuple(series.volume.shape):
        raise ExportError(f"the prediction has shape {tuple(pred.shape)} but the DICOM series {source_series_dir} "
                          f"is {tuple(series.volume.shape)} (rows, cols, slices)")
    labels = dict(segment_labels or {1: "Clot"})
    if sorted(labels) != list(range(1, len(labels) + 1)):
        raise ExportError(f"segment label values must be 1..K, got {sorted(labels)}")
    values = set(np.unique(pred).tolist()) - {0}
    if not values <= set(labels):
        raise ExportError(f"the prediction holds label(s) {sorted(values - set(labels))} with no segment name")
    datasets = [pydicom.dcmread(str(f)) for f in series.files]
    pixels = np.moveaxis(pred.astype(np.uint8), 2, 0)          # (frames = slices, rows, cols)
    algorithm = hd.AlgorithmIdentificationSequence(name="ClotSeg", family=codes.cid7162.ArtificialIntelligence,
                                                   version=clotseg.__version__)
    descriptions = []
    for number, name in sorted(labels.items()):
        is_clot = name.lower() in ("clot", "thrombus")
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=number, segment_label=name,
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=codes.SCT.Thrombus if is_clot else codes.SCT.Lesion,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm))
    seg = hd.seg.Segmentation(
        source_images=datasets, pixel_array=pixels, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=int(series_number),
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="ClotSeg",
        manufacturer_model_name="ClotSeg U-Net", software_versions=clotseg.__version__, device_serial_number="0",
        series_description=series_description, omit_empty_frames=bool(values))
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        seg.save_as(str(tmp))
        tmp.replace(out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out
