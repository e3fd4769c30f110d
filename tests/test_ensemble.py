"""Ensembles of runs: FOLD (folds of one split with the same Testing cohort) and testing several
runs as one model whose probabilities are the members' mean."""

import subprocess
import sys

import numpy as np
import pytest

from clotseg.errors import ClotSegError, StageError
from clotseg.io import read_json
from clotseg.layout import TESTING, TRAINING, VALIDATION, ensemble_dir, resolve_runs, sliced_dir, split_path
from clotseg.settings import Settings
from clotseg.stages.split import fold_cohorts, run_split, split_cases
from tests.conftest import ROOT, quiet, tiny_settings, write_cohort

IDS = [f"CS{i}" for i in range(1, 41)]
CLOT = {c: int(c not in ("CS3", "CS9", "CS17", "CS21", "CS30", "CS38")) for c in IDS}   # 6 controls


def test_folds_keep_testing_and_partition_the_other_cases():
    base = split_cases(IDS, 0.6, 0.2, 42, CLOT)
    folds = [fold_cohorts(base, k, 4, 42, CLOT) for k in range(4)]
    pool = set(base[TRAINING]) | set(base[VALIDATION])
    for f in folds:
        assert f[TESTING] == base[TESTING]                                   # the same held-out cases
        assert set(f[TRAINING]) | set(f[VALIDATION]) == pool
        assert not set(f[TRAINING]) & set(f[VALIDATION])
        assert len(f[VALIDATION]) in (8, 9) and sum(CLOT[c] == 0 for c in f[VALIDATION]) >= 1
    validations = [set(f[VALIDATION]) for f in folds]
    assert set().union(*validations) == pool and sum(map(len, validations)) == len(pool)   # a partition
    assert fold_cohorts(base, 2, 4, 42, CLOT) == folds[2]                    # seeded
    assert fold_cohorts(base, 2, 4, 43, CLOT) != folds[2]
    with pytest.raises(StageError, match="make fewer than 4 folds"):
        fold_cohorts(split_cases(IDS[:4], 0.6, 0.2, 42), 0, 4, 42)


def test_fold_is_a_validated_setting_with_as_many_folds_as_the_shares_give(tmp_path):
    assert Settings().n_folds == 4                                           # 60 / 20 / 20
    assert Settings(train_perc=0.7, val_perc=0.1).n_folds == 8
    for bad, message in [({"FOLD": 4}, "FOLD must be None or an integer from 0 to 3"),
                         ({"FOLD": True}, "FOLD must be None or an integer"),
                         ({"FOLD": 1, "SPLIT_FILE": "s.csv"}, "with SPLIT_FILE or GROUP_BY set FOLD = None"),
                         ({"TEST_RUN": ["a", "a"]}, "a list of different run folder names"),
                         ({"TEST_RUN": ["a", "../b"]}, "a list of different run folder names"),
                         ({"TEST_RUN": []}, "a list of different run folder names")]:
        with pytest.raises(ClotSegError, match=message):
            tiny_settings(tmp_path, **bad)
    s = tiny_settings(tmp_path, test_run=["r1", "r2"], fold=3)
    (tmp_path / "config.json").write_text(s.to_json())
    again = Settings.from_run_config(tmp_path / "config.json", tmp_path)      # a run's saved settings
    assert s.test_runs == again.test_runs == ("r1", "r2") and again.fold == 3
    assert tiny_settings(tmp_path, test_run="r1").test_runs == ("r1",) and Settings().test_runs == ()


def test_run_split_with_fold_records_it_and_keeps_the_testing_cohort(tmp_path):
    s = tiny_settings(tmp_path)
    plain = run_split(s, IDS, quiet, strata=CLOT)
    one = run_split(s.replace(fold=1), IDS, quiet, strata=CLOT)
    saved = read_json(split_path(s.replace(fold=1)))
    assert saved["fold"] == 1 and saved["folds"] == 4 and saved["cohorts"] == one
    assert one[TESTING] == plain[TESTING] and one[VALIDATION] != plain[VALIDATION]
    assert run_split(s, IDS, quiet, strata=CLOT) == plain                   # FOLD None: the split as before
    assert read_json(split_path(s))["fold"] is None and split_path(s) == s.processed_path / "split.json"
    # each fold keeps its own split beside the others (Processed/Fold<k>/split.json), so the one
    # without FOLD is still there, and reusing a saved split (TRAIN_TEST_SPLIT False) finds the fold's
    assert split_path(s.replace(fold=1)) == s.processed_path / "Fold1" / "split.json"
    assert read_json(split_path(s.replace(fold=1)))["cohorts"] == one
    with pytest.raises(StageError, match="no saved split"):
        run_split(s.replace(fold=2, train_test_split=False), IDS, quiet, strata=CLOT)
    run_split(s.replace(fold=2), IDS, quiet, strata=CLOT)
    assert run_split(s.replace(fold=2, train_test_split=False), IDS, quiet, strata=CLOT) == \
        fold_cohorts(plain, 2, 4, s.random_seed, CLOT)
    assert run_split(s.replace(train_test_split=False), IDS, quiet, strata=CLOT) == plain
    # a split saved under another fold's name (copied by hand) is refused, not trained on
    split_path(s.replace(fold=3)).parent.mkdir(parents=True)
    split_path(s.replace(fold=3)).write_bytes(split_path(s.replace(fold=2)).read_bytes())
    with pytest.raises(StageError, match="is fold 2, not FOLD = 3"):
        run_split(s.replace(fold=3, train_test_split=False), IDS, quiet, strata=CLOT)


def _two_tiny_models():
    import keras

    def tiny(seed):
        keras.utils.set_random_seed(seed)
        x = keras.Input((16, 16, 2))
        y = keras.layers.Conv2D(1, 3, padding="same", activation="sigmoid")(x)
        return keras.Model(x, y)

    return tiny(1), tiny(2)


def test_average_models_outputs_the_members_mean():
    from clotseg.inference import average_models, flip_ensemble, split_members

    a, b = _two_tiny_models()
    x = np.random.default_rng(0).uniform(0, 255, (3, 16, 16, 2)).astype("float32")
    pa, pb = np.asarray(a.predict_on_batch(x)), np.asarray(b.predict_on_batch(x))
    assert not np.allclose(pa, pb)
    both = average_models([a, b])
    np.testing.assert_allclose(np.asarray(both.predict_on_batch(x)), (pa + pb) / 2, rtol=1e-5, atol=1e-6)
    plain = split_members(np.asarray(flip_ensemble(both).predict_on_batch(x)), 3)[0]   # flips wrap it as one model
    np.testing.assert_allclose(plain, (pa + pb) / 2, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def fold_runs(tmp_path_factory):
    """A tiny project with the runs of FOLD 0 and FOLD 1 (one epoch each) and a run of another
    RANDOM_SEED (another Testing cohort)."""
    from clotseg.pipeline import prepare_data
    from clotseg.stages.train import run_training

    root = tmp_path_factory.mktemp("folds")
    s = tiny_settings(root, epochs=1, save_probabilities=True)
    write_cohort(s, n=10, clot_free=(4, 9))
    runs = []
    for fold in (0, 1):
        f = s.replace(fold=fold)
        cohorts = prepare_data(f, log=quiet, demo_if_empty=False)["cohorts"]
        # the fold's own Validation cases, sliced into the fold's own folder
        assert sliced_dir(f, VALIDATION) == s.processed_path / f"Fold{fold}" / "Sliced" / VALIDATION
        sliced = read_json(sliced_dir(f, VALIDATION) / "manifest.json")["cases"]
        assert sorted(sliced) == sorted(cohorts[VALIDATION])
        runs.append(run_training(f, log=quiet))
    # fold 0's samples are still there, up to date, after fold 1 was prepared and trained
    again = []
    prepare_data(s.replace(fold=0), log=again.append, demo_if_empty=False)
    stage_lines = [str(line) for line in again if str(line).startswith(("[split", "[slice", "[augment"))]
    assert len(stage_lines) == 5 and all("up to date" in line for line in stage_lines), stage_lines
    other = s.replace(random_seed=7)
    prepare_data(other, log=quiet, demo_if_empty=False)
    runs.append(run_training(other, log=quiet))
    return s, runs


def test_the_runs_of_two_folds_are_tested_as_one_ensemble(fold_runs):
    from clotseg.stages.evaluate import run_evaluation

    s, (r0, r1, _) = fold_runs
    assert read_json(r0 / "Relevant_Files" / "split.json")["cohorts"][VALIDATION] != \
        read_json(r1 / "Relevant_Files" / "split.json")["cohorts"][VALIDATION]
    for r in (r0, r1):
        run_evaluation(s, run_name=r.name, log=quiet)
    lines = []
    summary = run_evaluation(s, run_name=[r0.name, r1.name], log=lines.append)
    out = ensemble_dir(s, [r0, r1]) / "Testing"
    assert out.parent.name.startswith("Ensemble_2runs_") and (out / "report.html").is_file()
    assert summary["meta"]["ensemble_runs"] == [r0.name, r1.name] and summary["meta"]["run"] == out.parent.name
    assert summary["meta"]["postprocessing_source"] == "default"            # no member's tuned choice
    assert any("ensemble of 2 runs" in str(line) for line in lines)
    probs = sorted((out / "predictions").glob("*_prob.npy"))
    assert len(probs) == len(read_json(r0 / "Relevant_Files" / "split.json")["cohorts"][TESTING]) >= 1
    for prob_file in probs:
        member = [np.load(r / "Testing" / "predictions" / prob_file.name).astype(np.float32) for r in (r0, r1)]
        mean = (member[0] + member[1]) / 2
        np.testing.assert_allclose(np.load(prob_file).astype(np.float32), mean, atol=2e-3)   # float16 maps
        pred = np.load(out / "predictions" / prob_file.name.replace("_prob", "_pred"))
        clear = np.abs(mean - 0.5) > 2e-3           # the voxels float16 rounding cannot move across 0.5
        np.testing.assert_array_equal(pred[clear], (mean[clear] > 0.5).astype(np.uint8))
    # TEST_RUN as a list does the same, in any order, into the same folder
    listed = s.replace(test_run=[r1.name, r0.name])
    assert resolve_runs(listed) == [r1, r0] and ensemble_dir(listed, [r1, r0]) == out.parent


def test_runs_that_held_out_other_testing_cases_are_refused_unless_other_cases_are_named(fold_runs):
    from clotseg.stages.evaluate import run_evaluation

    s, (r0, _, other) = fold_runs
    with pytest.raises(StageError, match="hold out different Testing cases"):
        run_evaluation(s, run_name=[r0.name, other.name], log=quiet)
    assert not ensemble_dir(s, [r0, other]).exists()
    summary = run_evaluation(s, run_name=[r0.name, other.name], input_dir=s.volume_path, mask_dir=s.mask_path,
                             log=quiet)
    assert summary["metrics_clot_cases"]["dice"]["n"] == 8
    assert (ensemble_dir(s, [r0, other]) / f"Testing_{s.volume_path.name}" / "metrics.csv").is_file()


def test_runs_whose_inputs_differ_cannot_be_averaged(fold_runs, tmp_path):
    import json
    import shutil

    from clotseg.stages.evaluate import run_evaluation

    s, (r0, r1, _) = fold_runs
    odd = r1.parent / (r1.name + "_ctx")
    shutil.copytree(r1, odd)
    config = odd / "Relevant_Files" / "config.json"
    values = json.loads(config.read_text())
    values["WINDOWS_HU"]["CTA"] = [0.0, 400.0]
    config.write_text(json.dumps(values))
    try:
        with pytest.raises(StageError, match="cannot be averaged: WINDOWS_HU"):
            run_evaluation(s, run_name=[r0.name, odd.name], log=quiet)
        with pytest.raises(StageError, match="named twice"):
            resolve_runs(s, [r0.name, r0.name])
    finally:
        shutil.rmtree(odd)


def test_testing_cli_takes_several_runs_and_names_a_missing_one(tmp_path):
    (tmp_path / "config.py").write_text("TRAININGS_DIR = 'Trainings'\n")
    proc = subprocess.run([sys.executable, str(ROOT / "testing.py"), "--config", str(tmp_path / "config.py"),
                           "--run", "a", "b"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "run 'a' has no Best_Model/model.keras" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
