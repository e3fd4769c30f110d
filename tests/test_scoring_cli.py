"""The score and render steps on their own: `python -m clotseg.evaluate` on
hand-made prediction folders (no model, no Keras)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from clotseg.errors import InputDataError
from clotseg.evaluate import main as evaluate_main
from clotseg.evaluation.scoring import match_cases, score_folder
from tests.conftest import tiny_settings, write_case

REPO = Path(__file__).resolve().parents[1]
SPACING = [0.5, 0.5, 2.0]


def _rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture
def folders(tmp_path):
    """4 labelled cases (CS4 clot-free) in the ClotSeg layout, predictions in
    another folder: CS1 exact, CS2 shifted by one row, CS3 missed, CS4 a false alarm."""
    s = tiny_settings(tmp_path)
    truths = {}
    for cid in range(1, 5):
        _, _, mask = write_case(s, cid, clot=cid != 4)
        truths[f"CS{cid}"] = mask
    (s.volume_path / "CS1.json").write_text(json.dumps({"spacing_mm": SPACING}))
    pred_dir = tmp_path / "other_tool"
    pred_dir.mkdir()
    preds = {"CS1": truths["CS1"], "CS2": np.roll(truths["CS2"], 1, axis=0),
             "CS3": np.zeros_like(truths["CS3"]), "CS4": truths["CS1"]}
    for cid, p in preds.items():
        np.save(pred_dir / f"{cid}_pred.npy", (p * 255).astype(np.uint8) if cid == "CS2" else p.astype(bool))
    scores = {"CS1": 0.01, "CS2": 0.1, "CS3": 0.3, "CS4": 0.2}
    for cid, score in scores.items():
        (pred_dir / f"{cid}_unc.json").write_text(json.dumps({"uncertainty_score": score,
                                                             "member_disagreement": score,
                                                             "uncertainty_method": "std"}))
        np.save(pred_dir / f"{cid}_unc.npy", np.full(truths[cid].shape, score, np.float16))
    return s, pred_dir, truths


def test_cli_scores_biomarkers_uncertainty_and_report(folders, tmp_path, capsys):
    s, pred_dir, truths = folders
    out = tmp_path / "scores"
    assert evaluate_main(["--pred", str(pred_dir), "--truth", str(s.mask_path), "--volumes", str(s.volume_path),
                          "--out", str(out), "--config", str(tmp_path / "no_config.py"), "--resamples", "200"]) == 0
    assert "scored 4 case(s)" in capsys.readouterr().out
    rows = {r["case_id"]: r for r in _rows(out / "metrics.csv")}
    assert list(rows) == ["CS1", "CS2", "CS3", "CS4"]
    assert float(rows["CS1"]["dice"]) == 1.0 and rows["CS3"]["case_type"] == "missed"
    assert rows["CS4"]["case_type"] == "false_alarm" and 0 < float(rows["CS2"]["dice"]) < 1
    # CS1 has a sidecar spacing: mm; the others are in voxels, and say so
    clot_voxels = int(truths["CS1"].sum())
    assert float(rows["CS1"]["true_volume_mm3"]) == pytest.approx(clot_voxels * 0.5 * 0.5 * 2.0)
    assert rows["CS2"]["true_volume_vox"] and not rows["CS2"].get("true_volume_mm3")
    # known HU fills of write_case: clot 80 HU on CTA, 65 HU on NCCT -> perviousness 15 HU, pervious
    assert float(rows["CS1"]["true_cta_mean_hu"]) == pytest.approx(80.0, abs=1e-4)
    assert float(rows["CS1"]["true_ncct_median_hu"]) == pytest.approx(65.0, abs=1e-4)
    assert float(rows["CS1"]["pred_perviousness_hu"]) == pytest.approx(15.0, abs=1e-4)
    assert rows["CS1"]["pred_pervious"] == "True"
    assert rows["CS3"]["pred_cta_mean_hu"] == ""                # empty prediction: no attenuation
    assert float(rows["CS3"]["uncertainty_score"]) == 0.3
    summary = json.loads((out / "summary.json").read_text())
    agree = summary["biomarker_agreement"]
    assert {"volume_vox", "length_vox", "n_components", "cta_mean_hu"} <= set(agree)
    assert set(agree["volume_vox"]) >= {"pearson_r", "spearman_rho", "icc_2_1", "mean_diff", "loa_low", "loa_high"}
    assert agree["volume_vox"]["n"] == 3                         # CS1 is in mm, the rest in voxels
    rank = summary["uncertainty_ranking"]
    assert rank["n"] == 4 and rank["spearman_rho"] < 0            # more uncertain, lower Dice
    assert summary["biomarker_units"]["volume_mm3"] == "mm³"
    # render step: overlays with the uncertainty panel, plots, a report that links the files
    for name in ("montage.png", "bland_altman_volume.png", "bland_altman_length.png", "uncertainty_vs_dice.png",
                 "overlays/CS1.png", "report.html"):
        assert (out / name).is_file(), name
    html = (out / "report.html").read_text(encoding="utf-8")
    assert 'href="metrics.csv"' in html and "other_tool/CS2_pred.npy" in html
    assert "modalities CTA, NCCT" in html


def test_nnunet_style_nifti_folder_same_names_spacing_from_header(tmp_path):
    truth_dir, pred_dir = tmp_path / "labelsTs", tmp_path / "pred"
    truth_dir.mkdir()
    pred_dir.mkdir()
    affine = np.diag([0.7, 0.7, 3.0, 1.0])
    for i in range(3):
        t = np.zeros((12, 10, 4), np.uint8)
        t[3:7, 2:6, 1:3] = 1
        p = np.roll(t, i, axis=1)
        nib.save(nib.Nifti1Image(t, affine), str(truth_dir / f"case_{i}.nii.gz"))
        nib.save(nib.Nifti1Image(p, affine), str(pred_dir / f"case_{i}.nii.gz"))
    summary, cases = score_folder(pred_dir, truth_dir, tmp_path / "out", n_resamples=100)
    assert [c.case_id for c in cases] == ["case_0", "case_1", "case_2"]
    rows = _rows(tmp_path / "out" / "metrics.csv")
    assert rows[0]["distance_unit"] == "mm" and float(rows[0]["true_volume_mm3"]) == pytest.approx(32 * 0.7 * 0.7 * 3)
    assert float(rows[0]["dice"]) == 1.0 and float(rows[2]["dice"]) == pytest.approx(0.5)
    assert summary["units"]["volume"] == "mm3"


def test_prediction_in_the_truth_format_is_preferred(folders, tmp_path):
    s, pred_dir, _ = folders
    nib.save(nib.Nifti1Image(np.zeros((5, 5, 5), np.uint8), np.eye(4)), str(pred_dir / "CS1_pred.nii.gz"))
    (pred_dir / "CS1_seg.dcm").write_bytes(b"not read")
    cases, _ = match_cases(pred_dir, s.mask_path)
    assert cases[0].pred.name == "CS1_pred.npy" and cases[0].uncertainty.name == "CS1_unc.json"


def test_truth_without_prediction_is_a_note_and_case_ids_make_it_an_error(folders, tmp_path):
    s, pred_dir, _ = folders
    (pred_dir / "CS4_pred.npy").unlink()
    cases, notes = match_cases(pred_dir, s.mask_path)
    assert [c.case_id for c in cases] == ["CS1", "CS2", "CS3"] and "CS4" in notes[0]
    with pytest.raises(InputDataError, match="case CS4: no prediction"):
        match_cases(pred_dir, s.mask_path, case_ids=["CS1", "CS4"])


def test_bad_inputs_list_every_problem_and_write_nothing(folders, tmp_path):
    s, pred_dir, truths = folders
    np.save(pred_dir / "CS2_pred.npy", np.full(truths["CS2"].shape, 0.7, np.float32))   # probabilities
    np.save(pred_dir / "CS3_pred.npy", np.zeros((4, 4, 4), np.uint8))                     # wrong shape
    with pytest.raises(InputDataError) as err:
        score_folder(pred_dir, s.mask_path, tmp_path / "out")
    text = str(err.value)
    assert "CS2 prediction" in text and "probabilities" in text
    assert "case CS3: shape mismatch" in text
    assert not (tmp_path / "out" / "metrics.csv").exists()


@pytest.mark.parametrize("setup, expected", [
    ("missing", "predictions folder"),
    ("orphan", "CS9_pred.npy has no truth file"),
])
def test_cli_exits_2_with_one_line(folders, tmp_path, setup, expected):
    s, pred_dir, truths = folders
    if setup == "missing":
        pred_dir = tmp_path / "nowhere"
    else:
        np.save(pred_dir / "CS9_pred.npy", truths["CS1"])
    done = subprocess.run([sys.executable, "-m", "clotseg.evaluate", "--pred", str(pred_dir), "--truth",
                           str(s.mask_path), "--config", str(tmp_path / "none.py")],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    assert expected in done.stderr and "Traceback" not in done.stderr
    lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
    assert len(lines) <= 2, lines                                  # the headline and one problem line


def test_testing_path_imports_neither_keras_nor_the_training_stage():
    code = ("import sys, clotseg.stages.evaluate, clotseg.evaluate, clotseg.evaluation.rendering, "
            "clotseg.evaluation.scoring; import testing; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('keras', 'tensorflow', 'jax', 'myModels') "
            "or m == 'clotseg.stages.train']; print(bad); sys.exit(1 if bad else 0)")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
