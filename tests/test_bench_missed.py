"""bench/missed.py: how close a model came to the clots it missed."""

import csv

import numpy as np
import pytest

from bench import missed


def test_missed_cases_are_the_clot_cases_with_dice_zero():
    rows = {"CS1": {"dice": "0.8", "true_voxels": "200"},
            "CS2": {"dice": "0.0", "true_voxels": "40"},      # missed
            "CS10": {"dice": "0", "true_voxels": "12"},        # missed
            "CS3": {"dice": "0.0", "true_voxels": "0"},        # a control with an alarm: not a clot case
            "CS4": {"dice": "1.0", "true_voxels": "0"}}
    assert missed.missed_cases(rows) == ["CS10", "CS2"]


def test_probability_inside_reads_only_the_clot_voxels():
    prob = np.zeros((4, 4, 3), np.float32)
    truth = np.zeros((4, 4, 3), bool)
    truth[1:3, 1:3, 1] = True                 # 4 clot voxels
    prob[1, 1, 1], prob[1, 2, 1] = 0.2, 0.35
    prob[0, 0, 0] = 0.99                      # outside the clot: ignored
    got = missed.probability_inside(prob, truth)
    assert got == {"max_probability": pytest.approx(0.35), "share_above_0.1": 0.5, "share_above_0.3": 0.25,
                   "clot_voxels": 4}


def test_a_folder_without_metrics_is_one_line_and_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        missed.main([str(tmp_path / "run"), str(tmp_path), str(tmp_path), str(tmp_path)])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "no metrics.csv" in err and err.count("\n") == 1


def test_a_run_folder_without_its_settings_is_one_line_and_exit_2(tmp_path, capsys):
    testing = tmp_path / "Testing"
    testing.mkdir()
    with open(testing / "metrics.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([["case_id", "dice", "true_voxels"], ["CS1", "0.0", "10"]])
    with pytest.raises(SystemExit) as info:
        missed.main([str(tmp_path / "run"), str(testing), str(tmp_path), str(tmp_path)])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("bench.missed: ") and "config.json" in err and err.count("\n") == 1
