"""Training and testing end to end on a tiny cohort (in-process, TensorFlow/JAX)."""

import csv
import json

import numpy as np
import pytest

from clotseg.errors import StageError
from clotseg.io import read_json
from clotseg.pipeline import prepare_data
from clotseg.postprocessing import CTA_LUMEN_HU, VESSEL_DISTANCES_MM
from clotseg.stages.evaluate import load_model, run_evaluation
from clotseg.stages.train import run_training
from tests.conftest import quiet, tiny_settings, write_cohort

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    s = tiny_settings(root, epochs=2, target_sample_size_aug_train=48, target_sample_size_aug_val=16)
    write_cohort(s, n=6, clot_free=(6,))
    prepare_data(s, log=quiet, demo_if_empty=False)
    run = run_training(s, log=quiet)
    summary = run_evaluation(s, log=quiet)
    return s, run, summary


def test_run_folder_has_every_artifact(trained):
    s, run, _ = trained
    for rel in ("Best_Model/model.keras", "Checkpoint_Files/last.keras", "Checkpoint_Files/state.json",
                "Relevant_Files/config.json", "Relevant_Files/split.json", "history.csv",
                "training_curves.png", "Predictions/epoch_001.png", "Predictions/epoch_002.png", "run.json"):
        assert (run / rel).is_file(), rel
    record = read_json(run / "run.json")
    assert record["status"] == "finished" and record["epochs_done"] == 2
    with open(run / "history.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    assert {"loss", "val_loss", "dice", "val_dice"} <= set(rows[0])
    assert json.loads((run / "Relevant_Files" / "config.json").read_text())["INPUT_SHAPE"] == [64, 64, 2]
    assert (run / "Predictions" / "epoch_001.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_saved_model_reloads_safely_and_predicts_the_same(trained):
    s, run, _ = trained
    a = load_model(run)
    b = load_model(run)
    x = np.random.default_rng(0).integers(0, 255, (2, *s.model_input_shape)).astype(np.float32)
    np.testing.assert_allclose(a.predict(x, verbose=0), b.predict(x, verbose=0), atol=1e-6)


def test_testing_outputs_and_value_ranges(trained):
    s, run, summary = trained
    out = run / "Testing"
    test_ids = read_json(run / "Relevant_Files" / "split.json")["cohorts"]["Testing"]
    with open(out / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["case_id"] for r in rows] == test_ids
    for r in rows:
        assert 0.0 <= float(r["dice"]) <= 1.0
        assert r["case_type"] in {"true_negative", "detected", "missed", "false_alarm"}
        pred = np.load(out / "predictions" / f"{r['case_id']}_pred.npy")
        truth = np.load(s.mask_path / f"{r['case_id']}_seg_corrected_binary.npy")
        assert pred.shape == truth.shape and pred.dtype == np.uint8 and set(np.unique(pred)) <= {0, 1}
        assert (out / "overlays" / f"{r['case_id']}.png").is_file()
    assert (out / "montage.png").is_file()
    saved = read_json(out / "summary.json")
    assert saved["meta"]["n_cases"] == len(test_ids)
    assert saved["meta"]["run"] == run.name


def test_unlabeled_cases_get_predictions_only(trained, tmp_path):
    s, run, _ = trained
    new = tmp_path / "new_cases"
    new.mkdir()
    for f in s.volume_path.glob("CS1_*.npy"):
        (new / f.name).write_bytes(f.read_bytes())
    before = {p.name: p.read_bytes() for p in (run / "Testing").glob("*.*")}
    summary = run_evaluation(s, input_dir=new, log=quiet)
    out = run / "Testing_new_cases"
    assert not (out / "metrics.csv").exists()
    assert (out / "predictions" / "CS1_pred.npy").is_file()
    assert summary["cases"][0]["case_type"] == "unlabeled"
    # the predicted biomarkers and the uncertainty score still come with it, and a report
    assert "pred_cta_mean_hu" in summary["cases"][0] and "uncertainty_score" in summary["cases"][0]
    assert (out / "report.html").is_file() and (out / "predictions" / "CS1_unc.npy").is_file()
    # the run's own test results are untouched (they used to be replaced)
    assert {p.name: p.read_bytes() for p in (run / "Testing").glob("*.*")} == before
    assert "metrics.csv" in before and "summary.json" in before


def test_refuses_run_names_outside_trainings(trained):
    s, _, _ = trained
    with pytest.raises(StageError, match="folder name"):
        run_evaluation(s, run_name="../../etc", log=quiet)


def test_lambda_layer_model_is_refused(trained, tmp_path):
    import keras

    s, run, _ = trained
    inp = keras.Input((4,))
    model = keras.Model(inp, keras.layers.Lambda(lambda t: t * 2)(inp))
    evil = tmp_path / "Trainings" / "evil"
    (evil / "Best_Model").mkdir(parents=True)
    model.save(evil / "Best_Model" / "model.keras")
    with pytest.raises(StageError, match="refusing to load"):
        load_model(evil)


def test_best_model_loads_with_plain_keras_in_a_fresh_interpreter(trained):
    """The best model needs nothing from ClotSeg: a Python that imports only
    keras loads it in safe mode and predicts."""
    import subprocess
    import sys

    _, run, _ = trained
    code = ("import sys, keras, numpy as np; m = keras.saving.load_model(sys.argv[1]); "
            "x = np.zeros((1,) + tuple(m.input_shape[1:]), 'float32'); "
            "assert not any(k.startswith(('clotseg', 'myModels')) for k in sys.modules); "
            "print(m.predict(x, verbose=0).shape)")
    out = subprocess.run([sys.executable, "-c", code, str(run / "Best_Model" / "model.keras")],
                         capture_output=True, text=True, cwd=str(run), timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("(1, 64, 64, 1)")


def test_retuning_feeds_the_model_with_the_runs_own_windows(trained, monkeypatch):
    """Re-tuning after config.py changed (bench --retune) must feed the model
    the windows it was trained with, not today's config.py ones."""
    from clotseg.stages import train as train_stage

    s, run, _ = trained
    before = read_json(run / "postprocessing.json")
    seen = []
    real = train_stage.predict_volume_members

    def spy(model, volumes, windows, *args, **kwargs):
        seen.append([tuple(w) if w is not None else None for w in windows])
        return real(model, volumes, windows, *args, **kwargs)

    monkeypatch.setattr(train_stage, "predict_volume_members", spy)
    other = s.replace(windows_hu={m: (-1000.0, 3000.0) for m in s.modalities})
    try:
        again = train_stage.tune_run_postprocessing(other, run, log=lambda *_: None)
        trained_windows = [tuple(s.windows_hu[m]) for m in s.modalities]
        assert seen and all(w == trained_windows for w in seen)
        assert again["table"] == before["table"]
    finally:
        (run / "postprocessing.json").write_text(json.dumps(before), encoding="utf-8")


def test_tuning_keeps_components_within_a_validation_case_s_slice_runs(trained, monkeypatch):
    """A Validation case whose sidecar records slice gaps (a slice import's)
    is scored by the tuner as testing.py scores it: its gaps reach the
    component labelling, and the gap-free cases pass None."""
    from clotseg.stages import train as train_stage

    s, run, _ = trained
    before = read_json(run / "postprocessing.json")
    case_id = sorted(before["cases"])[0]
    sidecar = s.volume_path / f"{case_id}.json"
    old_text = sidecar.read_text(encoding="utf-8") if sidecar.is_file() else None
    side = json.loads(old_text) if old_text else {}
    seen = {}
    real = train_stage.postprocessing.tune

    def spy(cases, *args, slice_gaps=None, **kwargs):
        seen["gaps"] = slice_gaps
        return real(cases, *args, slice_gaps=slice_gaps, **kwargs)

    monkeypatch.setattr(train_stage.postprocessing, "tune", spy)
    try:
        sidecar.write_text(json.dumps({**side, "slice_gaps": [1]}), encoding="utf-8")
        train_stage.tune_run_postprocessing(s, run, log=lambda *_: None)
        assert len(seen["gaps"]) == len(before["cases"])
        assert sorted(seen["gaps"], key=lambda g: g is None) == [[1]] + [None] * (len(before["cases"]) - 1)
    finally:
        if old_text is None:
            sidecar.unlink()
        else:
            sidecar.write_text(old_text, encoding="utf-8")
        (run / "postprocessing.json").write_text(json.dumps(before), encoding="utf-8")


def test_postprocessing_is_tuned_on_validation_and_used_by_testing(trained):
    s, run, summary = trained
    record = read_json(run / "postprocessing.json")
    assert set(record["cases"]) == set(read_json(run / "Relevant_Files" / "split.json")["cohorts"]["Validation"])
    assert record["validation"]["chosen"]["mean_dice"] >= record["validation"]["default"]["mean_dice"]
    # config.py holds the vessel filter off and the lumen filter at 130 HU by default
    assert record["fixed"] == {"max_vessel_distance_mm": 0.0, "max_component_cta_hu": 130.0}
    assert {(r["max_vessel_distance_mm"], r["max_component_cta_hu"]) for r in record["table"]} == {(0.0, 130.0)}
    meta = read_json(run / "Testing" / "summary.json")["meta"]
    assert meta["postprocessing_source"] == "validation-tuned"
    for key, value in record["chosen"].items():
        assert meta[key] == value


def test_three_steps_write_uncertainty_biomarkers_and_report(trained):
    """Issue 14 outputs of the two-channel run: uncertainty map and score per
    case, pred_/true_ biomarkers with CTA/NCCT attenuation and perviousness,
    agreement and ranking in summary.json, report.html with every case."""
    s, run, summary = trained
    out = run / "Testing"
    with open(out / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    for key in ("pred_volume_vox", "true_volume_vox", "pred_length_vox", "true_cta_mean_hu", "true_ncct_mean_hu",
                "true_perviousness_hu", "true_pervious", "uncertainty_score", "member_disagreement"):
        assert key in rows[0], key
    for r in rows:
        unc = np.load(out / "predictions" / f"{r['case_id']}_unc.npy")
        assert unc.dtype == np.float16 and unc.shape == np.load(out / "predictions" / f"{r['case_id']}_pred.npy").shape
        assert (out / "predictions" / f"{r['case_id']}_unc.json").is_file()
        if r["true_voxels"] != "0":      # write_case fills the clot with 80 HU CTA, 65 HU NCCT
            assert float(r["true_perviousness_hu"]) == pytest.approx(15.0, abs=1e-3)
    saved = read_json(out / "summary.json")
    assert "volume_vox" in saved["biomarker_agreement"] and saved["uncertainty_ranking"]["n"] == len(rows)
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "modalities CTA, NCCT" in html and 'href="metrics.csv"' in html
    for r in rows:
        assert f'id="case-{r["case_id"]}"' in html and f'href="predictions/{r["case_id"]}_unc.npy"' in html
    assert (out / "uncertainty_vs_dice.png").is_file() and (out / "bland_altman_volume.png").is_file()


def test_prediction_follows_the_resolved_tta_choice(trained):
    """The flip members are always computed (for the uncertainty), but the
    saved prediction is their mean only when the post-processing says tta_flips."""
    from clotseg.cohort import discover_cases, load_case
    from clotseg.inference import postprocess, predict_volume_members, to_mask
    from clotseg.vessels import vessel_mask

    s, run, _ = trained
    out = run / "Testing"
    meta = read_json(out / "summary.json")["meta"]
    cid = read_json(run / "Relevant_Files" / "split.json")["cohorts"]["Testing"][0]
    case = next(c for c in discover_cases(s, require_masks=False) if c.case_id == cid)
    vols, _ = load_case(case)
    members = predict_volume_members(load_model(run), vols, [s.windows_hu[m] for m in s.modalities],
                                     s.input_shape[:2], batch_size=max(s.batch_size, 32), tta_flips=True,
                                     context_slices=s.context_slices)
    prob = np.mean(members, axis=0) if meta["tta_flips"] else members[0]
    expected = postprocess(to_mask(prob, meta["threshold"]), meta["min_component_voxels"],
                           meta["keep_largest_component"], prob=prob, min_peak=meta["min_component_peak"],
                           vessel=vessel_mask(vols, s.modalities), spacing_mm=case.spacing_mm(s.voxel_spacing_mm),
                           max_vessel_mm=meta["max_vessel_distance_mm"])
    saved = np.load(out / "predictions" / f"{cid}_pred.npy")
    assert np.mean(saved != expected) < 1e-3         # same forward passes; float noise may flip a border voxel
    assert meta["prediction_from"] == ("mean of plain and flip members" if meta["tta_flips"] else "plain member")


def test_retuning_holds_what_config_fixes(trained):
    """THRESHOLD set in config.py: the tuner searches only the other choices,
    at that threshold, and records what it held."""
    from clotseg.stages import train as train_stage

    s, run, _ = trained
    before = read_json(run / "postprocessing.json")
    try:
        again = train_stage.tune_run_postprocessing(s.replace(threshold=0.4, tta_flips=False,
                                                               max_vessel_distance_mm=2.0, max_component_cta_hu=130.0),
                                                    run, log=lambda *_: None)
        assert again["fixed"] == {"threshold": 0.4, "tta_flips": False, "max_vessel_distance_mm": 2.0,
                                  "max_component_cta_hu": 130.0}
        assert {(r["threshold"], r["tta_flips"], r["max_vessel_distance_mm"], r["max_component_cta_hu"])
                for r in again["table"]} == {(0.4, False, 2.0, 130.0)}
        assert again["chosen"]["threshold"] == 0.4 and again["chosen"]["tta_flips"] is False
        assert read_json(run / "postprocessing.json")["fixed"] == again["fixed"]
        # None: the volumes have a CTA in HU, so the tuner searches the vessel and lumen filters
        searched = train_stage.tune_run_postprocessing(s.replace(max_vessel_distance_mm=None,
                                                                 max_component_cta_hu=None), run,
                                                       log=lambda *_: None)
        assert searched["fixed"] == {}
        assert {r["max_vessel_distance_mm"] for r in searched["table"]} == set(VESSEL_DISTANCES_MM)
        assert {r["max_component_cta_hu"] for r in searched["table"]} == set(CTA_LUMEN_HU)
    finally:
        (run / "postprocessing.json").write_text(json.dumps(before), encoding="utf-8")
