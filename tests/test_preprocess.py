"""The PREPROCESS stage (issue 16): registration, resampling, Circle-of-Willis
crop, restarts, bad inputs, importers and training.py, on tiny phantoms."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from clotseg.errors import ConfigError, InputDataError, StageError
from clotseg.io import load_npy, read_json
from clotseg.phantom import make_case, make_unregistered, write_cohort
from clotseg.preprocessing.geometry import Grid, transform_error
from clotseg.preprocessing.registration import register
from clotseg.preprocessing.resampling import resample_image, resample_mask, volume_mm3
from clotseg.preprocessing.roi import crop, find_roi, to_original_grid
from clotseg.cohort import discover_cases
from clotseg.settings import Settings
from clotseg.stages import preprocess as stage
from tests.conftest import ROOT, TINY, quiet, tiny_settings

SHAPE = (64, 56, 24)                   # prepared phantom size of the algorithm tests
PREP = {"PREPROCESS": True, "TARGET_SPACING_MM": (0.5, 0.5, 1.0), "ROI_SIZE_MM": (32.0, 32.0, 40.0)}


def _raw_case(seed: int, shape=SHAPE, slices=(0.75, 1.5), with_clot=True):
    rng = np.random.default_rng([seed, 1])
    sp = (round(float(rng.uniform(0.4, 0.6)), 3),) * 2 + (round(float(rng.uniform(*slices)), 3),)
    case = make_case(rng, shape, sp, with_clot)
    return case, make_unregistered(case, np.random.default_rng([seed, 1, 2]))


def _grids(raw):
    return (Grid.from_affine(raw.cta.shape, raw.affines["CTA"]), Grid.from_affine(raw.ncct.shape, raw.affines["NCCT"]))


def _project(root: Path, n=2, seed=3, **overrides) -> Settings:
    s = tiny_settings(root, **{**PREP, **overrides})
    write_cohort(s.volume_path, s.mask_path, n, seed=seed, in_plane=(40, 48), slices=(12, 14), progress=False,
                 unregistered=True)
    return s


def _cohort_bytes(s: Settings) -> dict:
    cohort = s.processed_path / "Preprocessed" / "Cohort"
    return {p.relative_to(cohort).as_posix(): p.read_bytes() for p in sorted(cohort.rglob("*.npy"))}


# --------------------------------------------------------------- the phantom
def test_unregistered_phantom_is_the_prepared_case_moved(tmp_path):
    """Same seed, same case: the raw CTA holds the prepared CTA voxel for voxel
    inside a larger field of view; the NCCT has its own grid; the default
    output is untouched by the option."""
    a, b = tmp_path / "a", tmp_path / "b"
    write_cohort(a / "v", a / "m", 2, seed=5, in_plane=(40, 48), slices=(10, 12), progress=False)
    write_cohort(b / "v", b / "m", 2, seed=5, in_plane=(40, 48), slices=(10, 12), progress=False, unregistered=True)
    for cid in ("CS1", "CS2"):
        cta = load_npy(a / "v" / f"{cid}_CTA_Binary.npy")
        raw_cta = load_npy(b / "v" / f"{cid}_CTA_Binary.npy")
        raw_ncct = load_npy(b / "v" / f"{cid}_NCCT_Reg_Binary.npy")
        side, raw_side = read_json(a / "v" / f"{cid}.json"), read_json(b / "v" / f"{cid}.json")
        box = raw_side["unregistered"]["prepared_box"]
        inner = tuple(slice(lo, hi) for lo, hi in box)
        np.testing.assert_array_equal(raw_cta[inner], cta)
        np.testing.assert_array_equal(load_npy(b / "m" / f"{cid}_seg_corrected_binary.npy")[inner],
                                      load_npy(a / "m" / f"{cid}_seg_corrected_binary.npy"))
        assert raw_cta.shape[0] > cta.shape[0] and raw_cta.shape[2] > cta.shape[2]
        assert raw_ncct.shape != raw_cta.shape
        assert raw_side["modality_spacing_mm"]["NCCT"] != raw_side["modality_spacing_mm"]["CTA"]
        assert 2.0 <= raw_side["unregistered"]["applied_rotation_deg"] <= 10.0
        assert {k: side[k] for k in side if k != "shape"} == {k: raw_side[k] for k in side if k != "shape"}
    # the CLI writes the same files
    from clotseg.phantom import main

    cli = tmp_path / "cli"
    assert main(["--cases", "1", "--seed", "5", "--in-plane", "40", "48", "--slices", "10", "12", "--quiet",
                 "--unregistered", "--volume-dir", str(cli / "v"), "--mask-dir", str(cli / "m")]) == 0
    assert (cli / "v" / "CS1_NCCT_Reg_Binary.npy").read_bytes() == (b / "v" / "CS1_NCCT_Reg_Binary.npy").read_bytes()


# --------------------------------------------------------------- algorithms
@pytest.mark.parametrize("seed", [0, 3])
def test_registration_recovers_the_known_transform(seed):
    _, raw = _raw_case(seed)
    gc, gn = _grids(raw)
    result = register(gc.to_image(raw.cta), gn.to_image(raw.ncct), threads=1)
    head = np.argwhere(raw.cta > -400)
    err = transform_error(result.matrix, np.asarray(raw.truth["ncct_from_cta"]), gc.to_world(head[::7]))
    assert raw.truth["rotation_deg"] > 2.0                       # there was something to recover
    assert err["rotation_deg"] < 1.0 and err["max_mm"] < 1.0, err
    assert not result.flagged and result.skull_dice_after > result.skull_dice_before
    rec = result.as_json()
    assert rec["final_metric"] < 0 and len(rec["matrix"]) == 4 and rec["skull_dice_after"] >= 0.6


@pytest.mark.parametrize("target", [(0.5, 0.5, 1.0), (0.6, 0.6, 1.5), (0.45, 0.45, 0.45)])
def test_resampling_preserves_clot_volume(target):
    for seed in range(6):
        case, _ = _raw_case(seed, slices=(0.75, 2.5))
        g = Grid.from_spacing(case.mask.shape, case.spacing_mm)
        t = g.resampled(target)
        out = resample_mask(case.mask, g, t)
        assert set(np.unique(out)) <= {0, 1}
        v0, v1 = volume_mm3(case.mask, case.spacing_mm), volume_mm3(out, target)
        assert abs(v1 - v0) <= 0.05 * v0, (seed, v0, v1)
    image = resample_image(case.cta, g, t, interpolation="bspline")
    assert image.dtype == np.float32 and image.shape == t.shape and image.min() >= -1024.0


def test_crop_contains_the_whole_clot():
    spacing = (0.5, 0.5, 1.0)
    cropped = 0
    for seed in range(10):
        case, raw = _raw_case(seed, shape=SHAPE, slices=(0.75, 2.5))
        g = Grid.from_affine(raw.cta.shape, raw.affines["CTA"])
        t = g.resampled(spacing)
        cta, mask = resample_image(raw.cta, g, t), resample_mask(raw.mask, g, t)
        extent = np.asarray(case.cta.shape) * np.asarray(case.spacing_mm)
        roi = find_roi(cta, spacing, tuple(1.2 * extent))
        box = roi["box"]
        assert roi["found"] and crop(mask, box).sum() == mask.sum() > 0, (seed, box)
        cropped += all(b - a < n for (a, b), n in zip(box, cta.shape))
    assert cropped >= 8          # the box is smaller than the raw field of view along every axis


# -------------------------------------------------------------------- stage
def test_stage_writes_prepared_cases_that_go_back_to_the_original_grid(tmp_path):
    s = _project(tmp_path, n=1)
    msgs = []
    prepared = stage.run_preprocess(s, discover_cases(s, warn=quiet), msgs.append)
    cases = discover_cases(prepared, warn=quiet)
    assert [c.case_id for c in cases] == ["CS1"]
    for case in cases:
        side = read_json(case.sidecar)
        cta = load_npy(case.volumes["CTA"])
        assert cta.shape == tuple(side["shape"]) and cta.shape[0] <= 64 and cta.shape[1] <= 64
        assert load_npy(case.volumes["NCCT"]).shape == cta.shape == load_npy(case.mask).shape
        assert side["spacing_mm"] == [0.5, 0.5, 1.0] and side["seed"] == 3 and side["raw"]["unregistered"]
        pre = side["preprocess"]
        assert pre["registration"]["NCCT"]["flagged"] is False
        vol = pre["mask_volume_mm3"]
        assert abs(vol["cropped"] - vol["original"]) <= 0.05 * vol["original"]
        # back on the original CTA grid: the raw mask again
        raw_mask = load_npy(s.mask_path / f"{case.case_id}_seg_corrected_binary.npy")
        back = to_original_grid(load_npy(case.mask), pre)
        assert back.shape == raw_mask.shape
        dice = 2 * np.logical_and(back, raw_mask).sum() / (back.sum() + raw_mask.sum())
        assert dice > 0.8, dice
    summary = read_json(s.processed_path / "Preprocessed" / "Cohort" / "summary.json")
    assert set(summary["cases"]) == {"CS1"} and summary["flagged"] == []


def test_rerun_does_nothing_and_an_interrupted_run_resumes(tmp_path, monkeypatch):
    reference = _project(tmp_path / "reference")
    stage.run_preprocess(reference, discover_cases(reference, warn=quiet), quiet)

    s = _project(tmp_path / "interrupted")
    real_roi = stage.step_roi

    def roi_then_kill(raw, *args, **kwargs):
        if raw.case_id == "CS2":
            raise KeyboardInterrupt
        return real_roi(raw, *args, **kwargs)

    monkeypatch.setattr(stage, "step_roi", roi_then_kill)
    with pytest.raises(KeyboardInterrupt):
        stage.run_preprocess(s, discover_cases(s, warn=quiet), quiet)
    monkeypatch.setattr(stage, "step_roi", real_roi)
    msgs = []
    stage.run_preprocess(s, discover_cases(s, warn=quiet), msgs.append)
    done = [m for m in msgs if m.startswith("[preprocess] CS")]
    assert len(done) == 1 and "CS2" in done[0] and done[0].endswith("[2/2: roi]")      # CS1 was finished
    assert _cohort_bytes(s) == _cohort_bytes(reference)                              # as if never interrupted

    cohort = s.processed_path / "Preprocessed" / "Cohort"
    before = {p: p.stat().st_mtime_ns for p in cohort.rglob("*")}
    msgs = []
    stage.run_preprocess(s, discover_cases(s, warn=quiet), msgs.append)
    assert msgs == [f"[preprocess] up to date: {cohort} (2 cases)"]
    assert {p: p.stat().st_mtime_ns for p in cohort.rglob("*")} == before

    # another ROI size redoes the crop only
    msgs = []
    smaller = s.replace(roi_size_mm=(24.0, 24.0, 30.0))
    stage.run_preprocess(smaller, discover_cases(smaller, warn=quiet), msgs.append)
    assert all(m.endswith(": roi]") for m in msgs if m.startswith("[preprocess] CS"))


def test_a_failing_case_names_the_case_and_the_step(tmp_path, monkeypatch):
    s = _project(tmp_path)

    def broken(*_args, **_kwargs):
        raise RuntimeError("Exception thrown in SimpleITK ImageRegistrationMethod_Execute: /src/x.cxx:12:\n"
                           "sitk::ERROR: All samples map outside moving image buffer.")

    monkeypatch.setattr("clotseg.preprocessing.registration.register", broken)
    with pytest.raises(StageError) as exc:
        stage.run_preprocess(s, discover_cases(s, warn=quiet), quiet)
    text = str(exc.value)
    assert "case CS1" in text and "'registration'" in text and "All samples map outside" in text
    assert "\n" not in text


def test_bad_raw_input_is_listed_with_its_file(tmp_path):
    s = _project(tmp_path)
    (s.volume_path / "CS2_NCCT_Reg_Binary.npy").write_bytes(b"\x93NUMPY garbage")
    side = read_json(s.volume_path / "CS1.json")
    del side["affines"]
    side["modality_spacing_mm"]["NCCT"] = [0.5, -1, 1]
    (s.volume_path / "CS1.json").write_text(json.dumps(side))
    with pytest.raises(InputDataError) as exc:
        stage.run_preprocess(s, discover_cases(s, warn=quiet), quiet)
    text = str(exc.value)
    assert "2 input problem(s)" in text and "CS2_NCCT_Reg_Binary.npy" in text
    assert "case CS1" in text and "modality_spacing_mm['NCCT']" in text
    assert not (s.processed_path / "Preprocessed").exists()
    # a stack with gaps between its slices (a 2D slice import) cannot be resampled in mm
    side["modality_spacing_mm"]["NCCT"] = [0.5, 0.5, 1.0]
    side["slice_gaps"] = [3]
    (s.volume_path / "CS1.json").write_text(json.dumps(side))
    with pytest.raises(InputDataError) as exc:
        stage.run_preprocess(s, discover_cases(s, warn=quiet), quiet)
    text = str(exc.value)
    assert "case CS1: sidecar CS1.json records gaps between its slices (slice_gaps [3])" in text
    assert "PREPROCESS = False" in text and not (s.processed_path / "Preprocessed").exists()


def test_a_wrong_registration_is_flagged_in_the_summary(tmp_path):
    s = _project(tmp_path, n=1)
    path = s.volume_path / "CS1_NCCT_Reg_Binary.npy"
    np.save(path, np.ascontiguousarray(np.rot90(load_npy(path), 1, axes=(0, 2))))   # head on its side
    side = read_json(s.volume_path / "CS1.json")
    del side["affines"]                               # spacing only: the NCCT grid is rotated too
    ncct_sp = side["modality_spacing_mm"]["NCCT"]
    side["modality_spacing_mm"]["NCCT"] = [ncct_sp[2], ncct_sp[1], ncct_sp[0]]
    (s.volume_path / "CS1.json").write_text(json.dumps(side))
    msgs = []
    stage.run_preprocess(s, discover_cases(s, warn=quiet), msgs.append)
    summary = read_json(s.processed_path / "Preprocessed" / "Cohort" / "summary.json")
    assert summary["flagged"] == ["CS1"] and summary["cases"]["CS1"]["registration"]["NCCT"]["reasons"]
    assert any("looks wrong: CS1" in m for m in msgs)


def test_settings_are_checked(tmp_path):
    with pytest.raises(ConfigError) as exc:
        Settings.from_dict({**TINY, "PREPROCESS": True, "ROI_SIZE_MM": (120.0, 120.0, 80.0),
                            "TARGET_SPACING_MM": (0.5, 0.5, 0), "IMAGE_INTERPOLATION": "cubic"}, root=tmp_path)
    text = str(exc.value)
    assert "TARGET_SPACING_MM" in text and "IMAGE_INTERPOLATION" in text
    with pytest.raises(ConfigError, match="240x240 pixels, larger than INPUT_SHAPE 64x64"):
        Settings.from_dict({**TINY, "PREPROCESS": True, "ROI_SIZE_MM": (120.0, 120.0, 80.0)}, root=tmp_path)
    with pytest.raises(ConfigError, match="needs a modality named 'CTA'"):
        Settings.from_dict({**TINY, **PREP, "MODALITY_PATTERNS": {"NCCT": "CS<ID>_NCCT.npy"},
                            "WINDOWS_HU": {"NCCT": (0, 80)}, "INPUT_SHAPE": (64, 64, 1)}, root=tmp_path)
    # without PREPROCESS the crop size does not matter
    Settings.from_dict({**TINY, "ROI_SIZE_MM": (120.0, 120.0, 80.0)}, root=tmp_path)


# ----------------------------------------------------------------- importers
def _dicom_series(folder: Path, vol: np.ndarray, affine: np.ndarray):
    """Axial series of `vol` (rows, cols, slices): rows along +y, cols along +x (LPS)."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True)
    uid, sp, origin = generate_uid(), np.diag(affine)[:3], affine[:3, 3]
    raw = np.clip(np.rint(vol + 1024.0), 0, 32767).astype("<i2")
    for k in range(vol.shape[2]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(folder / f"{k}.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = CTImageStorage, meta.MediaStorageSOPInstanceUID, "CT"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.InstanceNumber = "1.2.3", uid, k + 1
        ds.ImagePositionPatient = [f"{v:.4f}" for v in (origin[1], origin[0], origin[2] + k * sp[2])]
        ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
        ds.PixelSpacing = [f"{sp[0]:.6f}", f"{sp[1]:.6f}"]
        ds.Rows, ds.Columns = vol.shape[:2]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = "1", "-1024"
        ds.PixelData = raw[:, :, k].tobytes()
        ds.save_as(str(folder / f"{k}.dcm"), enforce_file_format=True)


@pytest.mark.parametrize("importer", ["nifti", "dicom"])
def test_importers_feed_the_stage(tmp_path, importer):
    from clotseg.importers.common import ImportOptions

    _, raw = _raw_case(1, shape=(56, 48, 16))
    src = tmp_path / "src"
    opts = ImportOptions(out_root=tmp_path / "proj", log=quiet, unregistered=True)
    if importer == "nifti":
        src.mkdir()
        for m, vol in (("CTA", raw.cta), ("NCCT", raw.ncct)):
            nib.save(nib.Nifti1Image(vol, raw.affines[m]), str(src / f"p7_{m.lower()}.nii.gz"))
        nib.save(nib.Nifti1Image(raw.mask, raw.affines["CTA"]), str(src / "p7_seg.nii.gz"))
        from clotseg.importers.nifti import import_nifti

        report = import_nifti(src, {"CTA": "{case}_cta.nii.gz", "NCCT": "{case}_ncct.nii.gz"}, opts,
                              mask="{case}_seg.nii.gz")
    else:
        for m, vol in (("CTA", raw.cta), ("NCCT", raw.ncct)):
            _dicom_series(src / "p7" / m.lower(), vol, raw.affines[m])
        np.save(tmp_path / "p7_seg.npy", raw.mask)
        from clotseg.importers.dicom import import_dicom

        report = import_dicom(src, {"CTA": "cta", "NCCT": "ncct"}, opts, mask="{case}_seg.npy", mask_root=tmp_path)
    s = tiny_settings(tmp_path / "proj", **PREP)
    side = read_json(s.volume_path / f"{report.case_ids['p7']}.json")
    assert side["registered"] is False and set(side["affines"]) == {"CTA", "NCCT"}
    assert side["modality_shapes"]["NCCT"] == list(raw.ncct.shape)
    msgs = []
    prepared = stage.run_preprocess(s, discover_cases(s, warn=quiet), msgs.append)
    reg = read_json(discover_cases(prepared, warn=quiet)[0].sidecar)["preprocess"]["registration"]["NCCT"]
    assert abs(reg["rotation_deg"] - raw.truth["rotation_deg"]) < 1.0, (reg["rotation_deg"], raw.truth)
    assert not reg["flagged"]


# --------------------------------------------------------------- training.py
def test_training_py_runs_the_data_stages_on_a_raw_cohort(tmp_path):
    values = {**TINY, **PREP, "MODEL_TRAINING": False}
    text = (ROOT / "config.py").read_text() + "\n# test overrides\n"
    text += "".join(f"{k} = {v!r}\n" for k, v in values.items())
    (tmp_path / "config.py").write_text(text)
    s = Settings.from_file(tmp_path / "config.py")
    write_cohort(s.volume_path, s.mask_path, 3, seed=2, in_plane=(40, 48), slices=(12, 14), progress=False,
                 unregistered=True)
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    cmd = [sys.executable, str(ROOT / "training.py"), "--config", str(tmp_path / "config.py")]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "[preprocess] 3 case(s): 3 registered" in done.stdout
    assert "MODEL_TRAINING is False" in done.stdout
    split = read_json(s.processed_path / "split.json")
    assert sorted(sum(split["cohorts"].values(), [])) == ["CS1", "CS2", "CS3"]
    images = np.load(s.processed_path / "Sliced" / "Training" / "images.npy", mmap_mode="r")
    assert images.shape[1:] == (64, 64, 2)

    # a bad raw file: one line naming it, exit status 2, no traceback (in-process, as tests/test_fuzz.py)
    import contextlib
    import io
    from unittest import mock

    import training
    from clotseg.cli import run_main

    (s.volume_path / "CS3_NCCT_Reg_Binary.npy").write_bytes(b"not a numpy file")
    err = io.StringIO()
    with mock.patch.object(sys, "argv", ["training.py", "--config", str(tmp_path / "config.py"), "--prepare-only"]), \
            contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()), \
            pytest.raises(SystemExit) as exit_:
        run_main(training.main)
    assert exit_.value.code == 2
    lines = [ln for ln in err.getvalue().splitlines() if ln.strip()]
    assert "CS3_NCCT_Reg_Binary.npy" in err.getvalue() and "Traceback" not in err.getvalue()
    assert lines[0].startswith("ClotSeg stopped: 1 input problem(s) in the raw cohort") and len(lines) == 2
