"""Issue 14 end to end: a tiny single-channel NIfTI cohort imported with the
real importer, trained, tested; the prediction reloaded with nibabel on the
source grid; biomarkers, uncertainty and report.html from the three testing steps."""

from __future__ import annotations

import csv
import json
import re

import nibabel as nib
import numpy as np
import pytest

from clotseg.evaluate import main as evaluate_main
from clotseg.importers import ImportOptions
from clotseg.importers.nifti import import_nifti
from clotseg.io import read_json
from clotseg.pipeline import prepare_data
from clotseg.stages.evaluate import run_evaluation
from clotseg.stages.train import run_training
from tests.conftest import quiet, tiny_settings

pytestmark = pytest.mark.slow

# LPS-like storage with anisotropic voxels: the importer reorients to RAS
SOURCE_AFFINE = np.array([[-0.6, 0, 0, 12.0], [0, -0.6, 0, 30.0], [0, 0, 2.5, -4.0], [0, 0, 0, 1]])
SHAPE = (40, 36, 6)


def _write_source(folder, n=6, clot_free=(6,)):
    folder.mkdir(parents=True)
    for i in range(1, n + 1):
        rng = np.random.default_rng(i)
        ct = (35 + rng.normal(0, 2, SHAPE)).astype(np.int16)
        seg = np.zeros(SHAPE, np.uint8)
        col = 6 + 3 * i
        ct[:, col:col + 4, :] = 42                       # a vessel along the rows
        if i not in clot_free:
            seg[10 + i:18 + i, col:col + 4, 2:4] = 1    # a hyperdense clot on two slices
            ct[seg > 0] = 65
        nib.save(nib.Nifti1Image(ct, SOURCE_AFFINE), str(folder / f"p{i}_ncct.nii.gz"))
        nib.save(nib.Nifti1Image(seg, SOURCE_AFFINE), str(folder / f"p{i}_seg.nii.gz"))


@pytest.fixture(scope="module")
def tested(tmp_path_factory):
    root = tmp_path_factory.mktemp("clinical")
    s = tiny_settings(root, modality_patterns={"NCCT": "CS<ID>_NCCT.npy"}, windows_hu={"NCCT": (0.0, 80.0)},
                      input_shape=(64, 64, 1), epochs=1, target_sample_size_aug_train=32,
                      target_sample_size_aug_val=8)
    _write_source(root / "src")
    report = import_nifti(root / "src", {"NCCT": "{case}_ncct.nii.gz"}, ImportOptions.from_settings(s, log=quiet),
                          mask="{case}_seg.nii.gz")
    assert len(report.case_ids) == 6
    prepare_data(s, log=quiet, demo_if_empty=False)
    run = run_training(s, log=quiet)
    summary = run_evaluation(s, log=quiet)
    return s, run, summary


def _rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_nifti_prediction_reloads_on_the_source_grid(tested):
    s, run, _ = tested
    out = run / "Testing"
    test_ids = read_json(run / "Relevant_Files" / "split.json")["cohorts"]["Testing"]
    assert test_ids
    for cid in test_ids:
        side = read_json(s.volume_path / f"{cid}.json")
        source = nib.load(side["source_files"]["NCCT"])
        back = nib.load(str(out / "predictions" / f"{cid}_pred.nii.gz"))
        assert back.shape == source.shape == SHAPE
        assert np.allclose(back.affine, SOURCE_AFFINE, atol=1e-5)
        assert back.get_data_dtype() == np.uint8
        pred = np.load(out / "predictions" / f"{cid}_pred.npy")
        # the same voxels, put back in the source's axis order (the import flipped rows and columns)
        assert np.array_equal(np.asarray(back.dataobj), pred[::-1, ::-1, :])


def test_uncertainty_biomarkers_and_agreement(tested):
    s, run, summary = tested
    out = run / "Testing"
    rows = _rows(out / "metrics.csv")
    for r in rows:
        unc = np.load(out / "predictions" / f"{r['case_id']}_unc.npy")
        pred = np.load(out / "predictions" / f"{r['case_id']}_pred.npy")
        assert unc.dtype == np.float16 and unc.shape == pred.shape
        assert 0.0 <= float(unc.min()) and float(unc.max()) <= 0.5
        score = read_json(out / "predictions" / f"{r['case_id']}_unc.json")
        assert score["members"] == ["plain", "horizontal flip", "vertical flip"]
        assert float(r["uncertainty_score"]) == pytest.approx(score["uncertainty_score"])
        # spacing from the import sidecar: mm; single channel NCCT: NCCT HU, no perviousness
        assert r["true_volume_mm3"] != "" and r["distance_unit"] == "mm"
        if r["case_type"] != "true_negative" and int(r["true_voxels"]):
            assert float(r["true_ncct_mean_hu"]) == pytest.approx(65.0, abs=0.5)
            assert float(r["true_length_mm"]) > 0
    assert not any(k.startswith(("pred_cta", "true_cta", "pred_pervious")) for k in rows[0])
    assert "volume_mm3" in summary["biomarker_agreement"]
    assert summary["uncertainty_ranking"]["n"] == len(rows)
    assert summary["meta"]["modalities"] == ["NCCT"]
    assert summary["meta"]["prediction_from"] in ("plain member", "mean of plain and flip members")


def test_report_and_figures_name_the_runs_modalities(tested):
    s, run, _ = tested
    out = run / "Testing"
    rows = _rows(out / "metrics.csv")
    for name in ("report.html", "montage.png", "bland_altman_volume.png", "bland_altman_length.png",
                 "uncertainty_vs_dice.png"):
        assert (out / name).is_file(), name
    html = (out / "report.html").read_text(encoding="utf-8")
    text = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", html)      # embedded PNGs are not text
    assert "modalities NCCT" in text and "CTA" not in text
    for r in rows:
        assert f'href="predictions/{r["case_id"]}_pred.nii.gz"' in html
        assert (out / "overlays" / f"{r['case_id']}.png").is_file()
    assert 'href="metrics.csv"' in html and 'href="summary.json"' in html
    from clotseg.evaluation.html_report import find_chromium, render_with_chromium

    if find_chromium() is None:
        pytest.skip("no Chromium binary found (apt-get install chromium, or set CHROMIUM_BIN); "
                    "report.html was checked as text only")
    dom, errors = render_with_chromium(out / "report.html")
    assert errors == [] and 'data-report-ready="1"' in dom
    assert all(r["case_id"] in dom for r in rows)


def test_scoring_cli_reproduces_the_testing_scores(tested, tmp_path):
    """Step 2 alone on testing's predictions gives the same metrics.csv."""
    s, run, _ = tested
    out = run / "Testing"
    config = tmp_path / "config.py"
    config.write_text("MODALITY_PATTERNS = {'NCCT': 'CS<ID>_NCCT.npy'}\nWINDOWS_HU = {'NCCT': (0.0, 80.0)}\n"
                      "INPUT_SHAPE = (64, 64, 1)\nBOOTSTRAP_RESAMPLES = 200\n")
    assert evaluate_main(["--pred", str(out / "predictions"), "--truth", str(s.mask_path), "--volumes",
                          str(s.volume_path), "--out", str(tmp_path / "scores"), "--config", str(config),
                          "--no-report"]) == 0
    test_ids = read_json(run / "Relevant_Files" / "split.json")["cohorts"]["Testing"]
    ours = _rows(tmp_path / "scores" / "metrics.csv")
    assert [r["case_id"] for r in ours] == sorted(test_ids, key=lambda c: int(c[2:]))
    by_id = {r["case_id"]: r for r in _rows(out / "metrics.csv")}
    for r in ours:
        assert r == by_id[r["case_id"]]
    again = json.loads((tmp_path / "scores" / "summary.json").read_text())
    assert again["biomarker_agreement"] == json.loads((out / "summary.json").read_text())["biomarker_agreement"]


def test_predict_step_exports_dicom_seg_and_survives_a_moved_series(tmp_path):
    """The predict step's export of a DICOM-imported case: NIfTI + DICOM-SEG read
    back with highdicom; a series that moved away is a logged problem, not a crash."""
    import shutil

    from clotseg.cohort import Case
    from clotseg.importers.dicom import import_dicom
    from clotseg.stages.evaluate import _export
    from tests.test_export import _dicom_series, _read_seg

    _dicom_series(tmp_path / "dicom" / "caseA" / "ct")
    opts = ImportOptions(out_root=tmp_path / "proj", log=quiet)
    import_dicom(tmp_path / "dicom", {"NCCT": "ct"}, opts)
    vol = opts.volume_path
    case = Case("CS1", {"NCCT": vol / "CS1_NCCT_Reg_Binary.npy"}, None, vol / "CS1.json")
    pred = np.zeros((6, 5, 5), np.uint8)
    pred[1:3, 2:4, 1] = 1
    out = tmp_path / "predictions"
    out.mkdir()
    logged = []
    written, problems = _export(case, pred, pred * 0.8, out, 1, "clot", logged.append)
    assert written == ["CS1_pred.nii.gz", "CS1_prob.nii.gz", "CS1_seg.dcm"] and problems == []
    seg, back = _read_seg(out / "CS1_seg.dcm", read_json(vol / "CS1.json")["source_files"]["NCCT"])
    assert np.array_equal(back, pred) and seg.SegmentSequence[0].SegmentLabel == "Clot"
    assert np.array_equal(np.asarray(nib.load(str(out / "CS1_pred.nii.gz")).dataobj), pred)

    shutil.rmtree(tmp_path / "dicom")
    again = tmp_path / "again"
    again.mkdir()
    written, problems = _export(case, pred, None, again, 1, "clot", logged.append)
    assert written == ["CS1_pred.nii.gz"] and len(problems) == 1 and "CS1_seg.dcm not written" in problems[0]
    assert any(line.startswith("warning: case CS1") for line in logged)
