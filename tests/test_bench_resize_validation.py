"""bench/resize_validation.py: copies of finished quality runs with a smaller or larger Validation
cohort (same model, same test cohorts) for the tuner to choose on again."""

import json
import random
from pathlib import Path

import numpy as np
import pytest

from bench import resize_validation as rv

RUN = "20260101-000000"


def _repeat(root, cases, split=None, repeat=0):
    """A bench/quality.py repeat: cases = {id: clot voxels}; split = {cohort: [ids]} (default: the
    first half Training, the rest Validation)."""
    project = root / f"repeat{repeat}"
    vols, masks = project / rv.VOLUMES, project / rv.MASKS
    vols.mkdir(parents=True)
    masks.mkdir(parents=True)
    for case, voxels in cases.items():
        number = int(case[2:])
        np.save(vols / f"{case}_CTA_Binary.npy", np.full((4, 4, 2), number, np.int16))
        (vols / f"{case}.json").write_text(json.dumps({"spacing_mm": [1, 1, 1]}))
        mask = np.zeros((4, 4, 2), np.uint8)
        mask.flat[:voxels] = 1
        np.save(masks / f"{case}_seg_corrected_binary.npy", mask)
    (project / "test_first-build" / "volumes").mkdir(parents=True)
    (project / "test_first-build" / "volumes" / "CS1_CTA_Binary.npy").write_bytes(b"test")
    if split is not None:
        run = project / "Trainings" / RUN
        (run / "Relevant_Files").mkdir(parents=True)
        (run / "run.json").write_text("{}")
        (run / "Best_Model").mkdir()
        (run / "Best_Model" / "model.keras").write_bytes(b"model")
        (run / "Relevant_Files" / "split.json").write_text(json.dumps({"cohorts": split, "complete": True}))
    return project


def _cohort(n, controls_every=5):
    """CS1..CSn; every `controls_every`-th case is a control, the others hold 3 + n % 4 voxels."""
    return {f"CS{i}": (0 if i % controls_every == 0 else 3 + i % 4) for i in range(1, n + 1)}


def _split(training, validation):
    return {"Training": [f"CS{i}" for i in training], "Validation": [f"CS{i}" for i in validation],
            "Testing": []}


def _validation(project):
    return json.loads((project / "Trainings" / RUN / "Relevant_Files" / "split.json").read_text())[
        "cohorts"]["Validation"]


def test_fewer_validation_cases_keep_the_clot_share_and_leave_the_source_alone(tmp_path):
    cases = _cohort(20)                                              # controls CS5, CS10, CS15, CS20
    src = _repeat(tmp_path / "src", cases, _split(range(1, 11), range(11, 21)))
    before = (src / "Trainings" / RUN / "Relevant_Files" / "split.json").read_text()
    assert rv.main([str(tmp_path / "src"), str(tmp_path / "dst"), "--cases", "5", "--seed", "3"]) == 0
    dst = tmp_path / "dst" / "repeat0"
    kept = _validation(dst)
    assert len(kept) == 5 and set(kept) <= {f"CS{i}" for i in range(11, 21)}
    assert sum(cases[c] > 0 for c in kept) == 4                      # 8 of 10 with clot -> 4 of 5
    record = json.loads((dst / rv.RECORD).read_text())
    assert record["validation"] == kept and record["added"] == [] and len(record["dropped"]) == 5
    assert record["with_clot"] == 4 and record["seed"] == 3
    # the same draw again (seed + repeat), another seed another draw
    assert rv.choose(_validation(src), 5, lambda c: cases[c] > 0, [], random.Random(3)) == kept
    assert any(rv.choose(_validation(src), 5, lambda c: cases[c] > 0, [], random.Random(s)) != kept
               for s in range(4, 10))
    # the model, the volumes and the test cohort came along; the source's split is untouched
    assert (dst / "Trainings" / RUN / "Best_Model" / "model.keras").read_bytes() == b"model"
    assert (dst / rv.VOLUMES / "CS3_CTA_Binary.npy").samefile(src / rv.VOLUMES / "CS3_CTA_Binary.npy") or \
        (dst / rv.VOLUMES / "CS3_CTA_Binary.npy").read_bytes() == (src / rv.VOLUMES / "CS3_CTA_Binary.npy").read_bytes()
    assert (dst / "test_first-build" / "volumes" / "CS1_CTA_Binary.npy").read_bytes() == b"test"
    assert (src / "Trainings" / RUN / "Relevant_Files" / "split.json").read_text() == before
    assert not list(tmp_path.glob("dst/*.partial*"))


def test_more_validation_cases_come_from_the_larger_cohort_and_never_from_training(tmp_path):
    small, big = _cohort(20), _cohort(60)
    _repeat(tmp_path / "src", small, _split(range(1, 11), range(11, 21)))
    _repeat(tmp_path / "big", big)                                  # CS1..CS20 the same cases
    assert rv.main([str(tmp_path / "src"), str(tmp_path / "dst"), "--cases", "30",
                    "--from", str(tmp_path / "big")]) == 0
    dst = tmp_path / "dst" / "repeat0"
    chosen = _validation(dst)
    assert len(chosen) == 30 and chosen[:10] == [f"CS{i}" for i in range(11, 21)]
    added = chosen[10:]
    assert all(int(c[2:]) > 20 for c in added)                     # none of the source's split
    assert sum(big[c] > 0 for c in chosen) == 24                    # the 80% clot share kept
    for case in added:                                               # their files came along
        assert (dst / rv.VOLUMES / f"{case}_CTA_Binary.npy").is_file()
        assert (dst / rv.VOLUMES / f"{case}.json").is_file()
        assert (dst / rv.MASKS / f"{case}_seg_corrected_binary.npy").is_file()
    present = {p.name.split("_")[0] for p in (dst / rv.VOLUMES).glob("*.npy")}
    assert present == set(small) | set(added)                        # nothing else of the larger cohort
    assert json.loads((dst / rv.RECORD).read_text())["added"] == added


def test_a_second_call_keeps_what_it_made_and_never_overwrites_anything_else(tmp_path, capsys):
    _repeat(tmp_path / "src", _cohort(20), _split(range(1, 11), range(11, 21)))
    args = [str(tmp_path / "src"), str(tmp_path / "dst"), "--cases", "5"]
    assert rv.main(args) == 0
    record = (tmp_path / "dst" / "repeat0" / rv.RECORD).read_text()
    assert rv.main(args) == 0                                        # restart: kept as it is
    assert (tmp_path / "dst" / "repeat0" / rv.RECORD).read_text() == record
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:                     # other arguments: left alone
        rv.main(args[:3] + ["6"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "not overwritten" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert (tmp_path / "dst" / "repeat0" / rv.RECORD).read_text() == record


def _no_runs(tmp_path):
    _repeat(tmp_path / "src", _cohort(10))
    return [str(tmp_path / "src"), str(tmp_path / "dst"), "--cases", "3"]


def _grow_without_from(tmp_path):
    _repeat(tmp_path / "src", _cohort(20), _split(range(1, 11), range(11, 21)))
    return [str(tmp_path / "src"), str(tmp_path / "dst"), "--cases", "30"]


def _pool_too_small(tmp_path):
    _repeat(tmp_path / "src", _cohort(20), _split(range(1, 11), range(11, 21)))
    _repeat(tmp_path / "big", _cohort(25))
    return [str(tmp_path / "src"), str(tmp_path / "dst"), "--cases", "30", "--from", str(tmp_path / "big")]


def _another_generator(tmp_path):
    _repeat(tmp_path / "src", _cohort(20), _split(range(1, 11), range(11, 21)))
    _repeat(tmp_path / "big", {c: (v + 1 if v else 0) for c, v in _cohort(60).items()})
    return [str(tmp_path / "src"), str(tmp_path / "dst"), "--cases", "30", "--from", str(tmp_path / "big")]


def _another_generator_first_case_a_control(tmp_path):
    # CS1 is a control in both cohorts (0 voxels either way): the first clot case (CS2) tells them apart
    small = {**_cohort(20), "CS1": 0}
    _repeat(tmp_path / "src", small, _split(range(1, 11), range(11, 21)))
    _repeat(tmp_path / "big", {c: (v + 1 if v else 0) for c, v in {**_cohort(60), "CS1": 0}.items()})
    return [str(tmp_path / "src"), str(tmp_path / "dst"), "--cases", "30", "--from", str(tmp_path / "big")]


def _same_folder(tmp_path):
    _repeat(tmp_path / "src", _cohort(20), _split(range(1, 11), range(11, 21)))
    return [str(tmp_path / "src"), str(tmp_path / "src"), "--cases", "5"]


@pytest.mark.parametrize("make, message", [(_no_runs, "no repeat<i> with a finished run"),
                                           (_grow_without_from, "needs --from"),
                                           (_pool_too_small, "too few"),
                                           (_another_generator, "differs"),
                                           (_another_generator_first_case_a_control, "case CS2 differs"),
                                           (_same_folder, "the same folder")])
def test_bad_input_exits_2_in_one_line_and_writes_nothing(tmp_path, capsys, make, message):
    args = make(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        rv.main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "dst").exists() or not list((tmp_path / "dst").iterdir())


def test_a_call_running_beside_another_never_removes_its_work(tmp_path, monkeypatch):
    _repeat(tmp_path / "src", _cohort(20), _split(range(1, 11), range(11, 21)))
    other = tmp_path / "dst" / "repeat0.partial-1"                 # another call's folder, mid-way
    other.mkdir(parents=True)
    (other / "in_progress").write_text("x")
    args = [str(tmp_path / "src"), str(tmp_path / "dst"), "--cases", "5"]
    real = rv.os.replace
    first = []

    def finished_first(src, dst):                                   # the other call renames first
        if not first and Path(dst) == tmp_path / "dst" / "repeat0":
            first.append(1)
            twin = tmp_path / "twin"
            assert rv.main([args[0], str(twin), "--cases", "5"]) == 0
            real(twin / "repeat0", dst)
        return real(src, dst)

    monkeypatch.setattr(rv.os, "replace", finished_first)
    assert rv.main(args) == 0
    assert (other / "in_progress").read_text() == "x"               # untouched
    made = json.loads((tmp_path / "dst" / "repeat0" / rv.RECORD).read_text())
    assert made["cases"] == 5 and len(_validation(tmp_path / "dst" / "repeat0")) == 5
    assert sorted(p.name for p in (tmp_path / "dst").iterdir()) == ["repeat0", "repeat0.partial-1"]
