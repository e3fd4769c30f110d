"""Tests of clotseg.importers on tiny synthetic NIfTI, DICOM and PNG inputs."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import cv2
import nibabel as nib
import numpy as np
import pytest
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from clotseg.errors import InputDataError
from clotseg.importers.common import ImportOptions, assign_case_ids, mask_to_labels
from clotseg.importers.dicom import import_dicom, read_dicom_series
from clotseg.importers.nifti import import_nifti
from clotseg.importers.slices import import_slices
from clotseg.io import load_npy, read_json

REPO = Path(__file__).resolve().parents[1]


def _opts(tmp_path, **kw) -> ImportOptions:
    return ImportOptions(out_root=tmp_path / "proj", log=lambda *a, **k: None, **kw)


def _vol(tmp_path, name):
    return load_npy(tmp_path / "proj" / "DL_vol_files" / "binary" / name)


def _mask(tmp_path, name):
    return load_npy(tmp_path / "proj" / "DL_seg_files" / "binary" / name)


def _sidecar(tmp_path, case_id):
    return read_json(tmp_path / "proj" / "DL_vol_files" / "binary" / f"{case_id}.json")


# --------------------------------------------------------------------- NIfTI
def _write_nifti(path, raw, affine, slope=None, inter=None):
    """Save int16 `raw` with `affine`; then set scl_slope/scl_inter in the header bytes.

    nibabel chooses its own scaling for array images, so the test patches the
    stored header to get exactly the scaling a scanner export would have.
    """
    nib.save(nib.Nifti1Image(raw.astype(np.int16), affine), str(path))
    if slope is not None:
        with open(path, "r+b") as fh:
            hdr = nib.Nifti1Header.from_fileobj(fh)      # the stored header, vox_offset included
            hdr["scl_slope"], hdr["scl_inter"] = slope, inter
            fh.seek(0)
            fh.write(hdr.binaryblock)
        assert nib.load(str(path)).dataobj.slope == slope


# Non-canonical storage layouts: (affine, planted voxel, its index in RAS, spacing in RAS order)
_LPS = (np.array([[-0.5, 0, 0, 10], [0, -0.7, 0, 20], [0, 0, 2.0, -5], [0, 0, 0, 1]]),
        (6, 5, 4), (1, 2, 3), (6 - 1 - 1, 5 - 1 - 2, 3), [0.5, 0.7, 2.0])
# axis 0 runs superior (3 mm), axis 1 right (0.5 mm), axis 2 anterior (0.7 mm)
_PERMUTED = (np.array([[0, 0.5, 0, 0], [0, 0, 0.7, 0], [3.0, 0, 0, 0], [0, 0, 0, 1]]),
             (4, 6, 5), (3, 1, 2), (1, 2, 3), [0.5, 0.7, 3.0])


@pytest.mark.parametrize("layout", [_LPS, _PERMUTED], ids=["lps-flip", "permuted"])
def test_nifti_reorients_keeps_hu_and_spacing(tmp_path, layout):
    affine, shape, planted, expected_idx, spacing = layout
    src = tmp_path / "src"
    src.mkdir()
    raw = np.full(shape, 500, np.int16)          # 2 * 500 - 1024 = -24 HU
    raw[planted] = 1000                          # 976 HU
    seg = np.zeros(shape, np.uint8)
    seg[planted] = 255
    for name in ("patientB", "patientA"):
        _write_nifti(src / f"{name}_cta.nii", raw, affine, slope=2.0, inter=-1024.0)
        nib.save(nib.Nifti1Image(raw, affine), str(src / f"{name}_ncct.nii.gz"))   # unscaled
        nib.save(nib.Nifti1Image(seg, affine), str(src / f"{name}_seg.nii.gz"))
    report = import_nifti(src, {"CTA": "{case}_cta.nii", "NCCT": "{case}_ncct.nii.gz"}, _opts(tmp_path),
                          mask="{case}_seg.nii.gz")
    assert report.case_ids == {"patientA": "CS1", "patientB": "CS2"}
    assert read_json(tmp_path / "proj/DL_vol_files/binary/import_map.json") == {"patientA": "CS1",
                                                                                  "patientB": "CS2"}
    cta = _vol(tmp_path, "CS1_CTA_Binary.npy")
    ncct = _vol(tmp_path, "CS1_NCCT_Reg_Binary.npy")
    mask = _mask(tmp_path, "CS1_seg_corrected_binary.npy")
    assert cta.dtype == np.float32 and mask.dtype == np.uint8
    assert cta.shape == (6, 5, 4)
    assert np.unravel_index(np.argmax(cta), cta.shape) == expected_idx
    assert cta[expected_idx] == 976.0 and cta.min() == -24.0
    assert ncct[expected_idx] == 1000.0 and ncct.min() == 500.0
    assert mask[expected_idx] == 1 and mask.sum() == 1
    side = _sidecar(tmp_path, "CS1")
    assert side["spacing_mm"] == pytest.approx(spacing)
    assert side["orientation"] == "RAS" and side["importer"] == "nifti"
    assert side["source_files"]["CTA"].endswith("patientA_cta.nii")
    assert side["source_files"]["mask"].endswith("patientA_seg.nii.gz")


def test_nifti_same_grid_stored_differently_is_accepted_and_aligned(tmp_path):
    affine = _LPS[0]
    raw = np.zeros((6, 5, 4), np.int16)
    raw[1, 2, 3] = 100
    _write_nifti(tmp_path / "c_cta.nii", raw, affine)
    canon = nib.as_closest_canonical(nib.Nifti1Image(raw, affine))   # same grid, stored RAS
    nib.save(canon, str(tmp_path / "c_ncct.nii"))
    import_nifti(tmp_path, {"CTA": "{case}_cta.nii", "NCCT": "{case}_ncct.nii"}, _opts(tmp_path))
    cta, ncct = _vol(tmp_path, "CS1_CTA_Binary.npy"), _vol(tmp_path, "CS1_NCCT_Reg_Binary.npy")
    assert np.array_equal(cta, ncct)


def test_nifti_affine_mismatch_is_refused_naming_files(tmp_path):
    raw = np.zeros((6, 5, 4), np.int16)
    shifted = np.diag([0.5, 0.5, 2.0, 1.0])
    shifted[0, 3] = 0.5
    nib.save(nib.Nifti1Image(raw, np.diag([0.5, 0.5, 2.0, 1.0])), str(tmp_path / "p1_cta.nii.gz"))
    nib.save(nib.Nifti1Image(raw, shifted), str(tmp_path / "p1_ncct.nii.gz"))
    with pytest.raises(InputDataError, match=r"p1_ncct\.nii\.gz.*p1_cta\.nii\.gz"):
        import_nifti(tmp_path, {"CTA": "{case}_cta.nii.gz", "NCCT": "{case}_ncct.nii.gz"}, _opts(tmp_path))
    # a generous tolerance accepts the same pair
    import_nifti(tmp_path, {"CTA": "{case}_cta.nii.gz", "NCCT": "{case}_ncct.nii.gz"}, _opts(tmp_path),
                 affine_tol_mm=1.0)


def test_nifti_missing_modality_is_listed_before_writing(tmp_path):
    raw = np.zeros((4, 4, 2), np.int16)
    nib.save(nib.Nifti1Image(raw, np.eye(4)), str(tmp_path / "a_cta.nii.gz"))
    nib.save(nib.Nifti1Image(raw, np.eye(4)), str(tmp_path / "a_ncct.nii.gz"))
    nib.save(nib.Nifti1Image(raw, np.eye(4)), str(tmp_path / "b_cta.nii.gz"))
    with pytest.raises(InputDataError, match=r"case b: no NCCT file 'b_ncct.nii.gz'"):
        import_nifti(tmp_path, {"CTA": "{case}_cta.nii.gz", "NCCT": "{case}_ncct.nii.gz"}, _opts(tmp_path))
    assert not (tmp_path / "proj").exists()


def test_nifti_resize_or_refuse_oversize(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    data = np.full((40, 20, 3), 40, np.int16)
    seg = np.zeros((40, 20, 3), np.uint8)
    seg[10:30, 5:15, 1] = 1                       # 200 voxels of 0.25 mm^2
    nib.save(nib.Nifti1Image(data, np.diag([0.5, 0.5, 2.0, 1.0])), str(src / "x.nii.gz"))
    nib.save(nib.Nifti1Image(seg, np.diag([0.5, 0.5, 2.0, 1.0])), str(src / "x_seg.nii.gz"))
    mods = {"NCCT": "{case}.nii.gz"}
    with pytest.raises(InputDataError, match=r"40x20.*--max-size 32.*x\.nii\.gz"):
        import_nifti(src, mods, _opts(tmp_path, max_size=32), mask="{case}_seg.nii.gz")
    import_nifti(src, mods, _opts(tmp_path, max_size=32, resize=True), mask="{case}_seg.nii.gz")
    vol = _vol(tmp_path, "CS1_NCCT_Reg_Binary.npy")
    mask = _mask(tmp_path, "CS1_seg_corrected_binary.npy")
    assert vol.shape == (32, 16, 3) and mask.shape == (32, 16, 3)
    assert np.allclose(vol, 40.0)
    assert set(np.unique(mask).tolist()) == {0, 1}
    # the mask area in mm^2 is kept up to the nearest-neighbour rounding
    assert abs(mask.sum() * 0.625 ** 2 - 200 * 0.25) <= 16 * 0.625 ** 2
    side = _sidecar(tmp_path, "CS1")
    assert side["spacing_mm"] == pytest.approx([0.625, 0.625, 2.0])
    assert side["resized_from"] == [40, 20]


def test_reimport_is_idempotent_and_refuses_changed_files(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    aff = np.diag([1.0, 1.0, 1.0, 1.0])
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 2), np.int16), aff), str(src / "7.nii.gz"))
    mods = {"NCCT": "{case}.nii.gz"}
    first = import_nifti(src, mods, _opts(tmp_path))
    assert first.case_ids == {"7": "CS7"} and first.written == ["CS7"]
    assert import_nifti(src, mods, _opts(tmp_path)).unchanged == ["CS7"]
    nib.save(nib.Nifti1Image(np.ones((4, 4, 2), np.int16), aff), str(src / "7.nii.gz"))
    with pytest.raises(InputDataError, match=r"CS7_NCCT_Reg_Binary\.npy.*--overwrite"):
        import_nifti(src, mods, _opts(tmp_path))
    assert _vol(tmp_path, "CS7_NCCT_Reg_Binary.npy").max() == 0.0      # untouched
    import_nifti(src, mods, _opts(tmp_path, overwrite=True))
    assert _vol(tmp_path, "CS7_NCCT_Reg_Binary.npy").min() == 1.0


# -------------------------------------------------------------- case ids, masks
def test_assign_case_ids():
    assert assign_case_ids(["b", "c10", "a", "c2"]) == {"a": "CS1", "b": "CS2", "c2": "CS3", "c10": "CS4"}
    assert assign_case_ids(["049", "7"]) == {"7": "CS7", "049": "CS49"}
    assert assign_case_ids(["CS12", "CS3"]) == {"CS3": "CS3", "CS12": "CS12"}
    with pytest.raises(InputDataError, match="clash"):
        assign_case_ids(["49", "049"])
    # earlier ids are kept; new names take the lowest free numbers
    assert assign_case_ids(["new", "old"], existing={"old": "CS1"}) == {"new": "CS2", "old": "CS1"}


def test_mask_to_labels():
    assert mask_to_labels(np.array([0.0, 255.0]), False, "m").tolist() == [0, 1]
    assert mask_to_labels(np.array([0, 1], np.int16), False, "m").dtype == np.uint8
    with pytest.raises(InputDataError, match="--multiclass"):
        mask_to_labels(np.array([0, 1, 2]), False, "m.nii")
    assert mask_to_labels(np.array([0, 1, 2]), True, "m").tolist() == [0, 1, 2]
    with pytest.raises(InputDataError, match="non-integer"):
        mask_to_labels(np.array([0.0, 0.5]), True, "m")


# --------------------------------------------------------------------- DICOM
IOP_AXIAL = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]


def _write_dicom(path, pixels, ipp, series_uid, instance, iop=IOP_AXIAL, spacing=(0.5, 0.6)):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    ds.StudyInstanceUID = "1.2.3.4"
    ds.SeriesInstanceUID = series_uid
    ds.InstanceNumber = instance
    ds.ImagePositionPatient = [f"{v:.4f}" for v in ipp]
    ds.ImageOrientationPatient = [f"{v:.6f}" for v in iop]
    ds.PixelSpacing = [f"{v:.4f}" for v in spacing]
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleSlope, ds.RescaleIntercept = "2", "-1024"
    ds.PixelData = pixels.astype("<i2").tobytes()
    ds.save_as(str(path), enforce_file_format=True)


def _series(folder, n=5, rows=6, cols=5, dz=2.5, origin=(-10.0, -20.0, 30.0), drop=None, tilt_deg=0.0,
            other_uid_at=None, z_steps=None, planted=None):
    """Write a series whose slice at position k (ascending z) holds raw 600 + 10 k.

    File names and InstanceNumbers follow a fixed shuffled order, so neither
    gives the anatomical order. Returns the raw stack (rows, cols, n) in z order.
    """
    folder.mkdir(parents=True)
    uid = generate_uid()
    shuffle = [3, 0, 4, 1, 2, 6, 5][:n]
    raw = np.empty((rows, cols, n), np.int16)
    zs = np.cumsum([0.0] + (z_steps or [dz] * (n - 1)))
    for k in range(n):
        raw[:, :, k] = 600 + 10 * k
    if planted is not None:
        raw[planted] = 1500
    for k in range(n):
        if k == drop:
            continue
        ipp = [origin[0], origin[1] + zs[k] * math.tan(math.radians(tilt_deg)), origin[2] + zs[k]]
        name = f"IM{shuffle[k]:04d}.dcm"
        series_uid = generate_uid() if k == other_uid_at else uid
        _write_dicom(folder / name, raw[:, :, k], ipp, series_uid, instance=shuffle.index(k) + 1)
    (folder / "README.txt").write_text("not a DICOM file")
    return raw


def test_dicom_series_sorted_by_position_in_hu(tmp_path):
    raw = _series(tmp_path / "s", planted=(1, 3, 2))
    series = read_dicom_series(tmp_path / "s")
    assert series.volume.dtype == np.float32 and series.volume.shape == (6, 5, 5)
    assert np.array_equal(series.volume, 2.0 * raw.astype(np.float32) - 1024.0)
    assert series.volume[0, 0, :].tolist() == [2 * (600 + 10 * k) - 1024 for k in range(5)]
    assert series.spacing_mm == pytest.approx([0.5, 0.6, 2.5])
    assert series.orientation == "PLS"       # rows run posterior, cols left, slices superior
    assert len(series.files) == 5


def test_dicom_case_with_nifti_mask_and_series_list(tmp_path):
    src = tmp_path / "dicom"
    for case in ("caseA", "caseB"):
        _series(src / case / "cta", planted=(1, 3, 2))
        _series(src / case / "ncct")
    # mask drawn on the RAS-stored NIfTI of the same series: voxel (r, c, k) = (1, 3, 2)
    rows, cols, dr, dc, dz, (x0, y0, z0) = 6, 5, 0.5, 0.6, 2.5, (-10.0, -20.0, 30.0)
    seg = np.zeros((cols, rows, 5), np.uint8)
    seg[cols - 1 - 3, rows - 1 - 1, 2] = 1
    aff = np.array([[dc, 0, 0, -(x0 + (cols - 1) * dc)], [0, dr, 0, -(y0 + (rows - 1) * dr)],
                    [0, 0, dz, z0], [0, 0, 0, 1]])
    (tmp_path / "labels").mkdir()
    nib.save(nib.Nifti1Image(seg, aff), str(tmp_path / "labels" / "caseB.nii.gz"))
    (tmp_path / "list.txt").write_text("# selected\ncaseB\n")
    report = import_dicom(src, {"CTA": "cta", "NCCT": "ncct"}, _opts(tmp_path), mask="{case}.nii.gz",
                          mask_root=tmp_path / "labels", series_list=tmp_path / "list.txt")
    assert report.case_ids == {"caseB": "CS1"}
    cta = _vol(tmp_path, "CS1_CTA_Binary.npy")
    mask = _mask(tmp_path, "CS1_seg_corrected_binary.npy")
    assert cta[1, 3, 2] == 2 * 1500 - 1024
    assert mask[1, 3, 2] == 1 and mask.sum() == 1
    side = _sidecar(tmp_path, "CS1")
    assert side["importer"] == "dicom" and side["orientation"] == "PLS"
    assert side["spacing_mm"] == pytest.approx([0.5, 0.6, 2.5])
    assert side["source_files"]["CTA"].endswith("caseB/cta")


@pytest.mark.parametrize("kwargs, message", [
    (dict(drop=2), r"misses slice\(s\)"),
    (dict(tilt_deg=15.0), "gantry tilt"),
    (dict(other_uid_at=3), "mixes 2 series"),
    (dict(z_steps=[2.5, 2.5, 3.0, 2.5]), "non-uniform slice spacing"),
], ids=["missing", "tilt", "mixed", "non-uniform"])
def test_dicom_bad_series_refused_naming_folder(tmp_path, kwargs, message):
    _series(tmp_path / "bad_series", **kwargs)
    with pytest.raises(InputDataError, match=message) as info:
        read_dicom_series(tmp_path / "bad_series")
    assert "bad_series" in str(info.value)


# -------------------------------------------------------------------- slices
def _png(path, img):
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), img)


def test_slices_grouped_into_cases_in_slice_order(tmp_path):
    img_dir, mask_dir = tmp_path / "images", tmp_path / "masks"
    for case, slices in (("3", (1, 2, 10)), ("12", (1, 2))):
        for s in slices:
            _png(img_dir / f"{case}_{s}.png", np.full((8, 6), int(case) * 10 + s, np.uint8))
            m = np.zeros((8, 6), np.uint8)
            m[2, 2], m[4, 4] = 200, 100            # only the 200 is above the threshold
            _png(mask_dir / f"{case}_{s}.png", m)
    colour = np.zeros((8, 6, 3), np.uint8)
    colour[..., 2] = 255                           # pure red in BGR -> grey 0.299 * 255
    _png(img_dir / "3_2.png", colour)
    report = import_slices(img_dir, _opts(tmp_path), masks=mask_dir, mask_threshold=127)
    assert report.case_ids == {"3": "CS3", "12": "CS12"}
    vol = _vol(tmp_path, "CS3_NCCT_Reg_Binary.npy")
    assert vol.shape == (8, 6, 3) and vol.dtype == np.float32
    assert vol[0, 0, :].tolist() == [31.0, 76.0, 40.0]   # slices 1, 2, 10 (not 1, 10, 2)
    assert _vol(tmp_path, "CS12_NCCT_Reg_Binary.npy").shape == (8, 6, 2)
    mask = _mask(tmp_path, "CS3_seg_corrected_binary.npy")
    assert mask.dtype == np.uint8 and mask.sum() == 3 and mask[2, 2, :].tolist() == [1, 1, 1]
    side = _sidecar(tmp_path, "CS3")
    assert side["spacing_mm"] is None and side["importer"] == "slices" and side["intensity"] == "raw"
    assert [Path(p).name for p in side["source_files"]["NCCT"]] == ["3_1.png", "3_2.png", "3_10.png"]


def test_slices_rgb_map_masks(tmp_path):
    img_dir, mask_dir = tmp_path / "images", tmp_path / "masks"
    _png(img_dir / "a.png", np.zeros((6, 6), np.uint8))
    m = np.zeros((6, 6, 3), np.uint8)
    m[1, 1] = (0, 0, 255)                          # BGR red -> class 1
    m[2, 2] = (0, 255, 0)                          # green -> class 2
    _png(mask_dir / "a.png", m)
    rgb_map = '{"(255,0,0)": 1, "(0,255,0)": 2}'
    import_slices(img_dir, _opts(tmp_path), masks=mask_dir, regex=r"(?P<case>[^/]+)\.png", rgb_map=rgb_map,
                  modality_name="XRAY")
    mask = _mask(tmp_path, "CS1_seg_corrected_binary.npy")
    assert mask[..., 0][1, 1] == 1 and mask[..., 0][2, 2] == 2 and mask.sum() == 3
    assert _vol(tmp_path, "CS1_XRAY.npy").shape == (6, 6, 1)
    m[3, 3] = (255, 0, 0)                          # blue is not in the map
    _png(mask_dir / "a.png", m)
    with pytest.raises(InputDataError, match=r"a\.png has colour\(s\) not in --rgb-map: \(0, 0, 255\)"):
        import_slices(img_dir, _opts(tmp_path, overwrite=True), masks=mask_dir, regex=r"(?P<case>[^/]+)\.png",
                      rgb_map=rgb_map, modality_name="XRAY")


def test_slices_missing_masks_refused_or_filled(tmp_path):
    folder = tmp_path / "Patients_CT"
    for s in (1, 2, 3):
        _png(folder / "049" / "brain" / f"{s}.jpg", np.full((8, 8), 100, np.uint8))
    m = np.zeros((8, 8), np.uint8)
    m[3:5, 3:5] = 255
    _png(folder / "049" / "brain" / "2_HGE_Seg.jpg", m)
    kw = dict(masks=folder, regex=r"(?P<case>\d+)/brain/(?P<slice>\d+)\.jpg",
              mask_regex=r"(?P<case>\d+)/brain/(?P<slice>\d+)_HGE_Seg\.jpg")
    with pytest.raises(InputDataError, match="--fill-missing-masks"):
        import_slices(folder, _opts(tmp_path), **kw)
    import_slices(folder, _opts(tmp_path), fill_missing_masks=True, **kw)
    mask = _mask(tmp_path, "CS49_seg_corrected_binary.npy")
    assert mask.shape == (8, 8, 3)
    assert mask[..., 0].sum() == 0 and mask[..., 2].sum() == 0 and mask[3:5, 3:5, 1].all()


def test_slices_oversize_refused_or_resized(tmp_path):
    img = np.zeros((40, 20), np.uint8)
    img[:, 10:] = 200
    _png(tmp_path / "im" / "5_1.png", img)
    m = np.zeros((40, 20), np.uint8)
    m[:, 10:] = 1
    _png(tmp_path / "mk" / "5_1.png", m)
    with pytest.raises(InputDataError, match=r"--max-size 32.*5_1\.png"):
        import_slices(tmp_path / "im", _opts(tmp_path, max_size=32), masks=tmp_path / "mk")
    import_slices(tmp_path / "im", _opts(tmp_path, max_size=32, resize=True), masks=tmp_path / "mk")
    vol = _vol(tmp_path, "CS5_NCCT_Reg_Binary.npy")
    mask = _mask(tmp_path, "CS5_seg_corrected_binary.npy")
    assert vol.shape == (32, 16, 1) and mask.shape == (32, 16, 1)
    assert np.all(vol[:, :8, 0] == 0) and np.all(vol[:, 8:, 0] == 200)
    assert np.array_equal(mask[..., 0] == 1, vol[..., 0] == 200)


# ----------------------------------------------------------------------- CLI
def test_cli_slices_import_and_error_exit(tmp_path):
    _png(tmp_path / "im" / "1_1.png", np.full((40, 8), 9, np.uint8))
    _png(tmp_path / "im" / "1_2.png", np.full((40, 8), 9, np.uint8))
    cmd = [sys.executable, "-m", "clotseg.importers", "slices", str(tmp_path / "im"), "--out-root",
           str(tmp_path / "proj"), "--modality-name", "XRAY"]
    ok = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert "1 case(s) written" in ok.stdout and "MODALITY_PATTERNS" in ok.stdout
    assert _vol(tmp_path, "CS1_XRAY.npy").shape == (40, 8, 2)
    assert read_json(tmp_path / "proj/DL_vol_files/binary/import_map.json") == {"1": "CS1"}
    bad = subprocess.run(cmd + ["--max-size", "32", "--overwrite"], cwd=REPO, capture_output=True, text=True,
                         timeout=60)
    assert bad.returncode == 2
    assert bad.stderr.startswith("error:") and "1_1.png" in bad.stderr and "Traceback" not in bad.stderr
    assert json.loads(json.dumps(_sidecar(tmp_path, "CS1")))["shape"] == [40, 8, 2]
