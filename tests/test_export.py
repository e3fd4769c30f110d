"""Round trips: import a NIfTI / DICOM series with the real importer, export a
prediction (clotseg.evaluation.export) and read it back with nibabel / highdicom."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from clotseg.evaluation.export import ExportError, save_dicom_seg, save_nifti_prediction, to_source_grid
from clotseg.importers.common import ImportOptions
from clotseg.importers.dicom import import_dicom, read_dicom_series
from clotseg.importers.nifti import import_nifti
from clotseg.io import load_npy, read_json

REPO = Path(__file__).resolve().parents[1]
VOL = Path("proj/DL_vol_files/binary")
SEG = Path("proj/DL_seg_files/binary")

# non-canonical storage: x flipped (L), y flipped (P), z superior
LPS_AFFINE = np.array([[-0.5, 0, 0, 10], [0, -0.7, 0, 20], [0, 0, 2.0, -5], [0, 0, 0, 1]])
# axes permuted: axis 0 runs superior, axis 1 right, axis 2 anterior
PERMUTED_AFFINE = np.array([[0, 0.5, 0, 0], [0, 0, 0.7, 0], [3.0, 0, 0, 0], [0, 0, 0, 1]])


def _oblique_affine():
    """LPS-like storage rotated 10 degrees about z: as_closest_canonical still flips/permutes."""
    a = np.radians(10.0)
    rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    aff = np.eye(4)
    aff[:3, :3] = rot @ np.diag([-0.6, -0.6, 2.5])
    aff[:3, 3] = [30.0, -12.0, 7.5]
    return aff


def _opts(tmp_path, **kw) -> ImportOptions:
    return ImportOptions(out_root=tmp_path / "proj", log=lambda *a, **k: None, **kw)


def _clot(shape, seed=0):
    rng = np.random.default_rng(seed)
    seg = (rng.random(shape) > 0.8).astype(np.uint8)
    seg[0, 0, 0], seg[-1, -1, -1] = 1, 0            # asymmetric: a flip would show
    return seg


def _write_case(src: Path, name: str, seg: np.ndarray, affine: np.ndarray):
    src.mkdir(parents=True, exist_ok=True)
    ct = (seg * 60 + 30).astype(np.int16)
    nib.save(nib.Nifti1Image(ct, affine), str(src / f"{name}_ncct.nii.gz"))
    nib.save(nib.Nifti1Image(seg, affine), str(src / f"{name}_seg.nii.gz"))


# --------------------------------------------------------------------- NIfTI
def test_nifti_cli_import_then_export_lands_on_the_source_grid(tmp_path):
    """The real importer command line, then the imported mask as the 'prediction'."""
    seg = _clot((6, 5, 4))
    _write_case(tmp_path / "src", "007", seg, LPS_AFFINE)   # numeric names keep their number
    cmd = [sys.executable, "-m", "clotseg.importers", "nifti", str(tmp_path / "src"), "--modality",
           "NCCT={case}_ncct.nii.gz", "--mask", "{case}_seg.nii.gz", "--out-root", str(tmp_path / "proj")]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    side = read_json(tmp_path / VOL / "CS7.json")
    pred = load_npy(tmp_path / SEG / "CS7_seg_corrected_binary.npy")
    assert side["orientation"] == "RAS" and not np.array_equal(pred, seg)     # the import did reorient
    out = save_nifti_prediction(pred, tmp_path / VOL / "CS7.json", tmp_path / "out" / "CS7_pred.nii.gz")
    back = nib.load(str(out))
    source = nib.load(str(tmp_path / "src" / "007_seg.nii.gz"))
    assert back.shape == source.shape
    assert np.allclose(back.affine, source.affine, atol=1e-6)
    assert back.get_data_dtype() == np.uint8
    assert np.array_equal(np.asarray(back.dataobj), seg)
    assert int(back.header["sform_code"]) == int(source.header["sform_code"])
    assert not list((tmp_path / "out").glob(".*tmp*"))


@pytest.mark.parametrize("affine", [PERMUTED_AFFINE, _oblique_affine(), np.diag([0.5, 0.5, 2.0, 1.0])],
                         ids=["permuted", "oblique", "already-ras"])
def test_nifti_export_undoes_reorientation(tmp_path, affine):
    seg = _clot((5, 6, 4), seed=1)
    _write_case(tmp_path / "src", "a", seg, affine)
    import_nifti(tmp_path / "src", {"NCCT": "{case}_ncct.nii.gz"}, _opts(tmp_path), mask="{case}_seg.nii.gz")
    pred = load_npy(tmp_path / SEG / "CS1_seg_corrected_binary.npy")
    prob = pred.astype(np.float32) * 0.75
    side = read_json(tmp_path / VOL / "CS1.json")
    back = nib.load(str(save_nifti_prediction(pred, side, tmp_path / "CS1_pred.nii.gz")))
    assert back.shape == seg.shape and np.allclose(back.affine, affine, atol=1e-6)
    assert np.array_equal(np.asarray(back.dataobj), seg)
    pback = nib.load(str(save_nifti_prediction(prob, side, tmp_path / "CS1_prob.nii")))
    assert pback.get_data_dtype() == np.float32
    assert np.allclose(np.asarray(pback.dataobj), seg * 0.75)


def test_nifti_export_undoes_resize(tmp_path):
    """64x48 slices imported at --max-size 32 (factor 2): 2x2-aligned blocks come back exactly."""
    blocks = _clot((32, 24, 3), seed=2)
    seg = np.repeat(np.repeat(blocks, 2, axis=0), 2, axis=1)
    _write_case(tmp_path / "src", "r", seg, LPS_AFFINE)
    import_nifti(tmp_path / "src", {"NCCT": "{case}_ncct.nii.gz"}, _opts(tmp_path, max_size=32, resize=True),
                 mask="{case}_seg.nii.gz")
    side = read_json(tmp_path / VOL / "CS1.json")
    assert side["resized_from"] == [64, 48]
    pred = load_npy(tmp_path / SEG / "CS1_seg_corrected_binary.npy")
    assert pred.shape == (32, 24, 3)
    back = nib.load(str(save_nifti_prediction(pred, side, tmp_path / "CS1_pred.nii.gz")))
    assert back.shape == (64, 48, 3) and np.allclose(back.affine, LPS_AFFINE, atol=1e-5)
    assert np.array_equal(np.asarray(back.dataobj), seg)


def test_nifti_export_without_the_source_file(tmp_path):
    seg = _clot((6, 5, 4), seed=3)
    _write_case(tmp_path / "src", "g", seg, LPS_AFFINE)
    import_nifti(tmp_path / "src", {"NCCT": "{case}_ncct.nii.gz"}, _opts(tmp_path), mask="{case}_seg.nii.gz")
    side = read_json(tmp_path / VOL / "CS1.json")
    pred = load_npy(tmp_path / SEG / "CS1_seg_corrected_binary.npy")
    (tmp_path / "src" / "g_ncct.nii.gz").unlink()
    # a sidecar that records the source geometry (what the importer should add) still gives the source grid
    full = dict(side, source_affine=LPS_AFFINE.tolist(), source_shape=list(seg.shape))
    back = nib.load(str(save_nifti_prediction(pred, full, tmp_path / "a.nii.gz")))
    assert np.allclose(back.affine, LPS_AFFINE) and np.array_equal(np.asarray(back.dataobj), seg)
    # without it: a warning, and the RAS grid of the import, still aligned in world space
    with pytest.warns(UserWarning, match="imported RAS grid"):
        out = save_nifti_prediction(pred, side, tmp_path / "b.nii.gz")
    ras = nib.load(str(out))
    assert np.allclose(ras.affine, side["affine_ras"]) and np.array_equal(np.asarray(ras.dataobj), pred)
    src_world = nib.affines.apply_affine(LPS_AFFINE, np.argwhere(seg))
    ras_world = nib.affines.apply_affine(ras.affine, np.argwhere(pred))
    assert np.allclose(np.sort(src_world, axis=0), np.sort(ras_world, axis=0))


def test_nifti_export_refusals(tmp_path):
    seg = _clot((6, 5, 4), seed=4)
    _write_case(tmp_path / "src", "x", seg, LPS_AFFINE)
    import_nifti(tmp_path / "src", {"NCCT": "{case}_ncct.nii.gz"}, _opts(tmp_path), mask="{case}_seg.nii.gz")
    side = read_json(tmp_path / VOL / "CS1.json")
    with pytest.raises(ExportError, match="imported as"):
        save_nifti_prediction(np.zeros((6, 5, 3), np.uint8), side, tmp_path / "p.nii.gz")
    with pytest.raises(ExportError, match="without a voxel"):
        to_source_grid(np.zeros((6, 5, 4)), {"importer": "slices", "shape": [6, 5, 4], "affine_ras": None})
    # the source was replaced by another image since the import
    nib.save(nib.Nifti1Image(np.zeros((6, 5, 4), np.int16), np.diag([0.5, 0.7, 3.0, 1.0])),
             str(tmp_path / "src" / "x_ncct.nii.gz"))
    with pytest.raises(ExportError, match="changed since the import"):
        save_nifti_prediction(np.zeros((6, 5, 4), np.uint8), side, tmp_path / "p.nii.gz")


# --------------------------------------------------------------------- DICOM
def _write_ct(path, pixels, ipp, series_uid, study_uid, frame_uid, instance, spacing=(0.5, 0.6)):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Phantom^Clot", "P001", "19500101", "O"
    ds.StudyInstanceUID, ds.StudyID, ds.StudyDate, ds.StudyTime = study_uid, "1", "20240101", "120000"
    ds.AccessionNumber, ds.ReferringPhysicianName = "A1", ""
    ds.SeriesInstanceUID, ds.SeriesNumber, ds.Modality = series_uid, 3, "CT"
    ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = frame_uid, ""
    ds.Manufacturer = "test"
    ds.InstanceNumber = instance
    ds.ImagePositionPatient = [f"{v:.4f}" for v in ipp]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.PixelSpacing = [f"{v:.4f}" for v in spacing]
    ds.SliceThickness = "2.5"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleSlope, ds.RescaleIntercept = "1", "-1024"
    ds.PixelData = pixels.astype("<i2").tobytes()
    ds.save_as(str(path), enforce_file_format=True)


def _dicom_series(folder: Path, rows=6, cols=5, n=5, dz=2.5, origin=(-10.0, -20.0, 30.0)):
    """Files named and numbered in a shuffled order; position k holds value 1000 + 10 k."""
    folder.mkdir(parents=True)
    series_uid, study_uid, frame_uid = generate_uid(), generate_uid(), generate_uid()
    shuffle = [3, 0, 4, 1, 2, 6, 5, 7][:n]
    for k in range(n):
        pixels = np.full((rows, cols), 1000 + 10 * k, np.int16)
        _write_ct(folder / f"IM{shuffle[k]:04d}.dcm", pixels, [origin[0], origin[1], origin[2] + k * dz],
                  series_uid, study_uid, frame_uid, instance=shuffle.index(k) + 1)
    return series_uid


def _read_seg(path, series_dir):
    import highdicom as hd
    seg = hd.seg.segread(str(path))
    uids = [str(_dcm_header(f).SOPInstanceUID) for f in read_dicom_series(series_dir).files]
    frames = seg.get_pixels_by_source_instance(uids, combine_segments=True, assert_missing_frames_are_empty=True)
    return seg, np.moveaxis(frames, 0, 2)          # (slices, rows, cols) -> (rows, cols, slices)


def _dcm_header(path):
    import pydicom
    return pydicom.dcmread(str(path), stop_before_pixels=True)


def test_dicom_import_then_dicom_seg_round_trip(tmp_path):
    series_uid = _dicom_series(tmp_path / "dicom" / "caseA" / "ct")
    import_dicom(tmp_path / "dicom", {"NCCT": "ct"}, _opts(tmp_path))
    side = read_json(tmp_path / VOL / "CS1.json")
    ct = load_npy(tmp_path / VOL / "CS1_NCCT_Reg_Binary.npy")
    assert ct.shape == (6, 5, 5) and ct[0, 0, :].tolist() == [10 * k - 24 for k in range(5)]   # slice order
    pred = np.zeros(ct.shape, np.uint8)
    pred[1:3, 2:4, 1] = 1
    pred[4, 0, 3] = 1
    series_dir = side["source_files"]["NCCT"]
    out = save_dicom_seg(pred, series_dir, tmp_path / "out" / "CS1_seg.dcm", sidecar=side)
    seg, back = _read_seg(out, series_dir)
    assert np.array_equal(back, pred)
    first_ct = _dcm_header(read_dicom_series(series_dir).files[0])
    assert seg.Modality == "SEG" and seg.StudyInstanceUID == first_ct.StudyInstanceUID
    assert seg.FrameOfReferenceUID == first_ct.FrameOfReferenceUID
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == series_uid
    assert seg.SegmentSequence[0].SegmentLabel == "Clot"
    assert seg.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodeMeaning == "Thrombus"
    # an empty prediction is a valid SEG too
    _, empty = _read_seg(save_dicom_seg(np.zeros_like(pred), series_dir, tmp_path / "empty.dcm"), series_dir)
    assert not empty.any()
    # the NIfTI export of a DICOM case keeps the series' geometry: voxel (r, c, k) sits at its DICOM position
    nii = nib.load(str(save_nifti_prediction(pred, side, tmp_path / "CS1_pred.nii.gz")))
    assert np.array_equal(np.asarray(nii.dataobj), pred)
    r, c, k = 1, 2, 1
    lps = np.array([-10.0 + c * 0.6, -20.0 + r * 0.5, 30.0 + k * 2.5])
    assert np.allclose(nib.affines.apply_affine(nii.affine, [r, c, k]), lps * [-1, -1, 1])
    with pytest.raises(ExportError, match="shape"):
        save_dicom_seg(pred[:, :, :4], series_dir, tmp_path / "bad.dcm")
    with pytest.raises(ExportError, match="no segment name"):
        save_dicom_seg(pred * 2, series_dir, tmp_path / "bad.dcm")


def test_dicom_seg_of_a_resized_import(tmp_path):
    _dicom_series(tmp_path / "dicom" / "caseB" / "ct", rows=8, cols=6)
    import_dicom(tmp_path / "dicom", {"NCCT": "ct"}, _opts(tmp_path, max_size=4, resize=True))
    side = read_json(tmp_path / VOL / "CS1.json")
    assert side["resized_from"] == [8, 6] and side["shape"] == [4, 3, 5]
    small = np.zeros((4, 3, 5), np.uint8)
    small[1, 2, 0] = small[3, 0, 4] = 1
    out = save_dicom_seg(small, side["source_files"]["NCCT"], tmp_path / "s.dcm", sidecar=side)
    _, back = _read_seg(out, side["source_files"]["NCCT"])
    assert np.array_equal(back, np.repeat(np.repeat(small, 2, axis=0), 2, axis=1))
