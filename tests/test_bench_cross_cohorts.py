"""bench/cross_cohorts.py: every repeat's model on every repeat's test cohort, and the paired
comparison with each test case averaged over the models."""

import json
import os
import subprocess
import sys

import pytest

from bench import cross_cohorts as cross
from tests.conftest import ROOT
from tests.test_bench_compare import _write as _write_metrics   # metrics.csv rows (case_id, dice, ...)

DOMAIN = "first-build"


def _workdir(root, scorings, skip=()):
    """A bench/quality.py-shaped workdir: scorings[(model, cohort)] = metrics rows; pairs in `skip`
    are left unscored."""
    models = sorted({i for i, _ in scorings})
    for i in models:
        project = root / f"repeat{i}"
        (project / "Trainings" / f"run{i}").mkdir(parents=True)
        (project / "Trainings" / f"run{i}" / "run.json").write_text("{}")
        (project / f"test_{DOMAIN}" / "volumes").mkdir(parents=True)
    for (i, j), rows in scorings.items():
        if (i, j) not in skip:
            _write_metrics(cross.scoring_folder(root, i, j, DOMAIN), rows)
    return root


def _cohort(dice_clot1, dice_clot2, alarm, clot2_voxels=40):
    """Cohort rows: two clot cases (CS1 50 voxels, CS2) and one control CS3 (alarm: 5 voxels predicted)."""
    return [("CS1", dice_clot1, 50, 40, int(dice_clot1 > 0), 0),
            ("CS2", dice_clot2, clot2_voxels, 30, int(dice_clot2 > 0), 0),
            ("CS3", 0.0 if alarm else 1.0, 0, 5 if alarm else 0, 0, int(alarm))]


def test_matrix_tells_the_models_from_the_cohorts(tmp_path):
    # cohort 1 is harder for both models; model 1 is a little better on both
    work = _workdir(tmp_path, {(0, 0): _cohort(0.8, 0.6, False), (0, 1): _cohort(0.4, 0.2, True),
                               (1, 0): _cohort(0.9, 0.7, False), (1, 1): _cohort(0.5, 0.3, False)})
    m = cross.matrix(cross.load_table(work, DOMAIN))
    assert m["models"] == [0, 1] and m["cohorts"] == [0, 1]
    assert m["dice"] == [[pytest.approx(0.7), pytest.approx(0.3)], [pytest.approx(0.8), pytest.approx(0.4)]]
    assert m["model_means"] == [pytest.approx(0.5), pytest.approx(0.6)]       # controls (Dice 0 or 1) left out
    assert m["cohort_means"] == [pytest.approx(0.75), pytest.approx(0.35)]
    text = cross.markdown_matrix(m, "arm")
    assert "| 0 | 0.700 | 0.300 | 0.500 |" in text and "| cohort mean | 0.750 | 0.350 | |" in text


def test_paired_difference_averages_each_case_over_the_models(tmp_path, capsys):
    a = _workdir(tmp_path / "a", {(0, 0): _cohort(0.8, 0.0, True), (0, 1): _cohort(0.4, 0.2, False),
                                  (1, 0): _cohort(0.6, 0.2, False), (1, 1): _cohort(0.4, 0.4, False)})
    b = _workdir(tmp_path / "b", {(0, 0): _cohort(0.9, 0.3, False), (0, 1): _cohort(0.4, 0.1, False),
                                  (1, 0): _cohort(0.9, 0.1, True), (1, 1): _cohort(0.6, 0.3, True)})
    assert cross.main([str(a), str(b), "--labels", "base", "lever", "--out", str(tmp_path / "r.json")]) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    p = report["variants"]["as reported"]["paired"]
    # per case, mean over the two models of B minus that of A:
    # 0:CS1 0.9-0.7, 0:CS2 0.2-0.1, 1:CS1 0.5-0.4, 1:CS2 0.2-0.3
    diffs = [0.2, 0.1, 0.1, -0.1]
    assert (p["n_clot_cases"], p["n_clot_free_cases"]) == (4, 2)
    assert p["dice_difference"]["mean"] == pytest.approx(sum(diffs) / 4)
    assert (p["dice_difference"]["better"], p["dice_difference"]["worse"]) == (3, 1)
    lo, hi = p["dice_difference"]["ci"]
    assert lo <= p["dice_difference"]["mean"] <= hi
    # A missed 0:CS2 with model 0 (found by half the models): 3.5 of 4; B found every clot
    assert p["a"]["clots_found"] == pytest.approx(3.5) and p["b"]["clots_found"] == pytest.approx(4.0)
    # controls with an alarm, averaged over the models: A 0:CS3 by one of two; B 0:CS3 by one, 1:CS3 by one
    assert p["a"]["controls_with_alarm"] == pytest.approx(0.5) and p["b"]["controls_with_alarm"] == pytest.approx(1.0)
    out = capsys.readouterr().out
    assert "#### lever - base, each test case averaged over 2 models" in out
    assert "| clots found (mean over models) | 3.5/4 | 4.0/4 |" in out
    assert "averaged over 3 models of base, 2 of lever" in cross.markdown_paired(p, ("base", "lever"), (3, 2))


def test_where_keeps_the_cases_of_a_subgroup(tmp_path):
    rows = {(i, j): _cohort(0.5 + 0.1 * i, 0.2, False) for i in (0, 1) for j in (0, 1)}
    work = _workdir(tmp_path, rows)
    for j in (0, 1):   # only CS2 of each cohort is "not hyperdense"
        volumes = work / f"repeat{j}" / f"test_{DOMAIN}" / "volumes"
        for case, dense in (("CS1", True), ("CS2", False), ("CS3", True)):
            (volumes / f"{case}.json").write_text(json.dumps({"hyperdense": dense}))
    table = cross.load_table(work, DOMAIN, where_kv=("hyperdense", False))
    assert all(list(rows) == ["CS2"] for rows in table.values())
    assert cross.matrix(table)["dice"] == [[pytest.approx(0.2)] * 2] * 2


def test_ncct_contrast_keeps_the_clot_cases_measured_in_that_range(tmp_path, capsys):
    from tests.test_bench_subgroups import _volumes

    rows = {(i, j): _cohort(0.5 + 0.1 * i, 0.2, False) for i in (0, 1) for j in (0, 1)}
    work = _workdir(tmp_path, rows)
    for j in (0, 1):   # CS1's clot is 5 HU above the tissue around it on the NCCT, CS2's 30 HU
        cohort = work / f"repeat{j}" / f"test_{DOMAIN}"
        (cohort / "masks").mkdir()
        _volumes(cohort / "volumes", cohort / "masks", "CS1", ncct_clot=35, cta_clot=52)
        _volumes(cohort / "volumes", cohort / "masks", "CS2", ncct_clot=60, cta_clot=70)
    low = cross.load_table(work, DOMAIN, contrast=(-float("inf"), 10.0))
    assert all(list(rows) == ["CS1"] for rows in low.values())          # the control has no contrast
    assert cross.matrix(low)["dice"] == [[pytest.approx(0.5)] * 2, [pytest.approx(0.6)] * 2]
    high = cross.load_table(work, DOMAIN, contrast=(20.0, float("inf")))
    assert all(list(rows) == ["CS2"] for rows in high.values())
    assert cross.main([str(work), "--ncct-contrast", "20:"]) == 0
    assert "### as reported (first-build, NCCT contrast 20: HU)" in capsys.readouterr().out


@pytest.mark.parametrize("value", ["10", "a:b", "20:10", "10:10"])
def test_a_bad_ncct_contrast_option_exits_2_in_one_line(tmp_path, capsys, value):
    work = _workdir(tmp_path, {(i, j): _cohort(0.5, 0.5, False) for i in (0, 1) for j in (0, 1)})
    with pytest.raises(SystemExit) as exit_info:
        cross.main([str(work), "--ncct-contrast", value])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "--ncct-contrast expects LOW:HIGH" in err and len(err.splitlines()) == 1


def test_cohorts_that_differ_between_the_workdirs_exit_2_in_one_line(tmp_path, capsys):
    a = _workdir(tmp_path / "a", {(i, j): _cohort(0.5, 0.5, False) for i in (0, 1) for j in (0, 1)})
    b = _workdir(tmp_path / "b", {(i, j): _cohort(0.5, 0.5, False, clot2_voxels=41 if j == 1 else 40)
                                  for i in (0, 1) for j in (0, 1)})
    with pytest.raises(SystemExit) as exit_info:
        cross.main([str(a), str(b)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cohort 1 differs between the two workdirs (CS2 has 40 vs 41" in err


@pytest.mark.parametrize("make, message", [
    (lambda root: root / "missing", "no such folder"),
    (lambda root: _workdir(root, {(0, 0): _cohort(0.5, 0.5, False)}), "1 repeat(s) with a finished run"),
    (lambda root: _workdir(root, {(i, j): _cohort(0.5, 0.5, False) for i in (0, 1) for j in (0, 1)}, skip={(0, 1)}),
     "config.json"),    # a pair to score, and the run has no settings to score it with
])
def test_a_workdir_that_cannot_be_cross_scored_exits_2_in_one_line(tmp_path, capsys, make, message):
    with pytest.raises(SystemExit) as exit_info:
        cross.main([str(make(tmp_path / "w"))])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


def test_score_missing_scores_each_unscored_pair_once_with_the_runs_settings(tmp_path, monkeypatch):
    from clotseg.settings import Settings

    rows = _cohort(0.5, 0.5, False)
    work = _workdir(tmp_path, {(i, j): rows for i in range(3) for j in range(3)}, skip={(0, 1), (2, 0)})
    for i in range(3):   # bench/quality.py --untuned's own plain scorings, except model 1's
        if i != 1:
            _write_metrics(cross.scoring_folder(work, i, i, DOMAIN, plain=True), rows)
    monkeypatch.setattr("clotseg.layout.load_run_settings",
                        lambda run, root: Settings(threshold=0.3, tta_flips=True, min_component_voxels=6))
    calls = []

    def score(settings, run, cohort, output):
        calls.append((run.parent.parent.name, cohort.parent.name, output.name,
                      settings.threshold, settings.tta_flips, settings.min_component_voxels))
        _write_metrics(output, rows)

    written = cross.score_missing(work, DOMAIN, plain=True, score=score)
    tuned = [c for c in calls if not c[2].endswith("_untuned")]
    plain = [c for c in calls if c[2].endswith("_untuned")]
    assert sorted(c[:2] for c in tuned) == [("repeat0", "repeat1"), ("repeat2", "repeat0")]
    assert all(c[3:] == (0.3, True, 6) for c in tuned)                    # the run's own post-processing
    assert sorted(c[:2] for c in plain) == sorted(
        [(f"repeat{i}", f"repeat{j}") for i in range(3) for j in range(3) if i != j] + [("repeat1", "repeat1")])
    assert all(c[3:] == (0.5, False, 0) for c in plain)                    # 0.5, no TTA, no filter
    assert cross.scoring_folder(work, 1, 1, DOMAIN, plain=True) in written
    assert len(written) == len(calls) == 2 + 7
    assert cross.score_missing(work, DOMAIN, plain=True, score=score) == []   # a second call scores nothing


def test_cohorts_option_scores_and_compares_on_those_cohorts_only(tmp_path, monkeypatch, capsys):
    # repeat 2 is a fresh test seed added after the choice: every model is scored on it, nothing else
    a = _workdir(tmp_path / "a", {(i, j): _cohort(0.5, 0.1 * (j + 1), False) for i in range(3) for j in range(3)},
                 skip={(0, 1), (0, 2), (1, 2)})
    b = _workdir(tmp_path / "b", {(i, j): _cohort(0.5, 0.1 * (j + 1) + (0.2 if j == 2 else 0.0), False)
                                  for i in range(3) for j in range(3)}, skip={(1, 0)})
    monkeypatch.setattr("clotseg.layout.load_run_settings", lambda run, root: None)
    scored = []

    def score(settings, run, cohort, output):
        scored.append((run.parent.parent.parent.name, run.parent.parent.name, cohort.parent.name))
        j = int(cohort.parent.name[len("repeat"):])
        bonus = 0.2 if "b" == run.parent.parent.parent.name and j == 2 else 0.0
        _write_metrics(output, _cohort(0.5, 0.1 * (j + 1) + bonus, False))

    monkeypatch.setattr(cross, "score_cohort", score)
    assert cross.main([str(a), str(b), "--cohorts", "2", "--out", str(tmp_path / "r.json")]) == 0
    assert sorted(scored) == [("a", "repeat0", "repeat2"), ("a", "repeat1", "repeat2")]   # (0, 1) and (1, 0) left
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["cohorts"] == [2]
    variant = report["variants"]["as reported"]
    assert [m["cohorts"] for m in variant["matrices"]] == [[2], [2]]
    p = variant["paired"]
    assert (p["n_clot_cases"], p["n_clot_free_cases"]) == (2, 1)                # cohort 2's cases only
    assert p["dice_difference"]["mean"] == pytest.approx(0.1)                   # CS1 +0, CS2 +0.2
    assert "#### b - a, each test case averaged over 3 models" in capsys.readouterr().out


@pytest.mark.parametrize("value, message", [("5", "no finished repeat 5 for --cohorts"),
                                            ("x", "give repeat numbers")])
def test_a_bad_cohorts_option_exits_2_in_one_line(tmp_path, capsys, value, message):
    work = _workdir(tmp_path, {(i, j): _cohort(0.5, 0.5, False) for i in (0, 1) for j in (0, 1)})
    with pytest.raises(SystemExit) as exit_info:
        cross.main([str(work), "--cohorts", value])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


@pytest.mark.slow
def test_tiny_repeats_cross_scored_end_to_end(tmp_path):
    """Two tiny repeats of bench/quality.py, then every model on every cohort through testing.py's
    code path; a model on its own cohort scored here equals bench/quality.py's own scoring."""
    work = tmp_path / "work"
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
    cmd = [sys.executable, "-m", "bench.quality", "--scale", "tiny", "--test-domains", DOMAIN, "--train-domain",
           DOMAIN, "--repeats", "2", "--workdir", str(work)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "cross.json"
    proc = subprocess.run([sys.executable, "-m", "bench.cross_cohorts", str(work), "--untuned", "--out", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    for i, j in ((0, 1), (1, 0)):
        for plain in (False, True):
            assert (cross.scoring_folder(work, i, j, DOMAIN, plain) / "metrics.csv").is_file()
    m = report["variants"]["as reported"]["matrices"][0]
    assert m["models"] == m["cohorts"] == [0, 1]
    own = [json.loads((work / f"repeat{i}" / f"Testing_{DOMAIN}" / "summary.json").read_text())
           ["metrics_clot_cases"]["dice"]["mean"] for i in (0, 1)]
    assert [m["dice"][0][0], m["dice"][1][1]] == [pytest.approx(own[0]), pytest.approx(own[1])]
    assert "plain" in report["variants"] and "| cohort mean |" in proc.stdout

    # model 0 on its own cohort again, through the cross-scoring path: bench/quality.py's figures
    from bench.compare import read_metrics
    from clotseg.layout import load_run_settings

    project = work / "repeat0"
    run = sorted((project / "Trainings").glob("*/run.json"))[-1].parent
    again = tmp_path / "again"
    cross.score_cohort(load_run_settings(run, project), run, project / f"test_{DOMAIN}", again)
    before, after = read_metrics(project / f"Testing_{DOMAIN}"), read_metrics(again)
    assert set(before) == set(after)
    assert all(after[c]["dice"] == pytest.approx(before[c]["dice"]) for c in before)
