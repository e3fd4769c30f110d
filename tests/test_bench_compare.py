"""bench/compare.py: paired comparison of two testing folders."""

import csv
import json

import pytest

from bench import compare

FIELDS = ["case_id", "dice", "true_voxels", "pred_voxels", "n_detected", "n_false_positive_components"]


def _write(folder, rows):
    folder.mkdir(parents=True)
    with open(folder / "metrics.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=FIELDS)
        w.writeheader()
        for r in rows:
            w.writerow(dict(zip(FIELDS, r)))


def test_paired_difference_counts_and_false_alarms(tmp_path, capsys):
    # 3 clot cases (CS1-3), 2 controls (CS4-5); B improves CS1 by 0.4 and CS2 by 0.2, loses CS3 by 0.3,
    # finds CS2 (A missed it), and clears one control's false alarm
    _write(tmp_path / "a", [("CS1", 0.2, 100, 80, 1, 2), ("CS2", 0.0, 50, 0, 0, 0), ("CS3", 0.6, 70, 60, 1, 0),
                            ("CS4", 0.0, 0, 30, 0, 1), ("CS5", 1.0, 0, 0, 0, 0)])
    _write(tmp_path / "b", [("CS1", 0.6, 100, 90, 1, 0), ("CS2", 0.2, 50, 40, 1, 1), ("CS3", 0.3, 70, 20, 1, 0),
                            ("CS4", 1.0, 0, 0, 0, 0), ("CS5", 1.0, 0, 0, 0, 0), ("CS6", 1.0, 0, 0, 0, 0)])
    assert compare.main([str(tmp_path / "a"), str(tmp_path / "b"), "--labels", "base", "lever",
                         "--out", str(tmp_path / "c.json")]) == 0
    result = json.loads((tmp_path / "c.json").read_text())
    assert (result["n_common"], result["n_clot_cases"], result["n_clot_free_cases"]) == (5, 3, 2)
    assert result["only_in_b"] == ["CS6"] and result["only_in_a"] == []
    d = result["dice_difference"]
    assert d["mean"] == pytest.approx((0.4 + 0.2 - 0.3) / 3)
    assert (d["better"], d["worse"]) == (2, 1)
    assert d["ci"][0] <= d["mean"] <= d["ci"][1]
    assert result["a"]["clots_found"] == 2 and result["b"]["clots_found"] == 3
    assert result["a"]["false_alarms"] == 1 and result["b"]["false_alarms"] == 0
    assert result["a"]["fp_components_per_case"] == pytest.approx(3 / 5)
    assert result["b"]["clot_dice_mean"] == pytest.approx((0.6 + 0.2 + 0.3) / 3)
    out = capsys.readouterr().out
    assert "Paired Dice difference (lever - base): +0.100" in out
    assert "only in b, not compared: CS6" in out


def test_missing_metrics_names_the_file_in_one_line_with_exit_2(tmp_path, capsys):
    (tmp_path / "a").mkdir()
    with pytest.raises(SystemExit) as exit_info:
        compare.main([str(tmp_path / "a"), str(tmp_path / "a")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "a" / "metrics.csv") in err and err.count("\n") == 1


def test_folders_without_a_common_case_exit_2(tmp_path, capsys):
    _write(tmp_path / "a", [("CS1", 0.5, 10, 10, 1, 0)])
    _write(tmp_path / "b", [("CS2", 0.5, 10, 10, 1, 0)])
    with pytest.raises(SystemExit) as exit_info:
        compare.main([str(tmp_path / "a"), str(tmp_path / "b")])
    assert exit_info.value.code == 2
    assert "share no case" in capsys.readouterr().err


def test_also_pools_a_second_pair_without_matching_its_cases_to_the_first(tmp_path):
    # seed 1: CS1 +0.4; seed 2 reuses the name CS1 for another case: -0.1, and CS2 +0.3
    _write(tmp_path / "a1", [("CS1", 0.2, 100, 80, 1, 0)])
    _write(tmp_path / "b1", [("CS1", 0.6, 100, 90, 1, 0)])
    _write(tmp_path / "a2", [("CS1", 0.5, 60, 50, 1, 0), ("CS2", 0.0, 40, 0, 0, 0)])
    _write(tmp_path / "b2", [("CS1", 0.4, 60, 50, 1, 0), ("CS2", 0.3, 40, 20, 1, 0)])
    assert compare.main([str(tmp_path / "a1"), str(tmp_path / "b1"), "--also", str(tmp_path / "a2"),
                         str(tmp_path / "b2"), "--out", str(tmp_path / "c.json")]) == 0
    result = json.loads((tmp_path / "c.json").read_text())
    assert result["n_clot_cases"] == 3                      # CS1, 2:CS1, 2:CS2: nothing merged
    d = result["dice_difference"]
    assert d["mean"] == pytest.approx((0.4 - 0.1 + 0.3) / 3) and (d["better"], d["worse"]) == (2, 1)
    assert result["a"]["clots_found"] == 2 and result["b"]["clots_found"] == 3


def test_also_with_a_missing_folder_is_one_line_and_exit_2(tmp_path, capsys):
    _write(tmp_path / "a", [("CS1", 0.2, 100, 80, 1, 0)])
    with pytest.raises(SystemExit) as exc:
        compare.main([str(tmp_path / "a"), str(tmp_path / "a"), "--also", str(tmp_path / "a"),
                      str(tmp_path / "nope")])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "nope" in err and "metrics.csv" in err and len(err.splitlines()) == 1


def test_where_compares_the_subgroup_of_each_pairs_own_cohort(tmp_path, capsys):
    # pair 1: CS1 not hyperdense (+0.4), CS2 hyperdense (-0.2), CS3 a control; pair 2: CS1 not hyperdense (-0.1)
    _write(tmp_path / "a1", [("CS1", 0.2, 100, 80, 1, 0), ("CS2", 0.8, 50, 40, 1, 0), ("CS3", 1.0, 0, 0, 0, 0)])
    _write(tmp_path / "b1", [("CS1", 0.6, 100, 90, 1, 0), ("CS2", 0.6, 50, 30, 1, 0), ("CS3", 0.0, 0, 9, 0, 1)])
    _write(tmp_path / "a2", [("CS1", 0.5, 60, 50, 1, 0), ("CS2", 0.1, 40, 9, 1, 0)])
    _write(tmp_path / "b2", [("CS1", 0.4, 60, 50, 1, 0), ("CS2", 0.9, 40, 30, 1, 0)])
    for folder, sides in (("v1", {"CS1": False, "CS2": True, "CS3": None}), ("v2", {"CS1": False, "CS2": True})):
        (tmp_path / folder).mkdir()
        for cid, hyper in sides.items():
            (tmp_path / folder / f"{cid}.json").write_text(json.dumps({"hyperdense": hyper}))
    argv = [str(tmp_path / "a1"), str(tmp_path / "b1"), "--also", str(tmp_path / "a2"), str(tmp_path / "b2"),
            "--where", "hyperdense=false", "--volumes", str(tmp_path / "v1"), "--volumes", str(tmp_path / "v2"),
            "--out", str(tmp_path / "c.json")]
    assert compare.main(argv) == 0
    result = json.loads((tmp_path / "c.json").read_text())
    assert (result["n_common"], result["n_clot_cases"], result["n_clot_free_cases"]) == (2, 2, 0)
    assert result["dice_difference"]["mean"] == pytest.approx((0.4 - 0.1) / 2)
    # the hyperdense ones alone: the other cases
    assert compare.main([*argv[:5], "--where", "hyperdense=true", *argv[7:]]) == 0
    result = json.loads((tmp_path / "c.json").read_text())
    assert result["dice_difference"]["mean"] == pytest.approx((-0.2 + 0.8) / 2)
    # one volumes folder for two pairs, a missing folder, a bad KEY=VALUE: one line each, exit 2
    (tmp_path / "v3").mkdir()
    (tmp_path / "v3" / "CS1.json").write_text("[1, 2]")           # a sidecar that is not a JSON object
    for bad in (argv[:9], [*argv[:9], "--volumes", str(tmp_path / "none")],
                [*argv[:5], "--where", "hyperdense", *argv[7:]],
                [*argv[:9], "--volumes", str(tmp_path / "v3")]):
        capsys.readouterr()
        with pytest.raises(SystemExit) as exc:
            compare.main(bad)
        assert exc.value.code == 2
        assert len(capsys.readouterr().err.strip().splitlines()) == 1
