"""bench/ensemble.py: several trained models' probabilities averaged, thresholded and scored,
against the members on the same test cases."""

import json

import numpy as np
import pytest

from bench import ensemble as ens
from tests.test_bench_compare import _write as _write_metrics   # metrics.csv rows (case_id, dice, ...)

DOMAIN = "first-build"
SHAPE = (6, 6, 3)


def _truth(case: int) -> np.ndarray:
    """uint8 (6, 6, 3) truth: CS1 and CS2 have a 2x2x2 clot, CS3 is a control."""
    m = np.zeros(SHAPE, np.uint8)
    if case in (1, 2):
        m[case:case + 2, 1:3, 0:2] = 1
    return m


def _workdir(root, n_repeats=3):
    """A bench/quality.py-shaped workdir: repeat<i> with a finished run, its test cohort (three cases'
    masks) and its own scoring."""
    for i in range(n_repeats):
        project = root / f"repeat{i}"
        (project / "Trainings" / f"run{i}").mkdir(parents=True)
        (project / "Trainings" / f"run{i}" / "run.json").write_text("{}")
        test = project / f"test_{DOMAIN}"
        (test / "volumes").mkdir(parents=True)
        (test / "masks").mkdir(parents=True)
        for c in (1, 2, 3):
            np.save(test / "masks" / f"CS{c}_seg_corrected_binary.npy", _truth(c))
        _write_metrics(project / f"Testing_{DOMAIN}", [("CS1", 0.5, 8, 8, 1, 0)])
    return root


def _member_probability(member: str, case: int) -> np.ndarray:
    """float16 (6, 6, 3): member "repeat0" sees CS1's clot at 0.9, "repeat1" at 0.3 and "repeat2" at
    0.45 (mean 0.55: found only together); CS2's clot only "repeat0" sees (0.9, mean 0.3 + 0.2: missed
    together); on the control CS3 "repeat1" alone raises a 0.8 false alarm (mean 0.27: gone)."""
    p = np.zeros(SHAPE, np.float16)
    clot = _truth(case).astype(bool)
    level = {("repeat0", 1): 0.9, ("repeat1", 1): 0.3, ("repeat2", 1): 0.45,
             ("repeat0", 2): 0.9, ("repeat1", 2): 0.1, ("repeat2", 2): 0.1}
    if case in (1, 2):
        p[clot] = level[(member, case)]
    elif member == "repeat1":
        p[0, 0, 0] = 0.8
    return p


@pytest.fixture
def fake_scoring(monkeypatch):
    """Members 'predict' by writing _member_probability maps and their own plain metrics rows."""
    from clotseg.settings import Settings

    monkeypatch.setattr("clotseg.layout.load_run_settings",
                        lambda run, root: Settings(threshold=0.3, tta_flips=True, root=root))
    calls = []

    def score(settings, run, cohort, output):
        member = run.parent.parent.name
        calls.append((member, cohort.parent.name, settings.threshold, settings.tta_flips, settings.save_probabilities))
        rows = []
        for c in (1, 2, 3):
            prob = _member_probability(member, c)
            pred = (prob > 0.5).sum()
            truth = int(_truth(c).sum())
            dice = (1.0 if truth == 0 and pred == 0 else 0.0 if truth == 0 else 2.0 * pred / (pred + truth))
            rows.append((f"CS{c}", dice, truth, int(pred), int(truth > 0 and pred > 0), int(truth == 0 and pred > 0)))
        _write_metrics(output, rows)
        (output / "predictions").mkdir()
        for c in (1, 2, 3):
            np.save(output / "predictions" / f"CS{c}_prob.npy", _member_probability(member, c))

    monkeypatch.setattr(ens, "score_cohort", score)
    return calls


def test_average_members_thresholds_the_mean_probability(tmp_path):
    files = []
    for k, level in enumerate((0.9, 0.3, 0.45)):
        p = np.zeros(SHAPE, np.float16)
        p[0, 0, 0] = level                        # mean 0.55: clot
        p[1, 1, 1] = 0.5 if k < 2 else 0.4        # mean 0.467: one member above 0.5 is not enough
        np.save(tmp_path / f"m{k}.npy", p)
        files.append(tmp_path / f"m{k}.npy")
    mask = ens.average_members(files)
    assert mask.dtype == np.uint8 and mask.shape == SHAPE
    assert mask[0, 0, 0] == 1 and mask.sum() == 1
    np.save(tmp_path / "odd.npy", np.zeros((6, 6, 4), np.float16))
    with pytest.raises(ens.CrossError, match="differs from the other members"):
        ens.average_members(files + [tmp_path / "odd.npy"])


def test_ensemble_of_the_repeats_scores_the_averaged_probabilities(tmp_path, fake_scoring, capsys):
    work = _workdir(tmp_path / "work")
    assert ens.main([str(work), "--out", str(tmp_path / "r.json")]) == 0
    # every member on every cohort, once, with the plain post-processing and probabilities saved
    assert sorted(c[:2] for c in fake_scoring) == sorted((f"repeat{i}", f"repeat{j}") for i in range(3)
                                                         for j in range(3))
    assert all(c[2:] == (0.5, False, True) for c in fake_scoring)
    report = json.loads((tmp_path / "r.json").read_text())
    for j in range(3):
        pred = work / f"ensemble_{DOMAIN}" / f"cohort{j}" / "predictions"
        assert np.load(pred / "CS1_pred.npy").sum() == 8          # found only by the average
        assert np.load(pred / "CS2_pred.npy").sum() == 0          # one confident member is outvoted
        assert np.load(pred / "CS3_pred.npy").sum() == 0          # the lone false alarm is gone
    p = report["paired"]
    assert (p["n_clot_cases"], p["n_clot_free_cases"]) == (6, 3)
    # members: CS1 found by repeat0 only (Dice 1), CS2 by repeat0 only: 1/3 each; ensemble CS1 1, CS2 0
    assert p["a"]["clot_dice_mean"] == pytest.approx(1 / 3)
    assert p["b"]["clot_dice_mean"] == pytest.approx(0.5)
    assert p["a"]["controls_with_alarm"] == pytest.approx(1.0) and p["b"]["controls_with_alarm"] == 0
    assert p["dice_difference"]["better"] == 3 and p["dice_difference"]["worse"] == 3
    out = capsys.readouterr().out
    assert "| clots found (mean over models) | 2.0/6 | 3.0/6 |" in out
    assert "#### ensemble - members, each test case averaged over 3 models of members, 1 of ensemble" in out
    # a second call predicts nothing again
    fake_scoring.clear()
    assert ens.main([str(work)]) == 0 and fake_scoring == []


def test_members_from_other_workdirs_are_scored_on_workdirs_cohorts(tmp_path, fake_scoring):
    work = _workdir(tmp_path / "work", 2)
    other = _workdir(tmp_path / "seed142", 1)
    assert ens.main([str(work), "--member", str(work / "repeat0"), "--member", str(other / "repeat0"),
                     "--name", "seeds", "--out", str(tmp_path / "r.json")]) == 0
    # the other workdir's model predicts this workdir's two cohorts; its own cohort is not used
    assert sorted((c[0], c[1]) for c in fake_scoring) == [("repeat0", "repeat0"), ("repeat0", "repeat0"),
                                                          ("repeat0", "repeat1"), ("repeat0", "repeat1")]
    assert (other / "repeat0" / f"Ensemble_{DOMAIN}" / "cohort1" / "metrics.csv").is_file()
    assert (work / f"ensemble_{DOMAIN}_seeds" / "cohort1" / "metrics.csv").is_file()
    assert json.loads((tmp_path / "r.json").read_text())["members"] == [str(work / "repeat0"),
                                                                       str(other / "repeat0")]


def test_where_keeps_the_cases_of_a_subgroup(tmp_path, fake_scoring):
    work = _workdir(tmp_path / "work", 2)
    for j in range(2):   # only CS2 of each cohort is "not hyperdense"
        volumes = work / f"repeat{j}" / f"test_{DOMAIN}" / "volumes"
        for case, dense in (("CS1", True), ("CS2", False), ("CS3", True)):
            (volumes / f"CS{case[2:]}.json").write_text(json.dumps({"hyperdense": dense}))
    assert ens.main([str(work), "--where", "hyperdense=false", "--out", str(tmp_path / "r.json")]) == 0
    p = json.loads((tmp_path / "r.json").read_text())["paired"]
    # CS2 of both cohorts: found by member 0 alone (Dice 1 and 0: mean 0.5), outvoted in the ensemble
    assert (p["n_clot_cases"], p["n_clot_free_cases"]) == (2, 0)
    assert p["a"]["clot_dice_mean"] == pytest.approx(0.5) and p["b"]["clot_dice_mean"] == 0


@pytest.mark.parametrize("args, message", [
    (lambda w: [str(w), "--where", "hyperdense"], "--where expects KEY=VALUE"),
    (lambda w: [str(w / "nope")], "no such folder"),
    (lambda w: [str(w), "--member", str(w / "repeat0"), "--member", str(w / "repeat1")], "--member needs --name"),
    (lambda w: [str(w), "--member", str(w / "repeat0"), "--member", str(w / "repeat0"), "--name", "x"],
     "at least two different members"),
    (lambda w: [str(w), "--member", str(w / "repeat0"), "--member", str(w / "test_x"), "--name", "x"],
     "no finished run"),
])
def test_bad_input_is_one_line_and_exit_status_2(tmp_path, fake_scoring, capsys, args, message):
    work = _workdir(tmp_path / "work", 2)
    with pytest.raises(SystemExit) as exc:
        ens.main(args(work))
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert fake_scoring == []


def test_a_member_of_other_planes_predicts_a_moved_copy_and_is_moved_back(tmp_path, fake_scoring, monkeypatch):
    """A model trained on sagittal planes (`bench/quality.py --slice-axis 1`) predicts a copy of the
    cohort with axis 1 moved last; its probabilities are moved back before averaging."""
    work = _workdir(tmp_path / "work", 2)
    for j in range(2):
        for c in (1, 2, 3):
            (work / f"repeat{j}" / f"test_{DOMAIN}" / "volumes" / f"CS{c}.json").write_text(
                json.dumps({"shape": list(SHAPE), "spacing_mm": [0.5, 0.5, 2.0]}))
    volumes = work / "repeat0" / f"test_{DOMAIN}" / "volumes"
    sag = _workdir(tmp_path / "sag", 2) / "repeat1"
    (sag / "DL_vol_files" / "binary").mkdir(parents=True)
    (sag / "DL_vol_files" / "binary" / "CS1.json").write_text(json.dumps({"slice_axis": 1}))
    axial_score = ens.score_cohort
    seen = []

    def score(settings, run, cohort, output):
        axial_score(settings, run, cohort, output)
        if run.parent.parent == sag:  # what a sagittal model writes: maps in its own (H, D, W) order
            seen.append(np.load(cohort / "masks" / "CS1_seg_corrected_binary.npy"))
            for f in (output / "predictions").glob("*_prob.npy"):
                np.save(f, np.moveaxis(np.load(f), 1, -1))

    monkeypatch.setattr(ens, "score_cohort", score)
    assert ens.main([str(work), "--member", str(work / "repeat0"), "--member", str(sag), "--name", "views"]) == 0
    # the sagittal member was given the cohort with its planes last; the original is untouched
    assert len(seen) == 2 and seen[0].shape == (6, 3, 6)
    np.testing.assert_array_equal(seen[0], np.moveaxis(_truth(1), 1, -1))
    assert np.load(volumes.parent / "masks" / "CS1_seg_corrected_binary.npy").shape == SHAPE
    pred = work / f"ensemble_{DOMAIN}_views" / "cohort0" / "predictions"
    np.testing.assert_array_equal(np.load(pred / "CS1_pred.npy"), _truth(1))   # (0.9 + 0.3) / 2 in place
    assert np.load(pred / "CS3_pred.npy").sum() == 0                          # the lone 0.8 alarm halved
