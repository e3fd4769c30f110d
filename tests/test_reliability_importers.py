"""Importers, reliability round two (issue 13): no import_map.json for cases
that were not written, empty case names reported, one-file DICOM series
refused unless asked for, the slice importer's unmatched files and summary."""

from __future__ import annotations

import cv2
import nibabel as nib
import numpy as np
import pytest
from pydicom.uid import generate_uid

from clotseg.errors import InputDataError
from clotseg.importers.__main__ import main as importer_main
from clotseg.importers.dicom import import_dicom, read_dicom_series
from clotseg.importers.nifti import import_nifti
from clotseg.importers.slices import import_slices
from clotseg.io import read_json
from tests.test_importers import _opts, _write_dicom

AFF = np.eye(4)


def _nii(path, value=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.full((4, 4, 2), value, np.int16), AFF), str(path))


def _png(path, value=9, shape=(8, 6)):
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.full(shape, value, np.uint8))


def test_import_map_is_not_written_when_the_first_case_fails(tmp_path):
    src = tmp_path / "src"
    _nii(src / "a_ct.nii.gz")
    _nii(src / "b_ct.nii.gz")
    (src / "a_ct.nii.gz").write_bytes(b"not a nifti file")          # first case (natural order) is broken
    with pytest.raises(InputDataError, match=r"a_ct\.nii\.gz"):
        import_nifti(src, {"NCCT": "{case}_ct.nii.gz"}, _opts(tmp_path))
    vol_dir = tmp_path / "proj/DL_vol_files/binary"
    assert not (vol_dir / "import_map.json").exists()
    # first case fine, second broken: the map names only the case that was written
    _nii(src / "a_ct.nii.gz")
    (src / "b_ct.nii.gz").write_bytes(b"broken")
    with pytest.raises(InputDataError, match=r"b_ct\.nii\.gz"):
        import_nifti(src, {"NCCT": "{case}_ct.nii.gz"}, _opts(tmp_path))
    assert read_json(vol_dir / "import_map.json") == {"a": "CS1"}
    assert sorted(p.name for p in vol_dir.iterdir()) == ["CS1.json", "CS1_NCCT_Reg_Binary.npy", "import_map.json"]


def test_nifti_file_with_an_empty_case_name_is_reported(tmp_path):
    src = tmp_path / "src"
    _nii(src / "p1_ct.nii.gz")
    _nii(src / "_ct.nii.gz")
    with pytest.raises(InputDataError, match=r"_ct\.nii\.gz gives an empty case name with pattern '\{case\}_ct"):
        import_nifti(src, {"NCCT": "{case}_ct.nii.gz"}, _opts(tmp_path))
    assert not (tmp_path / "proj").exists()


def test_slice_file_with_an_empty_case_name_is_reported(tmp_path):
    _png(tmp_path / "im" / "p_1.png")
    _png(tmp_path / "im" / "_2.png")
    with pytest.raises(InputDataError, match=r"1 file\(s\) in .*im give an empty case name .*_2\.png"):
        import_slices(tmp_path / "im", _opts(tmp_path), regex=r"(?P<case>[a-z]*)_(?P<slice>\d+)")
    assert not (tmp_path / "proj").exists()


def test_one_file_dicom_series_is_refused_unless_allowed(tmp_path):
    folder = tmp_path / "dicom" / "case1" / "ct"
    folder.mkdir(parents=True)
    _write_dicom(folder / "IM0001.dcm", np.full((6, 5), 600, np.int16), [-10.0, -20.0, 30.0], generate_uid(), 1)
    with pytest.raises(InputDataError, match=r"ct holds a single DICOM image .*--allow-single-slice"):
        read_dicom_series(tmp_path / "dicom" / "case1" / "ct")
    with pytest.raises(InputDataError, match="single DICOM image"):
        import_dicom(tmp_path / "dicom", {"NCCT": "ct"}, _opts(tmp_path))
    assert not (tmp_path / "proj/DL_vol_files/binary/import_map.json").exists()
    report = import_dicom(tmp_path / "dicom", {"NCCT": "ct"}, _opts(tmp_path), allow_single_slice=True)
    assert report.written == ["CS1"] and report.shapes["CS1"] == (6, 5, 1)
    assert read_dicom_series(tmp_path / "dicom" / "case1" / "ct", allow_single_slice=True).volume.shape == (6, 5, 1)


def test_slices_cli_refuses_unmatched_files_unless_told_and_lists_cases_first(tmp_path, capsys):
    for name in ("1_1.png", "1_2.png", "2_1.png", "scan-3.png"):
        _png(tmp_path / "im" / name)
    args = ["slices", str(tmp_path / "im"), "--out-root", str(tmp_path / "proj")]
    assert importer_main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: 1 file(s) in") and "scan-3.png" in err and "--ignore-unmatched" in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "proj").exists()

    assert importer_main(args + ["--ignore-unmatched"]) == 0
    out = capsys.readouterr().out
    assert "found 2 case(s): 1 (2 slices, unlabelled), 2 (1 slice, unlabelled)" in out
    assert out.index("found 2 case(s)") < out.index("[1/2] 1 -> CS1: written")
    assert "scan-3.png" in out and "ignored" in out


def test_slices_unmatched_files_in_a_separate_mask_folder_are_refused(tmp_path):
    _png(tmp_path / "im" / "1_1.png")
    _png(tmp_path / "mk" / "1_1.png", value=0)
    _png(tmp_path / "mk" / "mask_of_1.png", value=0)
    with pytest.raises(InputDataError, match=r"in .*mk do not match --regex .*mask_of_1\.png"):
        import_slices(tmp_path / "im", _opts(tmp_path), masks=tmp_path / "mk")
    report = import_slices(tmp_path / "im", _opts(tmp_path), masks=tmp_path / "mk", ignore_unmatched=True)
    assert report.written == ["CS1"]
